"""The guided-diffusion (ADM) -> diffusers converter against a tiny ADM-layout network.

``TinyADM`` below is written from the block description of ``METHODS.md`` §0.2-0.3: a conv, then
per level ``num_res_blocks`` residual blocks (each followed by attention at attention levels) and a
downsampling block (a residual block that average-pools, or a strided conv); a middle block
(residual, attention, residual); per level on the way up ``num_res_blocks + 1`` residual blocks on
the concatenated skip, attention at attention levels, the last one of a level also holding the
upsampler (a residual block that upsamples by nearest neighbour, or nearest + conv); a
GroupNorm-SiLU-conv output. Residual blocks take the time embedding (sinusoids, cos first, through
Linear-SiLU-Linear) as a scale and shift of their second norm. Attention is one fused 1x1 ``qkv``
conv whose channels are laid out (head, q|k|v, channel) in the legacy order, (q|k|v, head,
channel) in the new one.

The converted folder must reproduce every block's output (the ``adm.B`` numbering) and the final
output of a seeded random ``TinyADM`` to 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

from diffperception.backbones.adm_conversion import (
    ADMFlags,
    adm_scheduler_config,
    adm_unet_config,
    convert_adm,
    convert_adm_state_dict,
)
from diffperception.backbones.unet import adm_block_paths
from diffperception.cli import main
from diffperception.features.backbone import DiffusionBackbone
from testing_utils.tiny_models import ADM256_CONFIG

# ----------------------------------------------------------------- the tiny ADM-layout network


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """cos | sin of t at frequencies 10000^(-i / (dim/2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, dim)


class ResLayer(nn.Module):
    """Residual block; ``resample`` = "down" (avg-pool) / "up" (nearest) inside, after the first
    norm + SiLU, applied to the skip path too."""

    def __init__(self, cin: int, cout: int, emb_dim: int, scale_shift: bool,
                 resample: str | None = None) -> None:
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.in_layers = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(),
                                       nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(),
                                        nn.Linear(emb_dim, cout * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, cout), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(self._resize(act_in(norm_in(x))))
        x = self._resize(x)
        e = self.emb_layers(emb)[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttnLayer(nn.Module):
    """Self-attention over positions with a fused 1x1 ``qkv`` conv and a residual."""

    def __init__(self, channels: int, head_channels: int, legacy: bool) -> None:
        super().__init__()
        self.heads, self.legacy = channels // head_channels, legacy
        self.norm = nn.GroupNorm(32, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)  # (B, C, N)
        qkv = self.qkv(self.norm(flat))  # (B, 3C, N)
        d = c // self.heads
        if self.legacy:  # channels (head, q|k|v, d)
            q, k, v = qkv.reshape(b, self.heads, 3, d, -1).unbind(2)  # (B, heads, d, N) each
        else:  # channels (q|k|v, head, d)
            q, k, v = qkv.reshape(b, 3, self.heads, d, -1).unbind(1)
        weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d), dim=-1)
        out = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, c, -1)  # (B, C, N)
        return (flat + self.proj_out(out)).reshape(b, c, height, width)


class ConvDown(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ConvUp(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.ModuleList):
    """One numbered ADM block: its layers in order (a bare conv ignores the embedding)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x) if isinstance(layer, nn.Conv2d) else layer(x, emb)
        return x


class TinyADM(nn.Module):
    """guided-diffusion's U-Net layout for ``ADMFlags`` (state-dict names included)."""

    def __init__(self, flags: ADMFlags) -> None:
        super().__init__()
        self.flags, self.ch = flags, flags.num_channels
        widths = [int(m * self.ch) for m in flags.channel_mult]
        # attention where the downsampling rate is image_size / one of the resolutions
        rates = {flags.image_size // r for r in flags.attention_resolutions}
        attention = [2 ** level in rates for level in range(len(widths))]
        emb_dim = 4 * self.ch
        res, attn = self._res, self._attn
        self.time_embed = nn.Sequential(nn.Linear(self.ch, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(3, widths[0], 3, padding=1)])])
        skips, width = [widths[0]], widths[0]
        for level, out in enumerate(widths):
            for _ in range(flags.num_res_blocks):
                layers = [res(width, out)] + ([attn(out)] if attention[level] else [])
                self.input_blocks.append(Block(layers))
                width = out
                skips.append(width)
            if level < len(widths) - 1:
                down = res(width, width, "down") if flags.resblock_updown else ConvDown(width)
                self.input_blocks.append(Block([down]))
                skips.append(width)
        self.middle_block = Block([res(width, width), attn(width), res(width, width)])
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(flags.num_res_blocks + 1):
                layers = [res(width + skips.pop(), widths[level])]
                width = widths[level]
                layers += [attn(width)] if attention[level] else []
                if level > 0 and i == flags.num_res_blocks:
                    up = res(width, width, "up") if flags.resblock_updown else ConvUp(width)
                    layers.append(up)
                self.output_blocks.append(Block(layers))
        self.out = nn.Sequential(nn.GroupNorm(32, width), nn.SiLU(),
                                 nn.Conv2d(width, 6 if flags.learn_sigma else 3, 3, padding=1))

    def _res(self, cin: int, cout: int, resample: str | None = None) -> ResLayer:
        return ResLayer(cin, cout, 4 * self.ch, self.flags.use_scale_shift_norm, resample)

    def _attn(self, channels: int) -> AttnLayer:
        return AttnLayer(channels, self.flags.num_head_channels,
                         legacy=not self.flags.use_new_attention_order)

    def blocks(self) -> list[nn.Module]:
        """The numbered blocks b = 1..N."""
        return [*self.input_blocks, self.middle_block, *self.output_blocks]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(sinusoidal_embedding(t, self.ch))  # (B, 4ch)
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


