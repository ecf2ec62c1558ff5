"""The speed benchmark runs on tiny settings, and its two procedures give the same score table
(batched trunk passes vs one full diffusers U-Net call per (image, text, timestep))."""

from __future__ import annotations


def test_matching_speed_runs_and_agrees(tmp_path):
    from benchmarks.matching_speed import main

    result = main(["--arch", "tiny", "--images", "2", "--texts", "2", "--timesteps", "199,799",
                   "--repeats", "1", "--threads", "1", "--models", str(tmp_path / "models"),
                   "--layers", "released_code", "--out", str(tmp_path / "speed.jsonl")])
    assert result["max_abs_diff"] < 1e-4
    assert result["unet_calls_released_code"] == 8
    assert (tmp_path / "speed.jsonl").read_text().count("\n") == 1
