"""CHAIR: object hallucination in generated image descriptions (docs/tasks.md).

Prompt: ``Please describe this image in detail.``, generated with ``max_new_tokens`` fixed per sweep (default
512, shikiw/OPERA:chair_eval.py; CHAIR_i is very length-sensitive, docs/tasks.md).

Data (``data_dir`` directly holds it), one of two layouts:

* COCO (shikiw/OPERA:chair.py): ``instances_val2014.json`` and ``captions_val2014.json`` (also looked for
  under ``annotations/``), images in ``val2014/`` (or ``image_dir``). OPERA also merges the
  ``*_train2014.json`` files; they cannot change the ground truth of val2014 images (COCO image ids are
  unique), so they are not read. The images to describe are those of ``image_list`` (a JSON / JSON Lines file
  of ``{"image_id": ...}`` records in OPERA's caption-file format, or a text file of one id a line), else
  every image of ``instances_val2014.json`` in id order. Ground truth per image = node words of its instance
  categories and of its five reference captions, parsed with the same caption parser as the predictions
  (``get_annotations``).
* lmms-eval (HF ``tsunghanwu/mscoco_chair``): ``*.parquet`` (or ``data/*.parquet``) with ``question_id`` (the
  COCO image id), ``gt_object`` (the precomputed ground-truth node words) and ``image``.

``parser`` picks the caption parser (``"builtin"`` default, or ``"nltk"``; see ``_chair_text.py``); it is
recorded in ``task.metadata["caption_parser"]``.

Metrics (``compute_chair``, OPERA's additions included): ``chair_s`` (headline, lower is better) = share of
captions with at least one hallucinated object; ``chair_i`` = hallucinated mentions / all mentions (repeats
count); ``recall`` = sum |GT & mentioned| / sum |GT|; ``mean_words`` = tokens per caption (OPERA's Len x 100).
Fractions, not the x100 OPERA prints. Stderrs are per caption (one caption per image). A corpus with no object
mention has ``chair_i`` NaN (OPERA would divide by zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from var_core.errors import ConfigError
from workers.tasks._base import Example, ImageRef, Task, TaskSpec, check_limit, check_split, keep_first_groups
from workers.tasks._chair_text import CaptionParser, caption_parser, node_word
from workers.tasks._errors import DataError
from workers.tasks._io import Record, get_field, read_json, read_parquet, read_records, read_text
from workers.tasks._stats import ratio, ratio_stderr

__all__ = ["load_chair", "PROMPT", "DEFAULT_MAX_NEW_TOKENS"]

PROMPT = "Please describe this image in detail."
DEFAULT_MAX_NEW_TOKENS = 512


SPEC = TaskSpec(
    name="chair",
    group="hallucination",
    metric="chair_s",
    direction="minimize",
    answer_mode="generate",
    max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    lower_is_better=("chair_s", "chair_i"),
)


def load_chair(
    data_dir: Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    parser: str = "builtin",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    image_list: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> Task:
    """CHAIR from COCO annotations or lmms-eval's parquet (module docstring); ``limit`` counts images."""
    check_split("chair", split, ())
    spec = replace(SPEC, max_new_tokens=max_new_tokens)
    captions = caption_parser(parser)
    parquets = sorted(data_dir.glob("*.parquet")) or sorted((data_dir / "data").glob("*.parquet"))
    if parquets:
        if image_list is not None or image_dir is not None:
            raise ConfigError(
                "chair: image_list and image_dir apply to the COCO layout, not to lmms-eval's parquet"
            )
        examples, layout = _parquet_examples(parquets, limit), "lmms-eval"
    else:
        images = Path(image_dir) if image_dir is not None else data_dir / "val2014"
        listed = _read_image_list(Path(image_list)) if image_list is not None else None
        examples, layout = _coco_examples(data_dir, images, listed, limit, captions), "coco"
    return Task(
        spec=spec,
        examples=examples,
        text=_text,
        scorer=partial(_score, captions),
        metadata={"layout": layout, "caption_parser": captions.name, "wordnet": captions.morphy.source},
    )


def _text(example: Example) -> str:
    return PROMPT


def _parquet_examples(parquets: Sequence[Path], limit: int | None) -> tuple[Example, ...]:
    examples = []
    for record in (r for path in parquets for r in read_parquet(path, columns=("question_id", "gt_object"))):
        image_id = str(get_field(record, "question_id", (int, str))).strip()
        objects = get_field(record, "gt_object", (list, tuple))
        examples.append(
            _example(image_id, ImageRef(record.path, row=record.number), _node_words(record, objects))
        )
    return keep_first_groups(examples, limit)


