"""Class text features (METHODS.md §3.6) against transformers' own outputs on a tiny CLIP built
here: "w. projection" equals ``CLIPTextModelWithProjection(...).text_embeds``, "w.o. projection"
the final-layer hidden state at the first EOS token; templates are averaged then normalised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffperception.heads.text_classifier import (
    TextClassifier,
    class_prompts,
    encode_class_prompts,
    load_text_model,
)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from testing_utils.tiny_models import _text_config
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from diffperception.diffusers_folder import save_char_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    save_char_tokenizer(folder, max_length=24)
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(_text_config(folder, hidden=32, projection=16)).eval()
    model.save_pretrained(folder)
    return folder, model, CLIPTokenizer.from_pretrained(str(folder))


def _ids(tok, texts):
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def test_with_projection_is_text_embeds(tiny_clip):
    folder, model, tok = tiny_clip
    labels = ["cat", "dog", "okapi"]
    ours = encode_class_prompts(class_prompts(labels, ["a photo of a {}."]), model, tok,
                                projection=True)
    with torch.no_grad():
        ref = model(input_ids=_ids(tok, [f"a photo of a {x}." for x in labels])).text_embeds
    assert torch.allclose(ours, F.normalize(ref, dim=-1), atol=1e-6)


def test_without_projection_is_the_final_eos_hidden_state(tiny_clip):
    folder, model, tok = tiny_clip
    texts = ["a cat", "a zebra"]
    ours = encode_class_prompts([[t] for t in texts], model, tok, projection=False)
    ids = _ids(tok, texts)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).last_hidden_state
    eos = (ids == tok.eos_token_id).int().argmax(dim=1)  # first EOS
    ref = hidden[torch.arange(len(texts)), eos]
    assert torch.allclose(ours, F.normalize(ref, dim=-1), atol=1e-6)


def test_templates_are_averaged_then_normalised(tiny_clip):
    folder, model, tok = tiny_clip
    templates = ["a photo of a {}.", "art of the {}."]
    ours = encode_class_prompts(class_prompts(["cat"], templates), model, tok, projection=True)
    with torch.no_grad():
        each = model(input_ids=_ids(tok, [t.format("cat") for t in templates])).text_embeds
    assert torch.allclose(ours[0], F.normalize(each.mean(0), dim=-1), atol=1e-6)


def test_loading_from_a_folder_with_and_without_projection(tiny_clip):
    folder, model, tok = tiny_clip
    with_proj, _ = load_text_model(str(folder), None, projection=True)
    without, _ = load_text_model(str(folder), None, projection=False)
    assert with_proj.text_projection.weight.shape == (16, 32)
    assert not hasattr(without, "text_projection")


def test_cosine_logits_with_temperature_and_scale():
    clf = TextClassifier(3, 4, temperature=0.2, logit_scale=4.6052)
    t = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    clf.set_text_features(t)
    v = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    expected = F.cosine_similarity(v[:, None], t[None], dim=-1) * 4.6052 / 0.2
    assert torch.allclose(clf(v), expected, atol=1e-5)
    dense = clf(v[:, :, None, None].expand(2, 4, 3, 5))
    assert torch.allclose(dense[:, :, 1, 2], expected, atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        clf.set_text_features(torch.zeros(3, 5))


def test_templates_need_a_slot():
    with pytest.raises(ValueError, match="'\\{\\}'"):
        class_prompts(["cat"], ["a photo"])
