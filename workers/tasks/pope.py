"""POPE: yes/no object-existence questions in three splits (docs/tasks.md).

Data: ``data_dir`` directly holds ``coco_pope_{random,popular,adversarial}.json`` (JSON Lines despite
``.json``, AoiDragon/POPE:output/coco/*; tests/data/pope has them at the commit LLaVA's numbers use).
``dataset="aokvqa"`` or ``"gqa"`` reads the seem-style ``{dataset}_pope_seem_{split}.json`` files instead (one
JSON array each, AoiDragon/POPE:output/seem/*); both file shapes are accepted whatever their name. Each record
has ``question_id``, ``image``, ``text``, ``label`` (yes/no). Images live elsewhere: ``image_dir`` (default
``data_dir/val2014`` when it exists, else ``data_dir``) holds the file names of ``image``.

``split`` picks one file and keeps its ``question_id`` as example id; ``split=None`` loads all three with ids
``<split>/<question_id>``. The group key is the image, across splits.

Prompt: ``{question}\\nAnswer the question using a single word or phrase.`` for both model families
(LLaVA-1.5's and lmms-eval's POPE prompt, LLaVA:docs/Evaluation.md). We do not switch to VLMEvalKit's Qwen2-VL
suffix ``" Please answer yes or no."``, so that the two families see the same question; the options ``("Yes",
"No")`` are scored on their first-token logits either way.

Scoring: LLaVA's eval_pope.py, per split: answers parsed by :func:`pope_yes_no` (anything not negated is
"yes"), TP/FP/TN/FN, accuracy, precision, recall, F1 and ``yes_ratio`` = share of *predicted* yes. One split:
plain keys (``f1``, ...). All splits: ``<split>/<metric>`` per split, and the plain keys are the mean over the
three splits (``f1`` as LLaVA reports POPE); ``pooled_f1`` pools all questions instead (for comparison only).
Precision or recall with a zero denominator is NaN; F1 = 2TP / (2TP + FP + FN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from var_core.errors import ConfigError
from workers.tasks._answers import pope_yes_no
from workers.tasks._base import Example, ImageRef, Task, TaskSpec, check_split, keep_first_groups
from workers.tasks._io import Record, get_field, read_records, unique_ids
from workers.tasks._stats import clustered_mean, combined_stderr, ratio, ratio_stderr

__all__ = ["load_pope", "SPEC", "SPLITS", "DATASETS"]

SPEC = TaskSpec(
    name="pope",
    group="hallucination",
    metric="f1",
    direction="maximize",
    answer_mode="options",
    max_new_tokens=16,
)
SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
DATASETS: Mapping[str, str] = {
    "coco": "coco_pope_{split}.json",
    "aokvqa": "aokvqa_pope_seem_{split}.json",
    "gqa": "gqa_pope_seem_{split}.json",
}
SUFFIX = "\nAnswer the question using a single word or phrase."
_SPLIT_METRICS = ("f1", "accuracy", "precision", "recall", "yes_ratio")


def load_pope(
    data_dir: Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    dataset: str = "coco",
    image_dir: str | Path | None = None,
) -> Task:
    """POPE from ``data_dir`` (see the module docstring); ``limit`` counts images."""
    splits = check_split("pope", split, SPLITS)
    if dataset not in DATASETS:
        raise ConfigError(f"pope dataset={dataset!r} is not one of {', '.join(DATASETS)}")
    images = Path(image_dir) if image_dir is not None else _default_image_dir(data_dir)
    examples: list[Example] = []
    for name in splits:
        path = data_dir / DATASETS[dataset].format(split=name)
        records = read_records(path)
        unique_ids((str(get_field(r, "question_id", (int, str))), r) for r in records)
        prefix = "" if split is not None else f"{name}/"
        examples.extend(_example(r, split=name, prefix=prefix, images=images) for r in records)
    return Task(
        spec=SPEC,
        examples=keep_first_groups(examples, limit),
        text=_text,
        scorer=_score,
        option_parser=_parse_option,
        metadata={"dataset": dataset, "splits": splits, "image_dir": str(images)},
    )


def _default_image_dir(data_dir: Path) -> Path:
    return data_dir / "val2014" if (data_dir / "val2014").is_dir() else data_dir


def _example(record: Record, *, split: str, prefix: str, images: Path) -> Example:
    question_id = get_field(record, "question_id", (int, str))
    image = get_field(record, "image")
    label = get_field(record, "label").strip().lower()
    if label not in ("yes", "no"):
        raise record.error(f"unknown label {record['label']!r} (expected yes or no)")
    return Example(
        id=f"{prefix}{question_id}",
        group=image,
        question=get_field(record, "text"),
        image=ImageRef(images / image),
        options=("Yes", "No"),
        answer="Yes" if label == "yes" else "No",
        meta={"split": split, "question_id": question_id},
    )


def _text(example: Example) -> str:
    return example.question + SUFFIX


def _parse_option(example: Example, raw: str) -> str:
    return "Yes" if pope_yes_no(raw) == "yes" else "No"


def _score(examples: Sequence[Example], predictions: Mapping[str, str]) -> dict[str, float]:
    splits = list(dict.fromkeys(e.meta["split"] for e in examples))
    per_split = {
        name: _split_metrics([e for e in examples if e.meta["split"] == name], predictions) for name in splits
    }
    if len(splits) == 1:
        return per_split[splits[0]]
    metrics = {f"{name}/{key}": value for name, values in per_split.items() for key, value in values.items()}
    for key in _SPLIT_METRICS:
        metrics[key] = sum(values[key] for values in per_split.values()) / len(splits)
    for key in ("f1", "accuracy"):
        stderrs = [values[f"{key}_stderr"] for values in per_split.values()]
        metrics[f"{key}_stderr"] = combined_stderr([1 / len(splits)] * len(splits), stderrs)
    pooled = _split_metrics(examples, predictions)
    metrics["pooled_f1"], metrics["pooled_f1_stderr"] = pooled["f1"], pooled["f1_stderr"]
    return metrics


def _split_metrics(examples: Sequence[Example], predictions: Mapping[str, str]) -> dict[str, float]:
    """LLaVA:llava/eval/eval_pope.py ``eval_pope`` for one split, with clustered F1 and accuracy stderrs."""
    said_yes = [_parse_option(e, predictions[e.id]) == "Yes" for e in examples]
    is_yes = [e.answer == "Yes" for e in examples]
    cells = {"tp": (True, True), "fp": (True, False), "tn": (False, False), "fn": (False, True)}
    counts = {
        k: sum(p == pv and t == tv for p, t in zip(said_yes, is_yes, strict=True))
        for k, (pv, tv) in cells.items()
    }
    tp, fp, tn, fn = (counts[k] for k in ("tp", "fp", "tn", "fn"))
    f1_num, f1_den = _per_group_f1_terms(examples, said_yes, is_yes)
    accuracy, accuracy_stderr = clustered_mean(
        [e.group for e in examples], [float(p == t) for p, t in zip(said_yes, is_yes, strict=True)]
    )
    return {
        "f1": ratio(f1_num, f1_den),
        "f1_stderr": ratio_stderr(f1_num, f1_den),
        "accuracy": accuracy,
        "accuracy_stderr": accuracy_stderr,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "yes_ratio": sum(said_yes) / len(said_yes),
        **{k: float(v) for k, v in counts.items()},
    }


def _per_group_f1_terms(
    examples: Sequence[Example], said_yes: Sequence[bool], is_yes: Sequence[bool]
) -> tuple[list[float], list[float]]:
    """Per image: 2TP and 2TP + FP + FN, so that F1 = sum / sum is a ratio over independent images."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for example, p, t in zip(examples, said_yes, is_yes, strict=True):
        num[example.group] = num.get(example.group, 0.0) + 2.0 * (p and t)
        den[example.group] = den.get(example.group, 0.0) + 2.0 * (p and t) + (p and not t) + (t and not p)
    return list(num.values()), [den[g] for g in num]
