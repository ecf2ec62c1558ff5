"""Each matching benchmark on a tiny replica of its data set's own file layout, written here:
ComVG (CSV + vg_concept/), Winoground (examples.jsonl + images/), RefCOCOg (refer's
refs(google).p + COCO train2014/), VQAv2 (the official question / annotation JSON + val2014/).
The scorer is the colour matcher of conftest.py, so every figure is counted by hand."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest

from conftest import solid
from diffperception.data.matching import (load_comvg, load_refcocog, load_vqav2_matching,
                                          load_winoground)
from diffperception.evaluation import get_benchmark, list_benchmarks

RED, GREEN, BLUE, BLACK = (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)


def test_the_five_matching_benchmarks_are_registered():
    assert {"comvg", "winoground", "refcocog", "vqav2", "digit-pairs"} <= set(list_benchmarks())


# ------------------------------------------------------------------------------- ComVG

@pytest.fixture
def comvg_root(tmp_path):
    images = tmp_path / "vg_concept"
    images.mkdir()
    for image_id, rgb in {1: RED, 2: BLUE, 3: (1, 0, 1), 4: GREEN}.items():
        solid(rgb).save(images / f"{image_id}.jpg", quality=100)
    rows = [  # sentence, pos, neg, type -> outcome under the colour matcher
        ("a red kite", 1, 2, "subject"),      # red 1 vs 0: right
        ("a blue kite", 2, 4, "subject"),     # blue 1 vs 0: right
        ("a blue cup", 3, 2, "object"),       # blue 1 vs 1: tie, wrong
        ("a green cup", 4, 1, "object"),      # green 1 vs 0: right
        ("a dog runs", 1, 2, "verb"),         # no colour: 0 vs 0, tie, wrong
    ]
    with (tmp_path / "compositional_visual_genome.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "pos_triplet", "neg_triplet", "pos_image_id",
                         "neg_image_id", "neg_value"])
        for sentence, pos, neg, kind in rows:
            writer.writerow([sentence, "x,y,z", "x,y,w", pos, neg, kind])
    return tmp_path


def test_comvg_loader_reads_the_csv_and_image_folder(comvg_root):
    rows = load_comvg(comvg_root)
    assert [r.type for r in rows] == ["subject", "subject", "object", "object", "predicate"]
    assert rows[2].positive_image == comvg_root / "vg_concept" / "3.jpg"
    assert [r.sentence for r in load_comvg(comvg_root, neg_type="object")] == ["a blue cup",
                                                                               "a green cup"]


def test_comvg_benchmark_per_type_ties_wrong_and_both_aggregates(comvg_root, colour_matcher):
    result = get_benchmark("comvg").run(colour_matcher, comvg_root, "test", image_size=8,
                                        progress=False)
    assert result.num_samples == 5
    assert result.metrics["subject"] == 1.0 and result.metrics["object"] == 0.5
    assert result.metrics["predicate"] == 0.0
    assert result.metrics["accuracy"] == pytest.approx(3 / 5)
    assert result.metrics["mean_per_type"] == pytest.approx(0.5)
    assert result.details["ties"] == 2
    # one call per row: both images, the one sentence
    assert colour_matcher.calls[0] == ((2, 3, 8, 8), ["a red kite"])


def test_comvg_missing_pieces_are_clear_errors(tmp_path, comvg_root):
    with pytest.raises(FileNotFoundError, match="compositional_visual_genome.csv"):
        load_comvg(tmp_path / "vg_concept")
    with pytest.raises(ValueError, match="splits"):
        load_comvg(comvg_root, "validation")
    (comvg_root / "bad.csv").write_text("sentence,pos_image_id\nx,1\n")
    with pytest.raises(ValueError, match="neg_value"):
        load_comvg(comvg_root, csv_name="bad.csv")


# -------------------------------------------------------------------------- Winoground

@pytest.fixture
def winoground_root(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    examples = [  # (image_0, image_1, caption_0, caption_1, tag)
        (RED, BLUE, "a red box", "a blue box", "Object"),                       # all right
        ((0.2, 0.4, 0), (1, 0.6, 0), "green leaf", "red leaf", "Relation"),     # text only
        ((1, 0, 1), RED, "a blue car", "a red car", "Relation"),                # ties: none
    ]
    lines = []
    for k, (im0, im1, c0, c1, tag) in enumerate(examples):
        solid(im0).save(data / "images" / f"ex_{k}_img_0.png")
        solid(im1).save(data / "images" / f"ex_{k}_img_1.png")
        lines.append(json.dumps({"id": k, "image_0": f"ex_{k}_img_0", "image_1": f"ex_{k}_img_1",
                                 "caption_0": c0, "caption_1": c1, "tag": tag,
                                 "secondary_tag": "", "num_main_preds": 1,
                                 "collapsed_tag": tag}))
    (data / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_winoground_loader_reads_examples_jsonl_and_images(winoground_root):
    examples = load_winoground(winoground_root)
    assert [e.id for e in examples] == [0, 1, 2]
    assert examples[1].image_1 == winoground_root / "data" / "images" / "ex_1_img_1.png"
    assert examples[1].tag == "Relation" and examples[1].extra["num_main_preds"] == 1


def test_winoground_benchmark_text_image_group_with_ties(winoground_root, colour_matcher):
    # ex 1: text I0: green .4 > red .2, I1: red 1 > green .6 (right); image: green I0 .4 < I1 .6
    # ex 2: text I0: blue 1 vs red 1 tie (wrong); image: red I1 1 vs I0 1 tie (wrong)
    result = get_benchmark("winoground").run(colour_matcher, winoground_root, image_size=8,
                                             progress=False)
    assert result.metrics == {"text_score": pytest.approx(2 / 3),
                              "image_score": pytest.approx(1 / 3),
                              "group_score": pytest.approx(1 / 3)}
    assert result.details["per_tag"]["Object"]["group_score"] == 1.0
    assert result.details["per_tag"]["Relation"] == {"text_score": 0.5, "image_score": 0.0,
                                                     "group_score": 0.0}


def test_winoground_missing_image_is_a_clear_error(winoground_root):
    (winoground_root / "data" / "images" / "ex_2_img_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="ex_2_img_1.png"):
        load_winoground(winoground_root)


# ---------------------------------------------------------------------------- RefCOCOg

@pytest.fixture
def refcocog_root(tmp_path):
    images = tmp_path / "images" / "train2014"
    images.mkdir(parents=True)
    colours = {1: RED, 2: BLUE, 3: GREEN, 4: BLACK}
    for image_id, rgb in colours.items():
        solid(rgb).save(images / f"COCO_train2014_{image_id:012d}.jpg", quality=100)
    # val refs in file order; groups of 10 -> group 1 = refs 0..9, group 2 = refs 10..19,
    # refs 20..21 dropped. A train ref in between is skipped.
    sentences = (["the red one"] + [f"thing {i}" for i in range(9)]              # R@1 hit
                 + ["the blue one", "a blue cup", "blue sky", "the blue bag", "blue car",
                    "blue hat", "x", "y", "z", "w"]                             # 5 ties: miss
                 + ["red", "red"])
    image_of = [1] * 10 + [2] * 10 + [1, 1]
    refs = [{"ref_id": i, "ann_id": 100 + i, "image_id": image_of[i], "split": "val",
             "category_id": 1, "file_name": f"COCO_train2014_{image_of[i]:012d}_{100 + i}.jpg",
             "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": i}],
             "sent_ids": [i]} for i, s in enumerate(sentences)]
    refs.insert(5, {**refs[0], "split": "train", "sentences": [{"sent": "train ref"}]})
    (tmp_path / "refcocog").mkdir()
    with (tmp_path / "refcocog" / "refs(google).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return tmp_path


def test_refcocog_loader_groups_ten_consecutive_refs(refcocog_root):
    groups = load_refcocog(refcocog_root, "val")
    assert len(groups) == 2 and all(len(g.texts) == 10 for g in groups)
    assert groups[1].texts[0] == "the blue one" and "train ref" not in groups[0].texts
    assert groups[1].image.name == "COCO_train2014_000000000002.jpg"


def test_refcocog_benchmark_recall_at_1_and_5(refcocog_root, colour_matcher):
    # group 1: the red image, only "the red one" names red -> rank 0.
    # group 2: the blue image, "the blue one" ties with 5 other blue texts -> rank 5: miss at 5
    result = get_benchmark("refcocog").run(colour_matcher, refcocog_root, "val", image_size=8,
                                           progress=False)
    assert result.metrics == {"recall@1": 0.5, "recall@5": 0.5}
    assert colour_matcher.calls[0][0] == (1, 3, 8, 8) and len(colour_matcher.calls[0][1]) == 10


def test_refcocog_refuses_a_pickle_that_names_a_class(tmp_path):
    (tmp_path / "refcocog").mkdir()
    (tmp_path / "train2014").mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("never run",))

    with (tmp_path / "refcocog" / "refs(google).p").open("wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(ValueError, match="builtins.print"):
        load_refcocog(tmp_path)


# ------------------------------------------------------------------------------- VQAv2

@pytest.fixture
def vqa_root(tmp_path):
    images = tmp_path / "val2014"
    images.mkdir()
    colours = {1: RED, 2: BLUE, **{i: BLACK for i in range(3, 13)}}
    for image_id, rgb in colours.items():
        solid(rgb).save(images / f"COCO_val2014_{image_id:012d}.jpg", quality=100)
    animals = ["cat", "dog", "cow", "owl", "elk", "yak", "eel", "bat", "ant"]
    qa = ([(1, "what colour is it?", "red", "other"), (2, "what colour is it?", "blue", "other")]
          + [(3 + i, "what animal is it?", a, "other") for i, a in enumerate(animals)]
          + [(1, "is it red?", "yes", "yes/no"), (3, "is it a cat?", "yes", "yes/no"),
             (4, "how many cats?", "2", "number")])
    questions = [{"image_id": im, "question": q, "question_id": 1000 + k}
                 for k, (im, q, _, _) in enumerate(qa)]
    annotations = [{"image_id": im, "question_id": 1000 + k, "answer_type": kind,
                    "multiple_choice_answer": a, "question_type": "what",
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": 1}]}
                   for k, (im, _, a, kind) in enumerate(qa)]
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"questions": questions, "data_subtype": "val2014"}))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"annotations": annotations, "data_subtype": "val2014"}))
    return tmp_path


def test_vqav2_loader_builds_seeded_candidates(vqa_root):
    items = load_vqav2_matching(vqa_root, "val", seed=0)
    assert [i.kind for i in items] == ["other"] * 11 + ["binary"] * 2   # the number one left out
    first = items[0]
    assert first.texts[0] == "what colour is it? red" and len(set(first.texts)) == 10
    binary = items[11]
    assert binary.texts == ["is it red? yes"] and len(set(binary.images)) == 10
    assert binary.images[0].name == "COCO_val2014_000000000001.jpg"
    again = load_vqav2_matching(vqa_root, "val", seed=0)
    assert [i.texts for i in again] == [i.texts for i in items]
    other_seed = load_vqav2_matching(vqa_root, "val", seed=1)
    assert [i.texts for i in other_seed] != [i.texts for i in items]


def test_vqav2_benchmark_binary_other_all(vqa_root, colour_matcher):
    # other: the two colour questions hit (only their own answer names the image's colour);
    # the nine animal questions on black images tie everywhere -> rank 9, miss at 1 and 5.
    # binary: "is it red? yes" -> only the red image scores 1 -> hit; "is it a cat? yes" ties.
    result = get_benchmark("vqav2").run(colour_matcher, vqa_root, "val", image_size=8,
                                        progress=False)
    m = result.metrics
    assert m["other_recall@1"] == pytest.approx(2 / 11) and m["other_recall@5"] == pytest.approx(2 / 11)
    assert m["binary_recall@1"] == 0.5 and m["binary_recall@5"] == 0.5
    assert m["all_recall@1"] == pytest.approx(3 / 13)
    assert result.details["counts"] == {"binary": 2, "other": 11, "all": 13}


# ---------------------------------------------------------------------- digit pairs

class PairOracle:
    """Knows each swap image's layout (looked up by its bytes); scores 1 for its caption."""

    def __init__(self, examples, flip=False):
        self.layout = {}
        for ex in examples:
            self.layout[np.asarray(ex["image_0"]).tobytes()] = ex["caption_0"]
            self.layout[np.asarray(ex["image_1"]).tobytes()] = ex["caption_1"]
        self.flip = flip

    def score(self, images, texts):
        import torch

        out = torch.zeros(len(images), len(texts))
        for i, image in enumerate(images):
            own = self.layout[image.numpy().tobytes()]
            for j, text in enumerate(texts):
                out[i, j] = float((text == own) != self.flip)
        return out