# ------------------------------------------------------------------------------- fixtures

# 16 px, widths 32 / 64 / 64, attention at the 8 px and 4 px levels (not at 16 px), 2 and 4 heads
TINY = ADMFlags(image_size=16, num_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=(8, 4), num_head_channels=16)
# the other layout choices: conv samplers, additive time embedding, new qkv order, 3 outputs
TINY_PLAIN = dataclasses.replace(TINY, resblock_updown=False, use_scale_shift_norm=False,
                                 use_new_attention_order=True, learn_sigma=False)


def flag_kwargs(flags: ADMFlags, **changes) -> dict:
    """``convert_adm`` keyword arguments for ``flags``."""
    return {**dataclasses.asdict(flags), **changes}


def tiny_network(flags: ADMFlags, seed: int = 0) -> TinyADM:
    torch.manual_seed(seed)
    net = TinyADM(flags).eval()
    with torch.no_grad():  # non-trivial norm affines, so a swapped norm would show
        for module in net.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.2 * torch.randn_like(module.bias))
    return net


@pytest.fixture(scope="module", params=[TINY, TINY_PLAIN],
                ids=["resblock-legacy", "conv-new-order"])
def converted(request, tmp_path_factory):
    flags = request.param
    folder = tmp_path_factory.mktemp("adm")
    net = tiny_network(flags)
    torch.save(net.state_dict(), folder / "tiny.pt")
    out = convert_adm(folder / "tiny.pt", folder / "diffusers", **flag_kwargs(flags))
    return flags, net, out


def block_outputs(modules: list[nn.Module], run) -> list[torch.Tensor]:
    found: dict[int, torch.Tensor] = {}
    def keep(index: int):
        def hook(module, args, out):
            found[index] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        final = run()
    finally:
        for h in handles:
            h.remove()
    return [found[i] for i in range(len(modules))] + [final]


# ---------------------------------------------------------------------------------- parity


def test_every_block_and_the_output_equal_the_adm_network(converted):
    flags, net, out = converted
    unet = UNet2DModel.from_pretrained(str(out / "unet")).eval()
    paths = adm_block_paths(unet)
    assert len(paths) == len(net.blocks()) == 13
    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 150])
    with torch.no_grad():
        ours = block_outputs(net.blocks(), lambda: net(x, t))
        modules = dict(unet.named_modules())
        theirs = block_outputs([modules[p] for p in paths], lambda: unet(x, t).sample)
    assert ours[-1].shape == (2, 6 if flags.learn_sigma else 3, 16, 16)
    for b, (a, d) in enumerate(zip(ours, theirs), start=1):
        name = f"adm.{b} ({paths[b - 1]})" if b <= len(paths) else "final output"
        assert a.shape == d.shape, name
        torch.testing.assert_close(d, a, atol=1e-5, rtol=1e-5, msg=name)


