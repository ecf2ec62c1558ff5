"""The feature cache: keyed by backbone config, resumable after a kill, each key stored once."""

from __future__ import annotations

import pytest
import torch

from diffperception.training.feature_cache import FeatureCache, content_key, share


def _compute(calls: list):
    def compute(images: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(images.shape[0])
        return {"tap:a": images.mean(dim=1), "tap.b": images.sum(dim=(1, 2, 3))}  # (B, H, W), (B,)
    return compute


def _images(n: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 4, 4, generator=generator) for _ in range(n)]
    return {content_key(x): x for x in images}


def test_fill_read_and_resume_after_a_kill(tmp_path):
    images = _images(10)
    keys = list(images)
    cache = FeatureCache(tmp_path / "c", {"taps": ["a"]})
    calls: list[int] = []
    assert cache.fill(cache.missing(keys[:7]), images.__getitem__, _compute(calls),
                      batch_size=2, shard_size=3, progress=False) == 7
    assert len(cache.shards()) == 3 and sum(calls) == 7
    cache.shards()[1].unlink()  # a kill loses at most a shard; a half-written one is a .tmp
    (cache.folder / ".shard-x.safetensors.1.tmp").write_bytes(b"partial")
    todo = cache.missing(keys + keys[:2])  # repeats are computed once
    assert len(todo) == 3 + 3 and len(set(todo)) == len(todo)
    calls.clear()
    cache.fill(todo, images.__getitem__, _compute(calls), shard_size=4, progress=False)
    assert sum(calls) == 6 and cache.missing(keys) == []
    assert set(cache.key_counts().values()) == {1} and len(cache.key_counts()) == 10
    reopened = FeatureCache(tmp_path / "c", {"taps": ["a"]})
    for key, image in images.items():
        got = reopened.read(key)
        assert torch.equal(got["tap:a"], image.mean(dim=0)) and torch.equal(got["tap.b"], image.sum())
    with pytest.raises(KeyError, match="No features cached"):
        reopened.read("nope")


def test_another_config_is_refused_and_shares_partition(tmp_path):
    FeatureCache(tmp_path / "c", {"taps": ["a"], "timesteps": [50]})
    with pytest.raises(ValueError, match=r"another backbone configuration \(differing: \['timesteps'\]\)"):
        FeatureCache(tmp_path / "c", {"taps": ["a"], "timesteps": [60]})
    keys = [str(i) for i in range(11)]
    parts = [share(keys, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(keys) and not set(parts[0]) & set(parts[1])
    with pytest.raises(ValueError, match="rank 3 is outside"):
        share(keys, 3, 3)
    assert content_key(torch.zeros(3, 2, 2)) != content_key(torch.zeros(3, 4, 1))
