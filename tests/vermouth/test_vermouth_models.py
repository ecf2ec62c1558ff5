"""Vermouth task models on the tiny SD-1 folder: classification, retrieval and segmentation
through the tester mixin; the stage features against hooks on the full diffusers U-Net; no label
leakage into prompts; caption prompts cached per image; open-vocabulary ``set_labels``; the
trained normalisation parameters saved and exported with the trunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import (
    DiffusionPerceptionForImageClassification,
    DiffusionPerceptionForImageRetrieval,
    DiffusionPerceptionForSemanticSegmentation,
)
from diffperception.features.stages import stage_taps
from diffperception.modeling.image_retrieval import search

UNET_SD1 = {"block_out_channels": [32, 32, 64], "layers_per_block": 2,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
LABELS = ["cat", "dog", "owl"]
HEAD = {"widths": [64, 64, 32], "embed_dim": 32, "cross_attention": True,
        "attention_channels": 16, "attention_min_stride": 16, "text_model": "base",
        "projection": False, "templates": ["a {}"]}


def config(tiny_repos, arch, layout, head, prompt=None, task=None, labels=LABELS):
    data = {"architecture": arch,
            "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
            "features": {"taps": stage_taps(UNET_SD1, layout, cross_attention=True),
                         "timesteps": [200], "noise": {"kind": "fixed", "seed": 8888},
                         "prompt": prompt or {"kind": "null"}},
            "preprocess": {"size": [64, 64]}, "head": head, "labels": labels}
    if task:
        data["task"] = task
    return data


class TestVermouthClassification(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageClassification
    output_names = ("logits",)

    def get_init_dict(self, tiny_repos):
        return config(tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down",
                      {"type": "vermouth", "stages": "mid+down", "pool_size": 2, "num_heads": 4,
                       **HEAD})

    def test_stages_equal_hooks_on_the_full_unet(self, model, tiny_repos):
        from diffusers import UNet2DConditionModel
        from testing_utils.reference import hook_full_unet

        images = self.get_dummy_inputs()["images"]
        backbone = model.backbone
        with torch.no_grad():
            feats = backbone(images)
            scales = model.head.stages(feats)
            unet = UNet2DConditionModel.from_pretrained(str(tiny_repos["sd1"]), subfolder="unet")
            store, handles = hook_full_unet(unet, ["mid_block", "down_blocks.0", "down_blocks.1"])
            x = backbone.prepare_images(images)
            z, t = backbone.noisy_latents(backbone.encode(x))
            context, _ = backbone.conditioning(None, 2, (64, 64), 2)
            unet(z, t, encoder_hidden_states=context.expand(2, -1, -1))
            for h in handles:
                h.remove()
        def up2(v):
            return F.interpolate(v, scale_factor=2, mode="bilinear", align_corners=False)
        # the 4x4 cross-attention maps (up_blocks.1, stride 16) join s1; the 8x8 ones are finer
        # than attention_min_stride = 16 and are left out
        assert [tuple(s.shape[1:]) for s in scales] == [(64, 2, 2), (32 + 16, 4, 4), (32, 8, 8)]
        assert torch.allclose(scales[0], store["mid_block"], atol=1e-5)
        assert torch.allclose(scales[1][:, :32], up2(store["down_blocks.1"]), atol=1e-5)
        assert torch.allclose(scales[2], up2(store["down_blocks.0"]), atol=1e-5)
        attn = [feats[n].mean(1) for n in feats if n.startswith("up_blocks.1.") and "attn2" in n]
        assert len(attn) == 3
        maps = torch.stack(attn).mean(0).transpose(1, 2).reshape(2, 16, 4, 4)
        assert torch.allclose(scales[1][:, 32:], maps, atol=1e-6)

    def test_permuted_labels_leave_predictions_unchanged(self, tiny_repos):
        data = config(tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down",
                      {"type": "vermouth", "stages": "mid+down", "pool_size": 2, "num_heads": 4,
                       **HEAD},
                      prompt={"kind": "caption", "captioner": "noise-prediction",
                              "text": ["a cat", "a dog", "an owl"]})
        model = DiffusionPerceptionForImageClassification(data).eval()
        calls = []

        def captioner(images):
            calls.append(len(images))
            return ["a cat" if float(img.mean()) > 0.5 else "a dog" for img in images]

        model.backbone.set_captioner(captioner)
        images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        labels = torch.tensor([0, 1, 2, 0])
        with torch.no_grad():
            a = model(images, labels=labels).logits
            b = model(images, labels=labels[torch.tensor([2, 0, 3, 1])]).logits
            c = model(images).logits
        assert torch.equal(a, b) and torch.equal(a, c)
        assert calls == [4]  # captions cached per image: captioned once

    def test_set_labels_reencodes_the_classes(self, tiny_repos):
        model = DiffusionPerceptionForImageClassification(config(
            tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down",
            {"type": "vermouth", "stages": "mid+down", "pool_size": 2, "num_heads": 4, **HEAD}))
        images = self.get_dummy_inputs()["images"]
        with torch.no_grad():
            before = model(images).logits
            model.set_labels(["owl", "cat"])
            after = model(images).logits
        assert after.shape == (2, 2)
        assert torch.allclose(after[:, 0], before[:, 2], atol=1e-5)  # "owl" is the same text
        assert torch.allclose(after[:, 1], before[:, 0], atol=1e-5)
        assert model.config.labels == ["owl", "cat"]
        with pytest.raises(ValueError, match="duplicates"):
            model.set_labels(["a", "a"])


class TestVermouthRetrieval(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageRetrieval
    output_names = ("embeddings",)

    def get_init_dict(self, tiny_repos):
        head = {"type": "vermouth", "stages": "mid+up", "pool_size": 2, "num_heads": 4,
                **HEAD, "logit_scale": 4.6052}
        return config(tiny_repos, "DiffusionPerceptionForImageRetrieval", "mid+up", head)

    def test_embeddings_are_normalised_and_searchable(self, model):
        images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = model(images, labels=torch.tensor([0, 1, 2]))
        assert out.embeddings.shape == (3, 32) and out.loss is not None
        assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
        scores, idx = search(out.embeddings, out.embeddings, top_k=2)
        assert idx[:, 0].tolist() == [0, 1, 2]
        assert torch.allclose(scores[:, 0], torch.ones(3), atol=1e-5)

    def test_add_baseline_and_no_fuse(self, tiny_repos):
        for fuse in ("add", "none"):
            data = self.get_init_dict(tiny_repos)
            data["head"] = {**data["head"], "fuse": fuse}
            model = DiffusionPerceptionForImageRetrieval(data)
            with torch.no_grad():
                assert model(self.get_dummy_inputs()["images"]).embeddings.shape == (2, 32)


class TestVermouthSegmentation(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForSemanticSegmentation
    output_names = ("logits",)

    def get_init_dict(self, tiny_repos):
        head = {"type": "vermouth_dense", "stages": "mid+up", **HEAD}
        return config(tiny_repos, "DiffusionPerceptionForSemanticSegmentation", "mid+up", head,
                      task={"ignore_index": 255, "train_norms": True})

    def test_norm_affines_train_and_are_saved(self, model, tmp_path):
        from diffperception import AutoDiffusionPerception

        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        norms = [n for n in trainable if n.startswith("backbone.unet.")]
        assert norms and all(n.endswith(("weight", "bias")) for n in norms)
        assert all(("norm" in n) for n in norms)
        name = norms[0]
        with torch.no_grad():
            dict(model.named_parameters())[name].add_(0.5)
        model.save_pretrained(tmp_path / "m")
        loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "m")
        trained = dict(model.named_parameters())[name]
        assert torch.equal(dict(loaded.named_parameters())[name], trained)
        with pytest.raises(ValueError, match="bundle_trunk=True"):
            model.save_pretrained(tmp_path / "u", bundle_trunk=False)

    def test_per_pixel_logits_and_loss(self, model):
        images = self.get_dummy_inputs()["images"]
        labels = torch.randint(0, 3, (2, 64, 64), generator=torch.Generator().manual_seed(0))
        out = model(images, labels=labels)
        assert out.logits.shape == (2, 3, 64, 64)
        out.loss.backward()
        assert any(p.grad is not None for n, p in model.named_parameters()
                   if n.startswith("backbone.unet."))


def test_shuffled_prompts_ignore_the_labels(tiny_repos):
    texts = ["a cat", "a dog", "an owl"]
    data = config(tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down",
                  {"type": "vermouth", "stages": "mid+down", "pool_size": 2, "num_heads": 4,
                   **HEAD}, prompt={"kind": "shuffled", "text": texts})
    model = DiffusionPerceptionForImageClassification(data).eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    prompts = model.backbone.image_prompts(model.backbone.prepare_images(images))
    assert all(p in texts for p in prompts)
    with torch.no_grad():
        a = model(images, labels=torch.tensor([0, 1, 2])).logits
        b = model(images, labels=torch.tensor([2, 2, 0])).logits
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Cannot specialize 'shuffled'"):
        model.specialize((64, 64))


def test_bad_settings_are_clear_errors(tiny_repos):
    head = {"type": "vermouth", "stages": "mid+side", **HEAD}
    with pytest.raises(ValueError, match="stages'\\] = 'mid\\+side' is invalid"):
        DiffusionPerceptionForImageClassification(config(
            tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down", head))
    head = {"type": "vermouth", "stages": "mid+up", "pool_size": 2, **HEAD}
    with pytest.raises(ValueError, match="'mid_block' and the up_blocks outputs"):
        DiffusionPerceptionForImageClassification(config(
            tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down", head))
    with pytest.raises(ValueError, match="candidate captions"):
        config_ = config(tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down",
                         {"type": "vermouth", "stages": "mid+down", **HEAD},
                         prompt={"kind": "caption", "captioner": "noise-prediction"})
        DiffusionPerceptionForImageClassification(config_)


def test_expert_fuses_normalised_levels(tiny_repos):
    pytest.importorskip("timm")
    head = {"type": "vermouth", "stages": "mid+down", "pool_size": 2, "num_heads": 4, **HEAD,
            "expert": "resnet18", "expert_indices": [3, 4], "expert_size": [128, 128],
            "expert_weights": "none"}
    model = DiffusionPerceptionForImageClassification(config(
        tiny_repos, "DiffusionPerceptionForImageClassification", "mid+down", head))
    assert model.head.stages.channels == [64, 48, 32]
    assert model.head.expert.channels == [512, 256]
    assert model.head.expert is not None and not model.head.expert.model.training
    model.train()
    assert not model.head.expert.model.training  # frozen experts stay in eval mode
    assert not any(p.requires_grad for p in model.head.expert.model.parameters())
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).logits.shape == (2, 3)
