"""CV-Bench (nyu-visionx/CV-Bench): 2D and 3D multiple-choice questions (docs/tasks.md).

Data: ``data_dir`` directly holds, per split, ``test_2d.jsonl`` / ``test_3d.jsonl`` with the images under
``img/`` (each row's ``filename``), or ``test_2d.parquet`` / ``test_3d.parquet`` with the image in column
``image`` (the dataset card's ``2D``/``3D`` configs); JSON Lines wins when both are there. Fields used:
``idx``, ``type``, ``task``, ``prompt``, ``choices``, ``answer`` (``"(C)"``), ``source`` (ADE20K, COCO or
Omni3D), ``filename``. ``split`` = ``"2D"`` or ``"3D"``; ``None`` loads both. Example ids are
``<type>/<idx>``; the group is the image.

Prompt: the row's ``prompt`` (question + ``(A) ...`` choices) + ``\\nAnswer with the option's letter from the
given choices directly.``, LLaVA-1.5's multiple-choice suffix as Cambrian uses it
(cambrian:eval/eval/ade/ade_eval.py; LLaVA:docs/Evaluation.md), not lmms-eval's "Note: ..." preamble. Options
are the letters of the row's choices, parsed with :func:`extract_letter` (lmms-eval's CV-Bench parser reads
only the first character; ours also reads "The answer is B").

Scoring, the card's formula: accuracy per source; ``2d`` = mean(ADE20K, COCO), ``3d`` = Omni3D, ``overall``
(headline) = mean(2d, 3d). When a split or ``limit`` leaves a source out, each mean runs over the sources
present, so with ``split="2D"`` ``overall`` equals ``2d``. ``accuracy`` is the plain micro accuracy that
lmms-eval reports as ``cv_bench_acc``. Stderrs are clustered by image and combined over the independent
sources.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.tasks._answers import letter_option
from workers.tasks._base import Example, ImageRef, Task, TaskSpec, check_split, keep_first_groups
from workers.tasks._errors import DataError
from workers.tasks._io import Record, get_field, read_parquet, read_records, unique_ids
from workers.tasks._stats import clustered_mean, combined_stderr

__all__ = ["load_cv_bench", "SPEC", "SPLITS", "SOURCES"]

SPEC = TaskSpec(
    name="cv_bench",
    group="vision-centric",
    metric="overall",
    direction="maximize",
    answer_mode="options",
    max_new_tokens=16,
)
SPLITS: tuple[str, ...] = ("2D", "3D")
SOURCES: Mapping[str, str] = {"ADE20K": "2d", "COCO": "2d", "Omni3D": "3d"}  # source -> dimension
SUFFIX = "\nAnswer with the option's letter from the given choices directly."
COLUMNS = ("idx", "type", "task", "prompt", "choices", "answer", "source", "filename")


def load_cv_bench(data_dir: Path, *, split: str | None = None, limit: int | None = None) -> Task:
    """CV-Bench from ``data_dir`` (see the module docstring); ``limit`` counts images."""
    rows: list[tuple[Record, ImageRef]] = []
    formats: dict[str, str] = {}
    for name in check_split("cv_bench", split, SPLITS):
        jsonl, parquet = data_dir / f"test_{name.lower()}.jsonl", data_dir / f"test_{name.lower()}.parquet"
        if jsonl.is_file():
            formats[name] = "jsonl"
            records = read_records(jsonl)
            images = [ImageRef(data_dir / get_field(r, "filename")) for r in records]
        elif parquet.is_file():
            formats[name] = "parquet"
            records = read_parquet(parquet, columns=COLUMNS)
            images = [ImageRef(parquet, row=r.number, column="image") for r in records]
        else:
            raise DataError(f"{data_dir}: no {jsonl.name} or {parquet.name} for CV-Bench split {name}")
        rows.extend(zip(records, images, strict=True))
    examples = [_example(record, image) for record, image in rows]
    unique_ids((example.id, record) for example, (record, _) in zip(examples, rows, strict=True))
    return Task(
        spec=SPEC,
        examples=keep_first_groups(examples, limit),
        text=_text,
        scorer=_score,
        option_parser=letter_option,
        metadata={"formats": formats},
    )


def _example(record: Record, image: ImageRef) -> Example:
    choices = get_field(record, "choices", (list, tuple))
    if not 2 <= len(choices) <= 26:
        raise record.error(f"expected 2 to 26 choices, got {len(choices)}")
    letters = tuple(string.ascii_uppercase[: len(choices)])
    answer = get_field(record, "answer").strip().strip("()").upper()
    if answer not in letters:
        raise record.error(f"unknown answer letter {record['answer']!r} for {len(choices)} choices")
    source = get_field(record, "source")
    if source not in SOURCES:
        raise record.error(f"unknown source {source!r} (expected {', '.join(SOURCES)})")
    return Example(
        id=f"{get_field(record, 'type')}/{get_field(record, 'idx', (int, str))}",
        group=get_field(record, "filename"),
        question=get_field(record, "prompt"),
        image=image,
        options=letters,
        answer=answer,
        meta={"source": source, "task": get_field(record, "task")},
    )


def _text(example: Example) -> str:
    return example.question + SUFFIX


def _score(examples: Sequence[Example], predictions: Mapping[str, str]) -> dict[str, float]:
    parsed = [letter_option(e, predictions[e.id]) for e in examples]
    correct = [float(p == e.answer) for p, e in zip(parsed, examples, strict=True)]
    metrics: dict[str, float] = {}
    metrics["accuracy"], metrics["accuracy_stderr"] = clustered_mean([e.group for e in examples], correct)
    per_source: dict[str, tuple[float, float]] = {}
    for source in SOURCES:
        rows = [(e.group, c) for e, c in zip(examples, correct, strict=True) if e.meta["source"] == source]
        if rows:
            per_source[source] = clustered_mean([g for g, _ in rows], [c for _, c in rows])
            metrics[source], metrics[f"{source}_stderr"] = per_source[source]
    weights: dict[str, float] = {}
    dimensions = sorted({SOURCES[s] for s in per_source})
    for dimension in dimensions:
        members = [s for s in per_source if SOURCES[s] == dimension]
        metrics[dimension] = sum(per_source[s][0] for s in members) / len(members)
        for source in members:
            weights[source] = 1 / len(members) / len(dimensions)
    metrics["overall"] = sum(metrics[d] for d in dimensions) / len(dimensions)
    metrics["overall_stderr"] = combined_stderr(list(weights.values()), [per_source[s][1] for s in weights])
    metrics["invalid_rate"] = sum(p is None for p in parsed) / len(parsed)
    return metrics
