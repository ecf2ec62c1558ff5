"""Keypoint-pair loaders on tiny replicas of SPair-71k's and PF-WILLOW's own layouts written here,
``diffperception evaluate --benchmark spair71k`` on a saved model (PCK recomputed in the test from
the model's matches and the annotation files), the dift-sd21 preset matched through the
correspondence model, and the offline stand-ins' ground truth checked on the pixels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForSemanticCorrespondence
from diffperception.cli import main
from diffperception.data.correspondence import load_pf_willow, load_spair71k
from diffperception.evaluation import get_benchmark, list_benchmarks
from diffperception.evaluation.correspondence import as_correspondence_model
from diffperception.modeling.presets import preset_config

SPAIR_PAIRS = [
    # name, category, source (name, h, w), target (name, h, w), src kps, trg kps, trg box
    ("000001-2008_000001-2008_000002:cat", "cat", ("2008_000001.jpg", 48, 64),
     ("2008_000002.jpg", 40, 56), [[5, 6], [30, 20], [60, 40]], [[4, 4], [20, 30], [50, 35]],
     [2, 3, 50, 38]),
    ("000002-2009_000003-2008_000001:cat", "cat", ("2009_000003.jpg", 64, 48),
     ("2008_000001.jpg", 48, 64), [[10, 10], [40, 60]], [[12, 9], [63, 47]], [0, 0, 63, 47]),
    ("000003-2010_000004-2010_000005:dog", "dog", ("2010_000004.jpg", 32, 32),
     ("2010_000005.jpg", 56, 40), [[16, 16]], [[20, 28]], [10, 10, 30, 50]),
]


def _image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def spair(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "SPair-71k"
    for i, (name, category, src, tgt, skp, tkp, box) in enumerate(SPAIR_PAIRS):
        for j, (image, h, w) in enumerate((src, tgt)):
            path = root / "JPEGImages" / category / image
            if not path.exists():
                _image(path, h, w, 10 * i + j)
        ann = {"pair_id": i + 1, "src_imname": src[0], "trg_imname": tgt[0], "category": category,
               "src_imsize": [src[2], src[1], 3], "trg_imsize": [tgt[2], tgt[1], 3],
               "src_kps": skp, "trg_kps": tkp, "src_bndbox": [0, 0, src[2], src[1]],
               "trg_bndbox": box, "vp_var": 0, "sc_var": 0, "truncn": 0, "occln": 0}
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(ann))
    (root / "PairAnnotation" / "trn").mkdir()
    return root


def test_spair_loader_reads_the_layout(spair):
    pairs = load_spair71k(spair, "test")
    assert [p.name for p in pairs] == [p[0] for p in SPAIR_PAIRS]
    first = pairs[0]
    assert first.category == "cat"
    assert first.source_points.tolist() == SPAIR_PAIRS[0][4]
    assert first.target_bbox.tolist() == SPAIR_PAIRS[0][6]
    source, target = first.images()
    assert source.shape == (48, 64, 3) and target.shape == (40, 56, 3)
    with pytest.raises(FileNotFoundError, match="no pair annotations"):
        load_spair71k(spair, "train")
    with pytest.raises(ValueError, match="split = 'dev' is invalid"):
        load_spair71k(spair, "dev")
    with pytest.raises(FileNotFoundError, match="SPair-71k folder"):
        load_spair71k(spair / "JPEGImages", "test")


def test_pf_willow_loader_reads_the_csv_layout(tmp_path):
    root = tmp_path / "PF-WILLOW"
    _image(root / "car(G)" / "car_001.png", 40, 50, 1)
    _image(root / "car(G)" / "car_002.png", 44, 36, 2)
    xa, ya = list(range(1, 11)), list(range(11, 21))
    xb, yb = [3 * v for v in range(10)], [v + 2 for v in range(10)]
    with open(root / "test_pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["imageA", "imageB"] + [f"c{i}" for i in range(40)])
        writer.writerow(["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png",
                         *xa, *ya, *xb, *yb])
    (pair,) = load_pf_willow(root)
    assert pair.category == "car(G)"
    assert pair.source_points[:, 0].tolist() == xa and pair.source_points[:, 1].tolist() == ya
    assert pair.target_points[:, 0].tolist() == xb and pair.target_points[:, 1].tolist() == yb
    assert pair.target_bbox.tolist() == [0, 2, 27, 11]  # the target keypoints' extent
    assert pair.images()[1].shape == (44, 36, 3)
    with pytest.raises(ValueError, match="only the 'test' split"):
        load_pf_willow(root, "val")


@pytest.fixture(scope="module")
def saved_model(tiny_repos, tmp_path_factory):
    torch.manual_seed(0)
    model = DiffusionPerceptionForSemanticCorrespondence({
        "architecture": "DiffusionPerceptionForSemanticCorrespondence",
        "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
        "features": {"taps": ["up_ft.1", "up-level2-repeat1-res-out"], "timesteps": [261]},
        "preprocess": {"size": [64, 64], "crop": "none"},
        "head": {"type": "correspondence"},
    })
    folder = tmp_path_factory.mktemp("models") / "corr"
    model.save_pretrained(folder)
    return folder


def test_evaluate_spair_command_counts_pck_as_the_annotations_say(spair, saved_model, tmp_path):
    assert {"spair71k", "pf-willow", "warped-photos", "stereo", "warped-digits"} <= set(
        list_benchmarks())
    out = tmp_path / "out"
    assert main(["evaluate", str(saved_model), "--benchmark", "spair71k", "--data", str(spair),
                 "--split", "test", "--out", str(out), "--no-progress", "--no-card"]) == 0
    result = json.loads((out / "eval_spair71k_test.json").read_text())
    model = AutoDiffusionPerception.from_pretrained(saved_model)
    right_img, right_box, per_pair, cats = [], [], [], {}
    for name, category, src, tgt, skp, tkp, box in SPAIR_PAIRS:
        source = np.array(Image.open(spair / "JPEGImages" / category / src[0]))
        target = np.array(Image.open(spair / "JPEGImages" / category / tgt[0]))
        found = model.match(source, target, skp, value_range=(0, 255)).points.numpy()
        dist = np.linalg.norm(found - np.asarray(tkp, float), axis=1)
        ok_img = dist <= 0.1 * max(tgt[1], tgt[2])
        ok_box = dist <= 0.1 * max(box[2] - box[0], box[3] - box[1])
        right_img += ok_img.tolist()
        right_box += ok_box.tolist()
        per_pair.append(ok_box.mean())
        cats.setdefault(category, []).extend(ok_box.tolist())
    metrics = result["metrics"]
    assert metrics["pck@0.1_img"] == pytest.approx(np.mean(right_img))
    assert metrics["pck@0.1_bbox"] == pytest.approx(np.mean(right_box))
    assert metrics["pck@0.1_bbox_per_image"] == pytest.approx(np.mean(per_pair))
    for category, values in cats.items():
        assert result["details"]["per_category"][category]["pck@0.1_bbox"] == pytest.approx(
            np.mean(values))
    assert result["num_samples"] == 3 and result["details"]["num_keypoints"] == 6


def test_dift_preset_matches_through_the_correspondence_model(tiny_repos):
    config = preset_config("dift-sd21", repo_id=str(tiny_repos["sd2"]), size=(64, 64))
    config.features.noise.ensemble = 2
    extractor = AutoDiffusionPerception.from_config(config)
    model = as_correspondence_model(extractor)
    assert isinstance(model, DiffusionPerceptionForSemanticCorrespondence)
    assert model.backbone.unet is extractor.backbone.unet  # shared, not copied
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images).embeddings, extractor(images)["up_ft.1"])
    out = model.match(images[0], images[1], [[3, 4], [60, 50]])
    assert out.points.shape == (2, 2) and out.scores.shape == (2,)


def test_other_models_are_refused(tiny_repos):
    from diffperception import DiffusionPerceptionForImageClassification

    classifier = DiffusionPerceptionForImageClassification.from_diffusers(
        tiny_repos["sd1"], taps=["up_ft.1"], labels=["a", "b"], size=(64, 64))
    with pytest.raises(ValueError, match="not a DiffusionPerceptionForImageClassification"):
        as_correspondence_model(classifier)


@pytest.mark.parametrize("name,options", [
    ("warped-photos", {"num_pairs": 6, "warp": "affine", "size": 96}),
    ("warped-photos", {"num_pairs": 6, "warp": "tps", "size": 96}),
    ("stereo", {"size": 200}),
    ("warped-digits", {"num_pairs": 20}),
])
def test_offline_ground_truth_agrees_on_the_pixels(name, options):
    """At true matches the two images show (nearly) the same colour; at shuffled ones they do
    not: the warps and the disparity are applied the right way round."""
    pytest.importorskip("skimage")
    pairs = get_benchmark(name).pairs("builtin", "test", 0, **options)
    true, shuffled = [], []
    rng = np.random.default_rng(0)
    for pair in pairs:
        source, target = (im.astype(float) for im in pair.images())
        sp = pair.source_points.round().astype(int)
        tp = pair.target_points.round().astype(int)
        a = source[sp[:, 1], sp[:, 0]]
        true.append(np.abs(a - target[tp[:, 1], tp[:, 0]]).mean(1))
        other = tp[rng.permutation(len(tp))]
        shuffled.append(np.abs(a - target[other[:, 1], other[:, 0]]).mean(1))
    true, shuffled = np.concatenate(true), np.concatenate(shuffled)
    assert len(true) >= 20
    assert np.median(true) < 0.35 * np.median(shuffled)
