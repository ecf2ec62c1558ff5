"""Loaders for the image-text matching benchmarks, each reading the benchmark's own file layout.

Each loader returns plain records with image *paths* (images are read when scored, by
:func:`load_rgb`). Layouts (``root`` is what ``--data`` names):

- **ComVG** (Discffusion's release): ``root/compositional_visual_genome.csv`` (the test rows;
  ``comvg_train.csv`` for ``split="train"``) with columns ``sentence``, ``pos_image_id``,
  ``neg_image_id``, ``neg_value`` (``subject`` / ``object`` / ``verb``), and the Visual Genome
  images ``root/vg_concept/<image_id>.jpg`` (or ``images_dir``).
- **Winoground** (the public ``facebook/winoground`` data set): ``root/examples.jsonl`` (or
  ``root/data/examples.jsonl``), one JSON object per line with ``id``, ``image_0``,
  ``image_1``, ``caption_0``, ``caption_1``, ``tag``, ``secondary_tag``, ``num_main_preds``,
  ``collapsed_tag``, and ``images/<image_k>.png`` next to it.
- **RefCOCOg** (the ``refer`` toolkit, Google split): ``root/refcocog/refs(google).p`` (a pickle of
  a list of refs with ``image_id``, ``split``, ``sentences`` = ``[{"sent": ...}, ...]``) and COCO
  ``train2014/COCO_train2014_<image_id:012d>.jpg`` under ``root`` (or ``root/images``,
  ``root/images/mscoco/images``, or ``images_dir``). The pickle is read with an unpickler that
  accepts plain containers only (no class is ever constructed from the file).
- **VQAv2** (the official files): ``root/v2_OpenEnded_mscoco_<split>2014_questions.json``,
  ``root/v2_mscoco_<split>2014_annotations.json`` and ``root/<split>2014/COCO_<split>2014_
  <image_id:012d>.jpg`` (or ``images_dir``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["COMVG_TYPES", "ComVGRow", "comvg_type", "RefCOCOgGroup", "VQAItem", "WinogroundExample", "load_comvg",
           "load_refcocog", "load_rgb", "load_vqav2_matching", "load_winoground"]


def load_rgb(path: str | os.PathLike, size: int | Sequence[int] | None = None) -> np.ndarray:
    """An image file as ``(3, H, W)`` float32 in [0, 1], optionally resized (bicubic, aspect
    ignored, as the released code's ``img.resize((512, 512))``).

    Args:
        path: Image file.
        size: ``S`` or ``(H, W)`` pixels; None keeps the file's size.

    Raises:
        FileNotFoundError: No such file.
    """
    from PIL import Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"Image {path} does not exist; check the benchmark's image "
                                "folder (the images_dir option).")
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None:
            h, w = (size, size) if isinstance(size, int) else size
            img = img.resize((int(w), int(h)), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _folder(root: str | os.PathLike, what: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass the {what} folder as --data.")
    return path


def _first_dir(candidates: Sequence[Path], what: str) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"No {what} image folder among {[str(p) for p in candidates]}; pass "
                            "images_dir=<folder>.")


# ---------------------------------------------------------------------------------- ComVG

#: ComVG negative types in the paper's column order (the CSV's ``verb`` is "predicate").
COMVG_TYPES = ("subject", "object", "predicate")
_TYPE_ALIASES = {"subject": "subject", "subjects": "subject", "object": "object",
                 "objects": "object", "predicate": "predicate", "verb": "predicate",
                 "relation": "predicate"}


def comvg_type(value: str) -> str:
    """The ComVG type name of a CSV ``neg_value`` (``verb`` -> ``predicate``).

    Raises:
        ValueError: Not a subject, object or predicate / verb.
    """
    key = str(value).strip().lower()
    if key not in _TYPE_ALIASES:
        raise ValueError(f"ComVG negative type {value!r} is unknown; expected one of "
                         f"{sorted(_TYPE_ALIASES)}.")
    return _TYPE_ALIASES[key]


@dataclass
class ComVGRow:
    """One ComVG row: a sentence, its image and a negative image differing in one ``type``."""

    sentence: str
    positive_image: Path
    negative_image: Path
    type: str
    row: int


def load_comvg(root: str | os.PathLike, split: str = "test", *, csv_name: str | None = None,
               images_dir: str | os.PathLike | None = None,
               neg_type: str = "all") -> list[ComVGRow]:
    """The rows of a ComVG CSV, in file order.

    Args:
        root: Folder with the CSV (and ``vg_concept/``).
        split: ``"test"`` (``compositional_visual_genome.csv``) or ``"train"``
            (``comvg_train.csv``).
        csv_name: Another CSV file name under ``root``.
        images_dir: The image folder (default ``root/vg_concept``, else ``root/images``).
        neg_type: ``"all"`` or one type (``subject`` / ``object`` / ``predicate``).

    Raises:
        FileNotFoundError: Missing folder, CSV or image folder.
        ValueError: Missing columns, an unknown split or type.
    """
    root = _folder(root, "ComVG")
    names = {"test": "compositional_visual_genome.csv", "train": "comvg_train.csv"}
    if csv_name is None and split not in names:
        raise ValueError(f"ComVG has splits {sorted(names)}, not {split!r} (or pass csv_name).")
    path = root / (csv_name or names[split])
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; ComVG's CSV ships in the Discffusion "
                                "release (data/compositional_visual_genome.csv).")
    images = Path(images_dir) if images_dir else _first_dir(
        [root / "vg_concept", root / "images"], "ComVG")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        needed = {"sentence", "pos_image_id", "neg_image_id", "neg_value"}
        if not needed <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} needs the columns {sorted(needed)}; it has "
                             f"{reader.fieldnames}.")
        rows = [ComVGRow(r["sentence"], images / f"{r['pos_image_id']}.jpg",
                         images / f"{r['neg_image_id']}.jpg", comvg_type(r["neg_value"]), i)
                for i, r in enumerate(reader)]
    if neg_type != "all":
        rows = [r for r in rows if r.type == comvg_type(neg_type)]
    return rows


# ----------------------------------------------------------------------------- Winoground

@dataclass
class WinogroundExample:
    """One Winoground example: caption ``i`` describes image ``i``."""

    id: Any
    image_0: Path
    image_1: Path
    caption_0: str
    caption_1: str
    tag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load_winoground(root: str | os.PathLike) -> list[WinogroundExample]:
    """The examples of a Winoground folder (``examples.jsonl`` + ``images/``), in file order.

    Raises:
        FileNotFoundError: No ``examples.jsonl`` under ``root`` or ``root/data``, or an image
            named in it is missing.
        ValueError: A line that is not a JSON object with the Winoground keys.
    """
    root = _folder(root, "Winoground")
    base = next((d for d in (root, root / "data") if (d / "examples.jsonl").is_file()), None)
    if base is None:
        raise FileNotFoundError(f"No examples.jsonl in {root} or {root / 'data'}; download the "
                                "facebook/winoground data set (examples.jsonl and images/).")
    needed = ("id", "image_0", "image_1", "caption_0", "caption_1")
    out = []
    for number, line in enumerate((base / "examples.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or any(k not in record for k in needed):
            raise ValueError(f"{base / 'examples.jsonl'} line {number} lacks one of {needed}.")
        paths = [base / "images" / f"{record[k]}.png" for k in ("image_0", "image_1")]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path} (example {record['id']}) does not exist; "
                                        "unpack images.zip next to examples.jsonl.")
        extra = {k: v for k, v in record.items() if k not in needed and k != "tag"}
        out.append(WinogroundExample(record["id"], paths[0], paths[1], record["caption_0"],
                                     record["caption_1"], str(record.get("tag", "")), extra))
    return out


# ------------------------------------------------------------------------------- RefCOCOg

class _ContainersOnly(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers; refuses every class or function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"The refs file names {module}.{name}; only plain lists, "
                                     "dicts, strings and numbers are read.")


@dataclass
class RefCOCOgGroup:
    """One RefCOCOg query: an image and 10 expressions, the first one its own."""

    image: Path
    texts: list[str]
    positive_index: int = 0


def load_refcocog(root: str | os.PathLike, split: str = "val", *, group_size: int = 10,
                  images_dir: str | os.PathLike | None = None) -> list[RefCOCOgGroup]:
    """RefCOCOg groups: consecutive refs of ``split`` in groups of ``group_size``; the query is
    the group's first image, the candidates the first expression of each of the group's refs
    (the own one first). A trailing incomplete group is dropped.

    Args:
        root: Folder with ``refcocog/refs(google).p`` and the COCO ``train2014`` images.
        split: The refs' ``split`` value (Google split: ``train`` / ``val``).
        group_size: Candidates per query (10 in the paper).
        images_dir: The COCO image folder.

    Raises:
        FileNotFoundError: Missing refs file or image folder.
        ValueError: A malformed refs file, or a split with fewer than ``group_size`` refs.
    """
    root = _folder(root, "RefCOCOg")
    refs_path = next((p for p in (root / "refcocog" / "refs(google).p", root / "refs(google).p")
                      if p.is_file()), None)
    if refs_path is None:
        raise FileNotFoundError(f"No refcocog/refs(google).p under {root} (the refer toolkit's "
                                "layout).")
    try:
        refs = _ContainersOnly(io.BytesIO(refs_path.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"{refs_path} is not a plain refs list: {err}") from None
    images = Path(images_dir) if images_dir else _first_dir(
        [root / "train2014", root / "images" / "train2014",
         root / "images" / "mscoco" / "images" / "train2014"], "COCO train2014")
    chosen = [r for r in refs if isinstance(r, dict) and r.get("split") == split]
    if len(chosen) < group_size:
        raise ValueError(f"{refs_path} has {len(chosen)} refs in split {split!r}, fewer than one "
                         f"group of {group_size}.")
    groups = []
    for start in range(0, len(chosen) - group_size + 1, group_size):
        block = chosen[start:start + group_size]
        image = images / f"COCO_train2014_{int(block[0]['image_id']):012d}.jpg"
        groups.append(RefCOCOgGroup(image, [str(r["sentences"][0]["sent"]) for r in block]))
    return groups


# ---------------------------------------------------------------------------------- VQAv2

@dataclass
class VQAItem:
    """A VQAv2-as-matching query. ``kind == "other"``: one image, ``texts`` candidates
    ("question answer"); ``kind == "binary"``: one text, ``images`` candidates. The positive is
    at ``positive_index`` (0)."""

    kind: str
    question_id: int
    images: list[Path]
    texts: list[str]
    positive_index: int = 0


def _vqa_json(root: Path, split: str) -> tuple[list[dict], dict[int, dict]]:
    q_path = root / f"v2_OpenEnded_mscoco_{split}2014_questions.json"
    a_path = root / f"v2_mscoco_{split}2014_annotations.json"
    for path in (q_path, a_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (the official VQAv2 file names).")
    questions = json.loads(q_path.read_text())["questions"]
    answers = {a["question_id"]: a for a in json.loads(a_path.read_text())["annotations"]}
    return questions, answers


def load_vqav2_matching(root: str | os.PathLike, split: str = "val", *, num_candidates: int = 10,
                        limit: int | None = None, seed: int = 0,
                        images_dir: str | os.PathLike | None = None) -> list[VQAItem]:
    """VQAv2 as matching (S002 Table 1): "other" questions rank ``num_candidates`` texts
    ``"<question> <answer>"`` (the annotated ``multiple_choice_answer`` and wrong answers drawn
    from other "other" questions) for the image; yes/no ("binary") questions rank
    ``num_candidates`` images (the question's own and others drawn from the split) for the text
    ``"<question> <answer>"``. "number" questions are left out, as in the paper. Draws are
    seeded, so a ``(root, split, seed)`` always gives the same items.

    Raises:
        FileNotFoundError: Missing JSON files or image folder.
        ValueError: Too few distinct answers or images for the candidates.
    """
    root = _folder(root, "VQAv2")
    questions, answers = _vqa_json(root, split)
    images = Path(images_dir) if images_dir else _first_dir(
        [root / f"{split}2014", root / "images" / f"{split}2014"], f"COCO {split}2014")

    def path(image_id: int) -> Path:
        return images / f"COCO_{split}2014_{int(image_id):012d}.jpg"

    rng = np.random.default_rng(seed)
    other_answers = sorted({answers[q["question_id"]]["multiple_choice_answer"]
                            for q in questions if answers[q["question_id"]]["answer_type"] == "other"})
    image_ids = sorted({q["image_id"] for q in questions})
    if len(image_ids) < num_candidates:
        raise ValueError(f"{split} has {len(image_ids)} images, fewer than {num_candidates}.")
    items = []
    for q in questions[: limit if limit is not None else len(questions)]:
        ann = answers[q["question_id"]]
        answer, text = ann["multiple_choice_answer"], q["question"]
        if ann["answer_type"] == "other":
            pool = [a for a in other_answers if a != answer]
            if len(pool) < num_candidates - 1:
                raise ValueError(f"{split} has {len(pool) + 1} distinct 'other' answers, fewer "
                                 f"than {num_candidates}.")
            wrong = rng.choice(len(pool), num_candidates - 1, replace=False)
            texts = [f"{text} {answer}"] + [f"{text} {pool[i]}" for i in wrong]
            items.append(VQAItem("other", q["question_id"], [path(q["image_id"])], texts))
        elif ann["answer_type"] == "yes/no":
            pool = [i for i in image_ids if i != q["image_id"]]
            wrong = rng.choice(len(pool), num_candidates - 1, replace=False)
            ims = [path(q["image_id"])] + [path(pool[i]) for i in wrong]
            items.append(VQAItem("binary", q["question_id"], ims, [f"{text} {answer}"]))
    return items