def test_digit_pairs_benchmark_hands_each_image_with_its_own_caption_order():
    from diffperception.data import digit_pair_swaps

    examples = digit_pair_swaps(6, seed=0)
    bench = get_benchmark("digit-pairs")
    right = bench.run(PairOracle(examples), "digit-pairs", "test", num_examples=6, progress=False)
    assert right.metrics == {"text_score": 1.0, "image_score": 1.0, "group_score": 1.0}
    wrong = bench.run(PairOracle(examples, flip=True), "digit-pairs", "test", num_examples=6,
                      progress=False)
    assert wrong.metrics == {"text_score": 0.0, "image_score": 0.0, "group_score": 0.0}
    with pytest.raises(ValueError, match="--data digit-pairs"):
        bench.run(PairOracle(examples), "/some/folder", "test", progress=False)


def test_a_matcher_returning_the_wrong_shape_is_a_clear_error(winoground_root):
    class Transposed:
        def score(self, images, texts):
            import torch

            return torch.zeros(len(texts) + 1, len(images))

    with pytest.raises(ValueError, match=r"\(num_images, num_texts\)"):
        get_benchmark("winoground").run(Transposed(), winoground_root, image_size=8,
                                        progress=False)


# ---------------------------------------------------- the CLI with the matching model

def test_evaluate_cli_runs_winoground_on_the_matching_preset(winoground_root, tmp_path):
    """``diffperception evaluate --preset discffusion-digits --benchmark winoground``: the JSON
    holds the text / image / group scores of the model's own ``score`` on the replica's
    images, recomputed here example by example."""
    from diffperception import AutoDiffusionPerception
    from diffperception.cli import main
    from diffperception.data.matching import load_rgb

    out = tmp_path / "out"
    assert main(["evaluate", "--preset", "discffusion-digits", "--benchmark", "winoground",
                 "--data", str(winoground_root), "--benchmark-option", "image_size=32",
                 "--out", str(out), "--no-progress"]) == 0
    written = json.loads((out / "eval_winoground_test.json").read_text())
    model = AutoDiffusionPerception.from_preset("discffusion-digits").eval()
    table = []
    for ex in load_winoground(winoground_root):
        images = np.stack([load_rgb(ex.image_0, 32), load_rgb(ex.image_1, 32)])
        table.append(model.score(images, [ex.caption_0, ex.caption_1]).numpy())
    np.testing.assert_allclose(written["details"]["scores"], np.stack(table), atol=1e-5)
    from diffperception.evaluation.matching import winoground_scores

    assert written["metrics"] == pytest.approx(winoground_scores(np.stack(table)))
