"""K/V prompts (the paper, S002 §4.5) and LoRA (the released code) on a frozen trunk.

- zero prompts (and LoRA with ``up = 0``) leave the network's outputs and the scores bit-identical
  to the unadapted model;
- an adapted projection computes ``F.linear(x, W + p, b)``, written out here;
- one optimiser step on a matching loss changes only the prompts (requires_grad audit);
- trained additions are folded into the weights on save (the saved prompts are zero, the
  reloaded model scores the same) and into the baked K/V of the specialised classifier.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_score import TEXTS, matching_config

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForImageTextMatching


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _model(repo, adaptation, **kw):
    torch.manual_seed(0)
    return DiffusionPerceptionForImageTextMatching(
        matching_config(repo, adaptation=adaptation, **kw)).eval()


def _randomize(adapter, seed=0, scale=0.05):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


@pytest.mark.parametrize("adaptation", ["kv", "lora"])
def test_untrained_adaptation_is_bit_identical(tiny_repos, images, adaptation):
    base, adapted = _model(tiny_repos["sd2"], "none"), _model(tiny_repos["sd2"], adaptation)
    assert base.adapter is None and adapted.adapter is not None
    assert torch.equal(adapted.score(images, TEXTS), base.score(images, TEXTS))
    with torch.no_grad():  # the network's own output (conv_out) too
        assert torch.equal(adapted.score(images, TEXTS, scorer="noise_error"),
                           base.score(images, TEXTS, scorer="noise_error"))


def test_kv_prompt_is_added_to_the_weight(tiny_repos):
    model = _model(tiny_repos["sd2"], "kv")
    _randomize(model.adapter)
    path = model.adapter.paths[0]
    assert path.endswith("attn2.to_k") and len(model.adapter.paths) == 2 * 11
    to_k = model.backbone.network.get_submodule(path)
    prompt = model.adapter.prompts[path.replace(".", "__")]
    assert prompt.shape == to_k.weight.shape
    ctx = torch.randn(2, 16, to_k.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(to_k(ctx), F.linear(ctx, to_k.weight + prompt, to_k.bias),
                              atol=1e-5)


def test_lora_covers_q_k_v_out_of_every_attention(tiny_repos):
    from diffusers.models.attention_processor import Attention

    model = _model(tiny_repos["sd2"], "lora")
    attentions = [n for n, m in model.backbone.network.named_modules() if isinstance(m, Attention)]
    assert len(model.adapter.paths) == 4 * len(attentions)
    assert all(torch.equal(u, torch.zeros_like(u)) for u in model.adapter.up.values())


@pytest.mark.parametrize("adaptation", ["kv", "lora"])
def test_one_step_changes_only_the_additions(tiny_repos, images, adaptation):
    model = _model(tiny_repos["sd2"], adaptation, head_weights=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("adapter.", "head.head_logits.")) for n in trainable)
    if adaptation == "lora":  # LoRA's up starts at zero: give the step a gradient to move
        with torch.no_grad():
            for up in model.adapter.up.values():
                up.fill_(0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    scores = model(images[:2], [[TEXTS[0], TEXTS[1]], [TEXTS[1], TEXTS[2]]]).scores  # (2, 2)
    loss = (scores[:, 1] - scores[:, 0] + 0.1).clamp(min=0).mean() + 1e-3 * scores.mean()
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("adapter.", "head.head_logits.")) for k in changed)
    assert any(k.startswith("adapter.") for k in changed)


@pytest.mark.parametrize("adaptation", ["kv", "lora"])
def test_trained_additions_are_folded_on_save(tiny_repos, images, tmp_path, adaptation):
    model = _model(tiny_repos["sd2"], adaptation, labels=TEXTS)
    _randomize(model.adapter, scale=0.02)
    expected = model.score(images, TEXTS)
    assert not torch.allclose(expected, _model(tiny_repos["sd2"], "none").score(images, TEXTS))
    model.save_pretrained(tmp_path / "folded")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "folded" / "model.safetensors"))
    path = model.adapter.paths[1]  # a to_k / to_v (kv) or to_k (lora)
    key = f"backbone.unet.{path}.weight"
    weight = model.backbone.network.get_submodule(path).weight
    assert torch.allclose(saved[key], weight + model.adapter.delta_weight(path), atol=1e-6)
    zeroed = "adapter.prompts." if adaptation == "kv" else "adapter.up."
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in saved.items() if k.startswith(zeroed))
    assert not torch.equal(model.adapter.delta_weight(path), torch.zeros_like(weight))  # unchanged
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "folded")
    assert torch.allclose(loaded.score(images, TEXTS), expected, atol=1e-5)
    special = model.specialize()  # the candidates' K/V baked with the additions folded in
    with torch.no_grad():
        assert torch.allclose(special(images)["scores"], expected, atol=1e-5)
