"""DiffusionBackbone: feature_info, additive injections and two-pass runs, each against forward
hooks on diffusers' own full U-Net fed the same noisy input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffperception import DiffusionBackbone, DiffusionPerceptionForFeatureExtraction

TOL = 1e-5
T = 300


def _images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _noise(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _full_forward(pipe, images, eps, capture, inject=None):
    """The full DDPM U-Net on the noisy image; ``inject``: {path: hook fn(output) -> output}."""
    unet = pipe.unet
    modules = dict(unet.named_modules())
    store, handles = {}, []
    for path, fn in (inject or {}).items():
        handles.append(modules[path].register_forward_hook(lambda m, a, out, _fn=fn: _fn(out)))
    for path in capture:
        def grab(m, a, out, _path=path):
            store[_path] = out[0] if isinstance(out, tuple) else out
        handles.append(modules[path].register_forward_hook(grab))
    abar = pipe.scheduler.alphas_cumprod[T]
    z = abar.sqrt() * (images * 2 - 1) + (1 - abar).sqrt() * eps
    with torch.no_grad():
        unet(z, torch.full((z.shape[0],), T))
    for h in handles:
        h.remove()
    return store


@pytest.fixture(scope="module")
def pixel(tiny_repos):
    return DiffusionBackbone.from_diffusers(
        tiny_repos["pixel"], taps=["conv_in", "down_blocks.1", "down_blocks.1.resnets.0",
                                   "mid_block", "up_blocks.1", "up_blocks.0.attentions.0:attn"],
        timesteps=[T])


@pytest.mark.parametrize("kind,taps,size", [
    ("pixel", ["conv_in", "down_blocks.1", "mid_block", "up_blocks.1",
               "up_blocks.0.attentions.0:attn", "down_blocks.2:in"], 32),
    ("sd1", ["up_ft.1", "mid_block", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
             "up_blocks.1.attentions.1.transformer_blocks.0.attn2:attn"], 64),
    ("sdxl", ["up_blocks.0", "down_blocks.1"], 64),
])
def test_feature_info_matches_the_features(tiny_repos, kind, taps, size):
    backbone = DiffusionBackbone.from_diffusers(tiny_repos[kind], taps=taps, timesteps=[10, 20])
    meta = DiffusionBackbone(backbone.backbone_config, backbone.features, backbone.preprocess,
                             source=backbone.source, load_weights=False)
    assert meta.feature_info == backbone.feature_info  # known before any weight is read
    assert all(p.is_meta for p in meta.network.parameters())
    with torch.no_grad():
        feats = backbone(_images(size, 1))
    for name in taps:
        info, f = backbone.feature_info[name], feats[name][:, 0]  # drop the timestep axis
        assert info.num_timesteps == 2 and feats[name].shape[1] == 2
        if info.layout == "map":
            assert (info.channels, info.stride) == (f.shape[1], size // f.shape[-1]), name
        elif info.layout == "tokens":
            assert info.channels == f.shape[-1] and info.stride ** 2 * f.shape[1] == size * size
        else:  # attention probabilities (B, heads, queries, keys)
            assert info.channels == f.shape[1] and info.stride ** 2 * f.shape[2] == size * size
    assert backbone.channels == [backbone.feature_info[n].channels for n in taps]


def test_injection_at_a_resnet_matches_a_hook_on_the_full_unet(pixel, reference_pipes):
    delta = 0.3 * torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(1))
    path = "down_blocks.1.resnets.0"
    ref = _full_forward(reference_pipes["pixel"], _images(), _noise(), ["mid_block", "up_blocks.1"],
                        inject={path: lambda out: out + delta})
    with torch.no_grad():
        ours = pixel(_images(), noise=_noise(), injections={path: delta})
        plain = pixel(_images(), noise=_noise())
    for name in ("mid_block", "up_blocks.1"):
        assert (ours[name] - ref[name]).abs().max() <= TOL
        assert (ours[name] - plain[name]).abs().max() > 1e-3  # the injection changed it
    # a tap on the injected module sees the sum
    assert (ours[path] - plain[path] - delta).abs().max() <= TOL


def test_injection_at_a_down_block_also_changes_its_skip_connection(pixel, reference_pipes):
    delta = 0.3 * torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(2))

    def add(out):  # the block's output and its last residual are the same tensor
        hidden, residuals = out
        new = hidden + delta
        return new, residuals[:-1] + (new,)

    ref = _full_forward(reference_pipes["pixel"], _images(), _noise(), ["up_blocks.1"],
                        inject={"down_blocks.1": add})
    with torch.no_grad():
        ours = pixel(_images(), noise=_noise(), injections={"down_blocks.1": delta})
    assert (ours["up_blocks.1"] - ref["up_blocks.1"]).abs().max() <= TOL


def _feedback(first):
    """A fixed map from the first pass's mid block to an addition at conv_in (test-only)."""
    mid = first["mid_block"]  # (N, 64, 8, 8)
    return {"conv_in": 0.1 * F.interpolate(mid[:, :32], scale_factor=4, mode="nearest")}


