"""Caption prompts (plumbing, with a tiny random BLIP built here: its captions mean nothing) and
the retrieval / segmentation models trained by the shared loop."""

from __future__ import annotations

import pytest
import torch

from diffperception.features.captions import CaptionCache, ImageCaptioner, ShuffledPrompts
from diffperception.features.stages import stage_taps

UNET_SD1 = {"block_out_channels": [32, 32, 64], "layers_per_block": 2,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
HEAD = {"widths": [64, 64, 32], "embed_dim": 32, "attention_channels": 16,
        "text_model": "base", "templates": ["a {}"]}


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "dog", "cat",
             "on", "the", "grass"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[CLS]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    torch.manual_seed(0)
    config = BlipConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 37, "encoder_hidden_size": 32,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 37, "image_size": 32, "patch_size": 8},
        projection_dim=32)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_blip_captioner_generates_and_strips_the_prefix(tiny_blip):
    captioner = ImageCaptioner(str(tiny_blip), max_length=8, min_length=5)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = captioner(images)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert not any(t.startswith("a picture of") for t in texts)
    assert texts == captioner(images)  # greedy: deterministic


def test_caption_cache_calls_once_per_image():
    seen = []

    def fn(images):
        seen.append(len(images))
        return [f"n{i}" for i in range(len(images))]

    cache = CaptionCache(fn)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    first = cache(x)
    assert cache(x[[2, 0]]) == [first[2], first[0]]
    assert seen == [3]
    with pytest.raises(ValueError, match="one text per image"):
        CaptionCache(lambda images: ["only one"])(x)
    assert ShuffledPrompts(["a", "b"])(x) == ShuffledPrompts(["a", "b"])(x.clone())


def test_a_caption_model_saves_no_captioner(tiny_repos, tiny_blip, tmp_path):
    from safetensors.torch import load_file

    from diffperception import AutoDiffusionPerception, DiffusionPerceptionForImageRetrieval

    config = {"architecture": "DiffusionPerceptionForImageRetrieval",
              "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
              "features": {"taps": stage_taps(UNET_SD1, "mid+up"), "timesteps": [200],
                           "noise": {"kind": "none"},
                           "prompt": {"kind": "caption", "captioner": str(tiny_blip)}},
              "preprocess": {"size": [64, 64]},
              "head": {"type": "vermouth", "pool_size": 2, "num_heads": 4, **HEAD},
              "labels": ["cat", "dog"]}
    model = DiffusionPerceptionForImageRetrieval(config).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images).embeddings
    model.save_pretrained(tmp_path / "m")
    keys = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not any("blip" in k.lower() or "caption" in k.lower() for k in keys)
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "m")
    assert loaded.config.features.prompt.captioner == str(tiny_blip)
    with torch.no_grad():
        assert torch.allclose(loaded(images).embeddings, out, atol=1e-5)


@pytest.mark.slow
def test_retrieval_and_segmentation_train_through_the_loop(tiny_repos, tmp_path):
    import datasets
    import numpy as np

    from diffperception import AutoDiffusionPerception
    from diffperception.training import TrainingArguments, train

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    labels = [i % 2 for i in range(8)]
    cls = datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=["cat", "dog"])}))
    masks = [(img[..., 0] > 127).astype(np.uint8) for img in images]
    seg = datasets.Dataset.from_dict({"image": images, "mask": masks}).cast_column(
        "image", datasets.Image())
    base = {"backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
            "preprocess": {"size": [64, 64]}, "labels": ["cat", "dog"]}
    retrieval = AutoDiffusionPerception.from_config({
        **base, "architecture": "DiffusionPerceptionForImageRetrieval",
        "features": {"taps": stage_taps(UNET_SD1, "mid+up"), "timesteps": [200]},
        "head": {"type": "vermouth", "pool_size": 2, "num_heads": 4, **HEAD}})
    segmenter = AutoDiffusionPerception.from_config({
        **base, "architecture": "DiffusionPerceptionForSemanticSegmentation",
        "features": {"taps": stage_taps(UNET_SD1, "mid+up"), "timesteps": [10]},
        "head": {"type": "vermouth_dense", **HEAD}, "task": {"train_norms": True}})
    for model, data in ((retrieval, cls), (segmenter, seg)):
        norm = next(p for n, p in model.named_parameters() if n.endswith("norm1.weight"))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        history = train(model, data, TrainingArguments(
            output_dir=str(tmp_path / type(model).__name__), epochs=2, batch_size=4,
            learning_rate=1e-3, optimizer="adamw", augment="none", progress=False))
        assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)
        changed = [n for n, p in model.named_parameters() if n in before
                   and not torch.equal(p.detach(), before[n])]
        assert any(n.startswith("head.") for n in changed)
        trunk_changed = any(n.startswith("backbone.unet.") for n in changed)
        assert trunk_changed == (model is segmenter)  # only the norms of the segmenter train
        assert norm.requires_grad == (model is segmenter)


def test_noise_prediction_captioner_equals_diffusers_errors():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffperception import AutoDiffusionPerception
    from diffperception.default_model import DEFAULT_MODEL_PATH, load_digits_split
    from diffperception.features.captions import NoisePredictionCaptioner
    from diffperception.features.noise import fixed_noise

    model = AutoDiffusionPerception.from_preset("vermouth-digits-sbir")
    candidates = ["a handwritten digit zero", "a handwritten digit one", "a handwritten digit two"]
    captioner = NoisePredictionCaptioner(model.backbone, candidates, timesteps=(700,), seed=3)
    images = torch.from_numpy(load_digits_split()["test_images"][:2])
    errors = captioner.errors(images)
    # reference: diffusers' U-Net and transformers' text encoder, the same seeded noise
    unet = UNet2DConditionModel.from_pretrained(str(DEFAULT_MODEL_PATH), subfolder="unet").eval()
    text = CLIPTextModel.from_pretrained(str(DEFAULT_MODEL_PATH / "text_encoder")).eval()
    tok = CLIPTokenizer.from_pretrained(str(DEFAULT_MODEL_PATH / "tokenizer"))
    abar = model.backbone.alphas_cumprod[700]
    eps = fixed_noise(3, 1, 1, (3, 32, 32))[0, 0]  # (1, 3, 32, 32)
    with torch.no_grad():
        ids = tok(candidates, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        context = text(ids)[0]
        x = images * 2 - 1
        z = abar.sqrt() * x + (1 - abar).sqrt() * eps  # (2, 3, 32, 32)
        ref = torch.stack([torch.stack([
            (unet(z[i:i + 1], torch.tensor([700]), encoder_hidden_states=context[k:k + 1]).sample
             - eps).pow(2).mean() for k in range(3)]) for i in range(2)])
    assert torch.allclose(errors, ref, atol=1e-5)
    assert captioner(images) == [candidates[i] for i in ref.argmin(1).tolist()]
