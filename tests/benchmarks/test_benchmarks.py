"""The benchmark harness on a tiny model: scenarios run in fresh processes, features are checked
against the full diffusers forward before timing, result lines carry every schema field, and the
report renders. No test asserts a duration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffperception.benchmarks import RESULT_FIELDS, Scenario
from diffperception.benchmarks.architectures import materialize
from diffperception.benchmarks.baselines import BlockCutEager, FullForward, make_inputs
from diffperception.benchmarks.goals import goal_lines
from diffperception.benchmarks.machine import describe_machine
from diffperception.benchmarks.report import load_results, write_report
from diffperception.benchmarks.run_one import parity, reference_path, step_reference
from diffperception.benchmarks.runner import run_scenarios
from diffperception.benchmarks.suites import bf16

TAPS = ("up_ft.1", "mid_block", "down_blocks.1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def tiny_folder(cache_dir) -> Path:
    return materialize("tiny", cache_dir / "models")


@pytest.fixture(scope="module")
def machine() -> dict:
    return describe_machine(2, measure=False)


@pytest.fixture(scope="module")
def results(cache_dir, tiny_folder, machine, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "tiny.jsonl"
    base = Scenario("tiny", 64, batch=2, warmup=0, iters=2)
    scenarios = [replace(base, backend="full_forward"), replace(base, backend="specialized", view="e2e"),
                 bf16(replace(base, backend="torchscript"))]
    return out, run_scenarios(scenarios, out, cache_dir=cache_dir, machine=machine, log=lambda m: None,
                              quiet_sample_s=0.5)


def test_scenario_round_trips_and_rejects_bad_fields():
    s = Scenario("tiny", 64, batch=3, taps=["up_ft.1", "mid_block"], options={"mem_arena": False})
    assert Scenario.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.key != replace(s, backend="onnxruntime").key
    assert s.reference_key() == replace(s, backend="onnxruntime").reference_key()
    with pytest.raises(ValueError, match="backend"):
        Scenario("tiny", 64, backend="tensorflow")
    with pytest.raises(ValueError, match="multiple of 8"):
        Scenario("tiny", 60)
    with pytest.raises(ValueError, match="Unknown scenario keys"):
        Scenario.from_dict({**s.to_dict(), "colour": "red"})


@pytest.mark.parametrize("view", ["trunk", "e2e"])
def test_baselines_and_specialised_trunk_compute_the_same_features(tiny_folder, view):
    from diffperception.benchmarks.backends import _specialized

    s = Scenario("tiny", 64, batch=2, taps=TAPS, view=view, seed=4)
    x = make_inputs(s, tiny_folder)
    with torch.no_grad():
        full = FullForward(tiny_folder, s)(x)
        cut = BlockCutEager(tiny_folder, s)(x)
        ours = _specialized(tiny_folder, s)(x)
    for name in TAPS:
        assert full[name].shape == ours[name].shape
        assert (full[name] - cut[name]).abs().max() <= 1e-5
        assert (full[name] - ours[name]).abs().max() <= 1e-5
    # A different seed gives different noise, hence different features: the check can fail.
    other = FullForward(tiny_folder, replace(s, seed=5))
    with torch.no_grad():
        assert not parity(other(x), full, "float32")["parity_ok"]


def test_each_scenario_writes_a_complete_checked_line(results):
    out, rows = results
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert list(line) == list(RESULT_FIELDS)
        assert line["status"] == "ok", line["error"]
        assert line["parity_ok"] and line["parity_cosine"] >= 0.999
        assert line["foreign_cores"] is not None and line["foreign_cores"] >= 0
        assert line["loaded"] == (max(line["foreign_cores"], line["foreign_cores_before"]) > 0.15)
        assert set(line["machine"]["isa"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    low = lines.pop()  # bf16 weights, channels-last, exported: checked against the fp32 full forward
    assert low["scenario"]["precision"] == "bfloat16" and 1e-4 < low["parity_max_rel"] <= 5e-2
    for line in lines:
        assert line["parity_max_rel"] <= 1e-5
        assert len(line["times_s"]) == 2 and line["p50_s"] > 0 and line["throughput_img_s"] > 0
        assert line["max_rss_mb"] > 0 and line["load_s"] > 0 and line["flops"] > 0
        assert line["achieved_gflops"] > 0 and line["frac_theoretical_peak"] > 0
        assert line["machine"]["theoretical_gflops"] > 0
    full, e2e = lines
    assert full["parity_max_abs"] == 0.0  # the reference is the full forward itself
    assert e2e["vae_flops"] and e2e["vae_flops"] < e2e["flops"]
    assert e2e["flops"] - e2e["vae_flops"] < full["flops"]  # the trunk stops after up_blocks.1


def test_a_backend_whose_features_differ_is_not_timed(cache_dir, tiny_folder, machine, tmp_path):
    from safetensors.torch import load_file, save_file

    s = Scenario("tiny", 64, batch=1, backend="specialized", warmup=0, iters=1, seed=9)
    step_reference(s, cache_dir)
    path = reference_path(s, cache_dir)
    save_file({k: v * 1.01 for k, v in load_file(str(path)).items()}, str(path))  # a wrong reference
    [row] = run_scenarios([s], tmp_path / "bad.jsonl", cache_dir=cache_dir, machine=machine,
                          log=lambda m: None)
    assert row["status"] == "parity_failed" and not row["parity_ok"]
    assert row["times_s"] is None and row["p50_s"] is None


def test_onnx_attention_fusion_keeps_features(tiny_folder, tmp_path):
    import onnx
    import onnxruntime as ort

    from diffperception.benchmarks.backends import library_model
    from diffperception.benchmarks.exporters import export_artifact, fuse_onnx_attention

    s = Scenario("tiny", 64, batch=2)
    exported = export_artifact("onnx", library_model(tiny_folder, s), tmp_path / "m.onnx",
                               size=(64, 64), batch=2, latent_input=True)
    fused = fuse_onnx_attention(Path(exported["path"]), tmp_path / "fused" / "m.onnx")
    ops = [n.op_type for n in onnx.load(fused["path"], load_external_data=False).graph.node]
    assert fused["fused_ops"]["MultiHeadAttention"] == fused["fused_ops"]["Softmax"] > 0
    assert "Softmax" not in ops and ops.count("MultiHeadAttention") > 0
    x = make_inputs(s, tiny_folder).numpy()
    run = [ort.InferenceSession(p, providers=["CPUExecutionProvider"])
           for p in (exported["path"], fused["path"])]
    plain, fast = (r.run(None, {r.get_inputs()[0].name: x}) for r in run)
    for a, b in zip(plain, fast):
        assert abs(a - b).max() <= 1e-5


def test_report_renders_table_goals_and_png(results, tmp_path):
    out, rows = results
    quiet = tmp_path / "quiet.jsonl"  # as if measured on an idle machine (this one is shared)
    quiet.write_text("".join(json.dumps({**json.loads(line), "loaded": False}) + "\n"
                             for line in out.read_text().splitlines()))
    out = quiet
    report = write_report([out], tmp_path)
    text = report.read_text()
    assert "| backend | p50 s |" in text and "full_forward" in text and "specialized" in text
    assert "AMD" in text or "Machine:" in text
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(f"]({p.name})" in text for p in pngs)
    assert load_results([out, out])[0]["key"] == load_results([out])[0]["key"]


def test_goals_are_computed_from_the_goal_scenarios(results):
    _, rows = results
    rows = [json.loads(json.dumps(r)) for r in rows[:2]]
    for row, p50 in zip(rows, (10.0, 3.0)):
        row["scenario"].update(arch="sd15", resolution=512, batch=1, view="trunk")
        row["p50_s"], row["achieved_gflops"], row["frac_matmul_peak"] = p50, 1.0, 0.95
        row["frac_theoretical_peak"] = 0.5
        row["machine"]["matmul_gflops"] = 100.0
    rows[1]["parity_cosine"] = 0.9995
    text = "\n".join(goal_lines(rows))
    assert "10.00 s = 3.33x, feature cosine 0.99950 vs fp32 (goal 3.0x): **met**" in text
    assert "95% of the measured fp32 matmul peak" in text
    assert "Trunk, batch 4, vs full forward: not measured." in text
    assert "peak memory of every backend <= full forward" in text
    rows[1]["parity_cosine"] = 0.99  # features too far from fp32: not a candidate for the goal
    assert "vs full forward: not measured." in "\n".join(goal_lines(rows)).split("\n")[0]


def test_cli_lists_suites_and_rejects_unknown_ones(capsys):
    from diffperception.cli import main

    assert main(["bench", "--list"]) == 0
    assert "sd15-512-b1-up_ft.1-t261-trunk-onnxruntime_fused-float32-cpu" in capsys.readouterr().out
    assert main(["bench", "--suite", "nope"]) == 2
    assert "Unknown suite" in capsys.readouterr().err


def test_isa_flags_are_read_from_a_cpuinfo_flags_line():
    from diffperception.benchmarks.machine import isa_flags

    flags = isa_flags("fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16")
    assert flags["avx512_bf16"] and flags["amx_bf16"] and flags["avx2"] and not flags["amx_int8"]
    assert not any(isa_flags("fpu sse sse2").values())


def test_foreign_load_counts_other_processes_only(monkeypatch):
    import itertools

    from diffperception.benchmarks import runner

    # machine busy 10 s, of which 6 s are ours, over 4 s of wall time: 1 core of others
    busy, own, wall = iter([100.0, 110.0]), iter([50.0, 56.0]), iter([0.0, 4.0])
    monkeypatch.setattr(runner, "_cpu_busy_s", lambda: next(busy))
    monkeypatch.setattr(runner, "_own_cpu_s", lambda: next(own))
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(wall))
    with runner.ForeignLoad() as load:
        pass
    assert load.cores == pytest.approx(1.0)
    assert runner.is_loaded([load.cores, 0.0]) is True
    assert runner.is_loaded([0.05, 0.1]) is False
    assert runner.is_loaded([None, None]) is None
    monkeypatch.setattr(runner, "_cpu_busy_s", lambda: None)  # no /proc/stat: unknown, not quiet
    monkeypatch.setattr(runner.time, "monotonic", lambda c=itertools.count(): float(next(c)))
    monkeypatch.setattr(runner, "_own_cpu_s", lambda: 0.0)
    with runner.ForeignLoad() as unknown:
        pass
    assert unknown.cores is None


def test_report_and_readme_quote_quiet_rows_only(results, tmp_path):
    from diffperception.benchmarks.report import README_END, README_START, is_loaded, update_readme

    _, rows = results
    rows = [json.loads(json.dumps(r)) for r in rows[:2]]
    for row in rows:
        row["scenario"].update(arch="sd15", resolution=512, batch=1, view="trunk")
    rows[0].update(loaded=False, p50_s=7.5)
    rows[1].update(loaded=True, p50_s=1.25)
    out = tmp_path / "rows.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = write_report([out], tmp_path / "report").read_text()
    assert "7.50" in text and "1.25" not in text
    assert "## Measured under load (timings not quoted)" in text and rows[1]["key"] in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, rows)
    body = readme.read_text()
    assert "old table" not in body and "before" in body and "after" in body
    assert "| full_forward | 7.50 |" in body and "1.25" not in body
    # a line from before the load mark: judged by its 1-minute load average
    assert is_loaded({"load_avg_start": 3.2}) and not is_loaded({"load_avg_start": 0.2})
    with pytest.raises(ValueError, match="markers"):
        update_readme(tmp_path / "report" / "REPORT.md", rows)