def test_two_pass_matches_two_full_forwards(pixel, reference_pipes):
    pipe, images, eps = reference_pipes["pixel"], _images(), _noise()
    first = _full_forward(pipe, images, eps, ["mid_block"])
    injection = _feedback(first)["conv_in"]
    ref = _full_forward(pipe, images, eps, ["down_blocks.1"],
                        inject={"conv_in": lambda out: out + injection})
    with torch.no_grad():
        ours = pixel.forward_two_pass(images, _feedback, first_taps=["mid_block"],
                                      taps=["down_blocks.1"], noise=eps)
    assert list(ours) == ["down_blocks.1"]
    assert (ours["down_blocks.1"] - ref["down_blocks.1"]).abs().max() <= TOL


def test_first_pass_has_no_graph_and_second_pass_has_one(pixel):
    seen = {}

    def feedback(first):
        seen["grad"] = first["mid_block"].requires_grad
        scale = torch.ones(1, requires_grad=True)
        seen["scale"] = scale
        return {"conv_in": scale * 0.0 + 0.1 * F.interpolate(first["mid_block"][:, :32], scale_factor=4)}

    out = pixel.forward_two_pass(_images(), feedback, first_taps=["mid_block"], taps=["down_blocks.1"])
    out["down_blocks.1"].sum().backward()
    assert seen["grad"] is False and seen["scale"].grad is not None


def test_bad_injections_and_subsets_are_clear_errors(pixel):
    with pytest.raises(ValueError, match="Cannot inject at 'up_blocks.2'"):
        pixel(_images(), injections={"up_blocks.2": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"\['nope'\] are not among this trunk's taps"):
        pixel(_images(), taps=["nope"])


def test_subset_run_equals_the_full_run(pixel):
    with torch.no_grad():
        full = pixel(_images(), noise=_noise())
        part = pixel(_images(), noise=_noise(), taps=["down_blocks.1"])
    assert list(part) == ["down_blocks.1"] and torch.equal(part["down_blocks.1"], full["down_blocks.1"])


def test_feature_extractor_is_the_backbone_with_the_identity_head(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["pixel"], taps=["mid_block"])
    assert type(model.head).__name__ == "IdentityHead" and not list(model.head.parameters())
    with torch.no_grad():
        assert torch.equal(model(_images())["mid_block"], model.backbone(_images())["mid_block"])
    assert model.config.head.to_dict() == {"type": "identity"}


def test_family_must_match_the_folder(tiny_repos):
    (backbone, features, preprocess), source = DiffusionBackbone.config_sections(
        tiny_repos["pixel"], taps=["mid_block"])
    backbone.family = "sd"
    with pytest.raises(ValueError, match=r"'pixel'-family network"):
        DiffusionBackbone(backbone, features, preprocess, source=source)
    backbone.family = "dit-like"
    with pytest.raises(ValueError, match=r"config\['backbone'\]\['family'\] = 'dit-like' is not a "
                                         r"registered backbone family"):
        DiffusionBackbone(backbone, features, preprocess, source=source)