def test_the_folder_loads_as_a_backbone_and_taps_the_adm_block(converted):
    _, net, out = converted
    backbone = DiffusionBackbone.from_diffusers(out, taps=["adm.9"], timesteps=[150], noise="none")
    images = torch.rand(2, 3, 16, 16)
    feats = backbone(images)["adm.9"]
    with torch.no_grad():
        t = torch.tensor([150, 150])
        expected = block_outputs([net.blocks()[8]], lambda: net(2 * images - 1, t))[0]
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    assert sorted(p.name for p in (out / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["beta_schedule"], scheduler["beta_start"],
            scheduler["beta_end"], scheduler["num_train_timesteps"], scheduler["prediction_type"]
            ) == ("DDPMScheduler", "linear", 1e-4, 0.02, 1000, "epsilon")
    record = json.loads((out / "conversion.json").read_text())
    assert record["source"] == "tiny.pt" and len(record["sha256"]) == 64


# ------------------------------------------------------------------- the ADM-256 layout itself



def test_defaults_are_the_adm256_uncond_layout_and_schedule():
    config = adm_unet_config()
    assert {k: config[k] for k in ADM256_CONFIG} == ADM256_CONFIG
    assert adm_scheduler_config() == dict(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        prediction_type="epsilon", clip_sample=True, variance_type="learned_range")


def test_every_adm256_tensor_maps_once():
    """The full-size layout, on the meta device: all 37 blocks, no tensor left or lacking."""
    layout = dataclasses.replace(ADMFlags(), channel_mult=(1, 1, 2, 2, 4, 4))
    with torch.device("meta"):
        net = TinyADM(layout)
        converted = convert_adm_state_dict(net.state_dict())
        unet = UNet2DModel(**adm_unet_config())
    assert len(net.blocks()) == len(adm_block_paths(unet)) == 37
    expected = unet.state_dict()
    assert converted.keys() == expected.keys()
    assert all(converted[k].shape == expected[k].shape for k in expected)


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_state():
    return tiny_network(TINY).state_dict()


@pytest.mark.parametrize("edit,named", [
    (lambda s: s.pop("middle_block.1.qkv.weight"), "middle_block.1.qkv.weight"),
    (lambda s: s.__setitem__("label_emb.weight", torch.zeros(10, 128)), "label_emb.weight"),
    (lambda s: s.__setitem__("input_blocks.1.0.in_layers.2.weight", torch.zeros(32, 32, 1, 1)),
     "input_blocks.1.0.in_layers.2.weight"),
], ids=["missing", "extra", "misshaped"])
def test_a_key_that_does_not_fit_is_named(tiny_state, tmp_path, edit, named):
    state = dict(tiny_state)
    edit(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        convert_adm(tmp_path / "bad.pt", tmp_path / "out", **flag_kwargs(TINY))
    assert not (tmp_path / "out" / "unet").exists()


def test_wrong_flags_are_an_error_not_a_crash(tiny_state, tmp_path):
    torch.save(tiny_state, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="MODEL_FLAGS"):
        convert_adm(tmp_path / "tiny.pt", tmp_path / "out", **flag_kwargs(TINY, num_res_blocks=2))
    with pytest.raises(ValueError, match="num_head_channels"):
        convert_adm(tmp_path / "tiny.pt", tmp_path / "out", num_head_channels=-1)
    with pytest.raises(ValueError, match="channel_mult"):
        convert_adm(tmp_path / "tiny.pt", tmp_path / "out", image_size=512)
    with pytest.raises(ValueError, match="attention_resolutions"):
        convert_adm(tmp_path / "tiny.pt", tmp_path / "out",
                    **flag_kwargs(TINY, attention_resolutions=(5,)))


class NotATensor:
    pass


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        convert_adm(tmp_path / "nope.pt", tmp_path / "out")
    torch.save({"weight": NotATensor()}, tmp_path / "code.pt")  # weights_only refuses the object
    with pytest.raises(ValueError, match="weights_only"):
        convert_adm(tmp_path / "code.pt", tmp_path / "out")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        convert_adm(tmp_path / "list.pt", tmp_path / "out")


def test_a_non_empty_out_dir_needs_overwrite(tiny_state, tmp_path):
    torch.save(tiny_state, tmp_path / "tiny.pt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="overwrite"):
        convert_adm(tmp_path / "tiny.pt", tmp_path / "out", **flag_kwargs(TINY))
    convert_adm(tmp_path / "tiny.pt", tmp_path / "out", overwrite=True, **flag_kwargs(TINY))
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# ------------------------------------------------------------------------------------- CLI


def test_the_cli_converts(tiny_state, tmp_path, capsys):
    torch.save(tiny_state, tmp_path / "tiny.pt")
    argv = ["convert-adm", str(tmp_path / "tiny.pt"), str(tmp_path / "out"), "--image-size", "16",
            "--num-channels", "32", "--channel-mult", "1,2,2", "--num-res-blocks", "1",
            "--attention-resolutions", "8,4", "--num-head-channels", "16"]
    assert main(argv) == 0
    assert "adm.24" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert config["block_out_channels"] == [32, 64, 64] and config["out_channels"] == 6
    assert main(["convert-adm", str(tmp_path / "missing.pt"), str(tmp_path / "out2")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
