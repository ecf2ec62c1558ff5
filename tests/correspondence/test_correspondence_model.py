"""DiffusionPerceptionForSemanticCorrespondence through the tester mixin, and its own behaviour:
descriptors equal the feature extractor's taps laid out as maps (tokens row-major on the image
grid), resized and concatenated in the test; ``match`` equals a brute-force nearest neighbour over
maps upsampled with ``F.interpolate`` (DIFT's rule) or at the network input size (GDF's rule);
the soft-argmax and GDF's loss equal hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import (
    DiffusionPerceptionForFeatureExtraction,
    DiffusionPerceptionForSemanticCorrespondence,
)
from diffperception.modeling.semantic_correspondence import (
    correspondence_loss,
    match_descriptors,
    sample_descriptors,
)

# a block output (map) and a cross-attention query (tokens), the second by its GDF id
TAPS = ["up_ft.1", "up-level2-repeat0-vit-block0-cross-q"]


def _config(tiny_repos, **head):
    return {
        "architecture": "DiffusionPerceptionForSemanticCorrespondence",
        "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
        "features": {"taps": TAPS, "timesteps": [261], "noise": {"kind": "fixed", "seed": 0}},
        "preprocess": {"size": [64, 64], "crop": "none"},
        "head": {"type": "correspondence", **head},
    }


class TestSemanticCorrespondence(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForSemanticCorrespondence
    output_names = ("embeddings",)

    def get_init_dict(self, tiny_repos):
        return _config(tiny_repos, grid=[16, 16], aggregator="conv")

    def test_descriptors_are_the_taps_as_maps(self, model, tiny_repos):
        features = DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["sd1"], taps=TAPS, timesteps=[261], size=(64, 64))
        images = self.get_dummy_inputs()["images"]
        with torch.no_grad():
            feats = features(images)
            out = model(images).embeddings
        block = feats[TAPS[0]]  # (2, 32, 8, 8)
        tokens = feats[TAPS[1]]  # (2, 8*8, 32): row-major on the 8x8 grid of a 64 px image
        assert tokens.shape == (2, 8 * 8, 32)
        query = tokens.reshape(2, 8, 8, 32).permute(0, 3, 1, 2)
        stacked = torch.cat([F.interpolate(block, size=(16, 16), mode="bilinear"),
                             F.interpolate(query, size=(16, 16), mode="bilinear")], dim=1)
        expected = F.conv2d(stacked, model.head.conv.weight, padding=1)
        assert out.shape == (2, 64, 16, 16)
        assert torch.allclose(out, expected, atol=1e-5)

    def test_center_crop_is_refused(self, tiny_repos):
        config = _config(tiny_repos)
        config["preprocess"]["crop"] = "center"
        with pytest.raises(ValueError, match="crop moves keypoints"):
            DiffusionPerceptionForSemanticCorrespondence(config)

    @pytest.mark.parametrize("task,message", [({"window": 0}, "radius >= 1"),
                                              ({"resolution": "grid"}, "one of"),
                                              ({"shift": 1}, "unknown keys")])
    def test_bad_task_settings(self, tiny_repos, task, message):
        with pytest.raises(ValueError, match=message):
            DiffusionPerceptionForSemanticCorrespondence({**_config(tiny_repos), "task": task})

    def test_match_equals_nearest_neighbour_at_image_size(self, tiny_repos):
        model = DiffusionPerceptionForSemanticCorrespondence(_config(tiny_repos)).eval()
        g = torch.Generator().manual_seed(5)
        src, tgt = torch.rand(3, 40, 56, generator=g), torch.rand(3, 48, 36, generator=g)
        points = torch.tensor([[0, 0], [55, 39], [20.4, 13.6], [30, 2]])
        out = model.match(src, tgt, points)
        with torch.no_grad():
            d_src = model(src[None]).embeddings
            d_tgt = model(tgt[None]).embeddings
        up_src = F.interpolate(d_src, size=(40, 56), mode="bilinear")[0]  # (D, 40, 56)
        up_tgt = F.interpolate(d_tgt, size=(48, 36), mode="bilinear")[0]
        for k, (x, y) in enumerate(points.round().long().tolist()):
            v = up_src[:, y, x]
            cos = F.cosine_similarity(v[:, None, None], up_tgt, dim=0)  # (48, 36)
            px, py = out.points[k].tolist()
            assert px == int(px) and py == int(py)  # a pixel of the target
            # the best pixel (up to float rounding: tiny random models give near-ties)
            assert cos[int(py), int(px)].item() >= cos.max().item() - 1e-6
            assert abs(out.scores[k].item() - cos.max().item()) < 1e-5

    def test_match_at_input_size_rescales_to_the_target(self, tiny_repos):
        model = DiffusionPerceptionForSemanticCorrespondence(
            {**_config(tiny_repos), "task": {"resolution": "input"}}).eval()
        g = torch.Generator().manual_seed(6)
        src, tgt = torch.rand(3, 32, 128, generator=g), torch.rand(3, 96, 48, generator=g)
        points = torch.tensor([[100, 20], [3, 7]])
        out = model.match(src, tgt, points)
        with torch.no_grad():
            up_src = F.interpolate(model(src[None]).embeddings, size=(64, 64), mode="bilinear")[0]
            up_tgt = F.interpolate(model(tgt[None]).embeddings, size=(64, 64), mode="bilinear")[0]
        for k, (x, y) in enumerate(points.tolist()):
            sx, sy = round(x * 64 / 128), round(y * 64 / 32)  # into the 64x64 input
            cos = F.cosine_similarity(up_src[:, sy, sx][:, None, None], up_tgt, dim=0)
            cx, cy = out.points[k].tolist()
            cx, cy = cx * 64 / 48, cy * 64 / 96  # back from 48 x 96 to the 64 x 64 input
            assert abs(cx - round(cx)) < 1e-4 and abs(cy - round(cy)) < 1e-4
            assert cos[round(cy), round(cx)].item() >= cos.max().item() - 1e-6

    def test_bad_points_are_clear_errors(self, model):
        image = torch.rand(3, 64, 64)
        with pytest.raises(ValueError, match=r"\(K, 2\) points"):
            model.match(image, image, [1, 2, 3])
        with pytest.raises(ValueError, match="one source and one target"):
            model.match(torch.rand(2, 3, 64, 64), image, [[1, 2]])


def test_sample_descriptors_equals_upsampling_then_indexing():
    g = torch.Generator().manual_seed(0)
    desc = torch.randn(5, 7, 9, generator=g)
    points = torch.tensor([[0, 0], [62, 40], [13, 27], [70, -3], [31.6, 11.2]])
    up = F.interpolate(desc[None], size=(41, 63), mode="bilinear")[0]
    got = sample_descriptors(desc, points, (41, 63))
    for k, (x, y) in enumerate(points.round().long().tolist()):
        x, y = min(max(x, 0), 62), min(max(y, 0), 40)
        assert torch.allclose(got[k], up[:, y, x], atol=1e-6)


def test_window_soft_argmax_is_the_weighted_mean_position():
    # a 1-channel-free construction: 2-D unit descriptors whose angle to the query is known
    H, W = 6, 8
    angles = torch.rand(H, W, generator=torch.Generator().manual_seed(1)) * 3.0
    tgt = torch.stack([angles.cos(), angles.sin()])  # (2, H, W); cosine to (1, 0) = cos(angle)
    angles[2, 5] = 0.0
    tgt = torch.stack([angles.cos(), angles.sin()])
    src = torch.tensor([1.0, 0.0])[:, None, None].expand(2, 3, 3)
    points, scores = match_descriptors(src, tgt, torch.tensor([[1, 1]]), (3, 3), (H, W),
                                       window=1, temperature=0.1)
    sims = angles.cos()
    ys, xs = torch.meshgrid(torch.arange(1, 4), torch.arange(4, 7), indexing="ij")
    weights = torch.softmax(sims[1:4, 4:7].flatten() / 0.1, dim=0)
    expected = [(weights * xs.flatten()).sum().item(), (weights * ys.flatten()).sum().item()]
    assert torch.allclose(points[0], torch.tensor(expected), atol=1e-5)
    assert scores[0].item() == pytest.approx(1.0)
    plain, _ = match_descriptors(src, tgt, torch.tensor([[1, 1]]), (3, 3), (H, W))
    assert plain[0].tolist() == [5, 2]


def test_gdf_loss_is_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    # images of 10 x 12 pixels: pixel (x, y) -> cell (round(x / 2), round(y / 2))
    src_pts, tgt_pts = torch.tensor([[2, 4], [11, 0]]), torch.tensor([[6, 8], [0, 9]])
    loss = correspondence_loss(src, tgt, src_pts, tgt_pts, (10, 12), (10, 12), logit_scale=3.0)
    cells_s, cells_t = [(1, 2), (5, 0)], [(3, 4), (0, 4)]  # (col, row); halves to even, clamped
    total = 0.0
    for (cs, rs), (ct, rt) in zip(cells_s, cells_t):
        a, b = src[:, rs, cs], tgt[:, rt, ct]
        fwd = 3.0 * F.cosine_similarity(a[:, None, None], tgt, dim=0).flatten()
        bwd = 3.0 * F.cosine_similarity(b[:, None, None], src, dim=0).flatten()
        total += -fwd.log_softmax(0)[rt * 6 + ct] - bwd.log_softmax(0)[rs * 6 + cs]
    assert loss.item() == pytest.approx(total.item() / 4, rel=1e-5)
