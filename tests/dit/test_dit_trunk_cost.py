"""``benchmarks/dit_trunk_cost.py`` on tiny architectures: it runs, and its FLOP counts agree with a
direct count of the pruned and the full transformer."""

from __future__ import annotations

import json

import pytest

from diffperception.benchmarks import dit_trunk_cost


def test_tiny_run_writes_flops_and_times(tmp_path):
    out = tmp_path / "cost.jsonl"
    rows = dit_trunk_cost.main(["--arch", "tiny-pixart", "tiny-sd3", "--time", "--repeats", "1",
                                "--out", str(out)])
    assert [r["tap"] for r in rows] == ["transformer_blocks.1", "transformer_blocks.1"]  # 4 blocks: middle
    assert [json.loads(line)["arch"] for line in out.read_text().splitlines()] == ["tiny-pixart", "tiny-sd3"]
    for row in rows:
        assert 0.3 < row["flop_ratio"] < 0.7 and row["trunk_params"] < row["full_params"]
        assert row["full_seconds"] > 0 and row["trunk_seconds"] > 0


def test_flux_middle_counts_both_block_lists():
    assert dit_trunk_cost._cut_tap("flux-dev", "middle", None) == "single_transformer_blocks.8"  # 27 of 57
    assert dit_trunk_cost._cut_tap("sd3-medium", "middle", None) == "transformer_blocks.11"
    assert dit_trunk_cost._cut_tap("flux-dev", "3", None) == "transformer_blocks.3"


def test_trunk_flops_equal_a_direct_count(tmp_path):
    from accelerate import init_empty_weights

    from diffperception.backbones import get_family
    from diffperception.features.cost import count_flops

    folder = dit_trunk_cost.write_config_folder("tiny-sd3", tmp_path)
    row = dit_trunk_cost.count(folder, "transformer_blocks.1", 250)
    family = get_family("dit")
    config = family.read_config(folder)
    with init_empty_weights():
        full = family.build_network(config)
    context_shape, pooled = family.context_shape(folder, config)
    sample, t, context, added = family.meta_inputs(config, (8, 8), context_shape, pooled)
    assert row["full_gflop"] * 1e9 == pytest.approx(
        count_flops(family.forward_full, full, sample, t, context, added), rel=1e-12)
    plan = family.plan_cut(full, [("transformer_blocks.1", "out")])
    family.prune(full, plan)
    assert len(full.transformer_blocks) == 2 and full.proj_out is None

    def trunk():  # the embeddings and the two first blocks, as the trunk calls them
        emb = family.embed(full, sample, t, context, added)
        family.run(full, plan, sample, emb, family.prepare_context(full, context, added))

    assert row["trunk_gflop"] * 1e9 == pytest.approx(count_flops(trunk), rel=1e-12)