def _coco_examples(
    data_dir: Path, images: Path, listed: list[str] | None, limit: int | None, captions: CaptionParser
) -> tuple[Example, ...]:
    instances = _read_coco(data_dir, "instances_val2014.json")
    known = sorted(get_field(i, "id", int) for i in _coco_list(instances, "images"))
    ids = listed if listed is not None else [str(i) for i in known]
    unknown = set(ids) - {str(i) for i in known}
    if unknown:
        raise DataError(f"{instances.path}: listed image id(s) not among its images: {sorted(unknown)[:10]}")
    ids = ids[: check_limit(limit)]
    truth = _coco_ground_truth(instances, _read_coco(data_dir, "captions_val2014.json"), set(ids), captions)
    return tuple(
        _example(
            image_id, ImageRef(images / f"COCO_val2014_{int(image_id):012d}.jpg"), truth.get(image_id, ())
        )
        for image_id in ids
    )


def _example(image_id: str, image: ImageRef, truth: Sequence[str]) -> Example:
    return Example(
        id=image_id,
        group=image_id,
        question=PROMPT,
        image=image,
        references=tuple(sorted(set(truth))),
        meta={"image_id": image_id},
    )


def _coco_ground_truth(
    instances: Record, captions_file: Record, ids: set[str], captions: CaptionParser
) -> dict[str, list[str]]:
    """shikiw/OPERA:chair.py ``get_annotations``: instance categories + node words of reference captions.

    OPERA also merges the train2014 files; COCO image ids are unique across train and val, so for the val2014
    images evaluated here they add nothing, and they are not read.
    """
    names = {get_field(c, "id", int): get_field(c, "name") for c in _coco_list(instances, "categories")}
    truth: dict[str, list[str]] = {}
    for annotation in _coco_list(instances, "annotations"):
        image_id = str(get_field(annotation, "image_id", int))
        if image_id in ids:
            category = get_field(annotation, "category_id", int)
            if category not in names:
                raise annotation.error(f"category_id {category} is not among the file's categories")
            truth.setdefault(image_id, []).append(node_word(names[category]))
    for annotation in _coco_list(captions_file, "annotations"):
        image_id = str(get_field(annotation, "image_id", int))
        if image_id in ids:
            truth.setdefault(image_id, []).extend(captions.parse(get_field(annotation, "caption")).node_words)
    return truth


def _read_coco(data_dir: Path, name: str) -> Record:
    """A COCO annotation file, from ``data_dir`` or ``data_dir/annotations``."""
    for path in (data_dir / name, data_dir / "annotations" / name):
        if path.is_file():
            data = read_json(path)
            if not isinstance(data, dict):
                raise DataError(f"{path}: expected a COCO annotation object")
            return Record(data, path=path, unit="", number=1)
    raise DataError(f"{data_dir}: no {name} (nor annotations/{name}) and no lmms-eval *.parquet")


def _coco_list(document: Record, key: str) -> list[Record]:
    items = get_field(document, key, list)
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{document.path} {key} item {number}: expected a JSON object")
    return [
        Record(item, path=document.path, unit=f"{key} item", number=n)
        for n, item in enumerate(items, start=1)
    ]


def _read_image_list(path: Path) -> list[str]:
    """Image ids from OPERA's caption-file format (JSON / JSON Lines of ``{"image_id"}``) or one id a line."""
    if path.suffix in (".json", ".jsonl"):
        ids = [str(get_field(r, "image_id", (int, str))).strip() for r in read_records(path)]
    else:
        ids = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    for number, image_id in enumerate(ids, start=1):
        if not image_id.isdigit():
            raise DataError(f"{path} item {number}: image id {image_id!r} is not a COCO image id")
    ids = [str(int(image_id)) for image_id in ids]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: an image id is listed twice")
    return ids


def _node_words(record: Record, objects: Sequence[object]) -> list[str]:
    if not all(isinstance(o, str) for o in objects):
        raise record.error("field 'gt_object' should be a list of object words")
    try:
        return [node_word(str(o)) for o in objects]
    except DataError as e:
        raise record.error(str(e)) from e


def _score(
    captions: CaptionParser, examples: Sequence[Example], predictions: Mapping[str, str]
) -> dict[str, float]:
    """shikiw/OPERA:chair.py ``compute_chair`` over the predictions, one caption per example."""
    hallucinated, mentions, any_hallucinated, recalled, truths, words = [], [], [], [], [], []
    for example in examples:
        parsed = captions.parse(predictions[example.id])
        truth = set(example.references)
        wrong = [w for w in parsed.node_words if w not in truth]
        hallucinated.append(float(len(wrong)))
        mentions.append(float(len(parsed.node_words)))
        any_hallucinated.append(float(bool(wrong)))
        recalled.append(float(len(truth & set(parsed.node_words))))
        truths.append(float(len(truth)))
        words.append(float(parsed.n_words))
    ones = [1.0] * len(examples)
    return {
        "chair_s": ratio(any_hallucinated, ones),
        "chair_s_stderr": ratio_stderr(any_hallucinated, ones),
        "chair_i": ratio(hallucinated, mentions),
        "chair_i_stderr": ratio_stderr(hallucinated, mentions),
        "recall": ratio(recalled, truths),
        "recall_stderr": ratio_stderr(recalled, truths),
        "mean_words": ratio(words, ones),
    }
