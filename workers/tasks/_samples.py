"""Per-sample records of a system's answers, in the spirit of lm-eval / lmms-eval ``--log_samples``.

One JSON object per example: what was asked (id, group, question, options or references, target), what came back
(the raw prediction; the option it parses to, for option tasks) and how it scored: ``correct`` for option tasks,
and ``group_scores``, the task's own metrics on the example's group alone (an MMVP pair, a POPE image), so pair
metrics stay meaningful. Pure: no model, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["sample_records", "samples_jsonl"]


def sample_records(task: Any, predictions: Mapping[str, str]) -> list[dict[str, Any]]:
    """A record per example of ``task`` (in its order), for the predictions (example id -> raw answer)."""
    by_group: dict[str, list[Any]] = {}
    for example in task.examples:
        by_group.setdefault(example.group, []).append(example)
    group_scores = {
        key: task.scorer(examples, {e.id: predictions[e.id] for e in examples})
        for key, examples in by_group.items()
    }
    records = []
    for example in task.examples:
        record: dict[str, Any] = {
            "doc_id": example.id,
            "group": example.group,
            "question": task.text(example),  # the task's text for the example, as the model was asked
            "options": list(example.options) if example.options else None,
            "target": example.answer,
            "references": list(example.references),
            "prediction": predictions[example.id],
        }
        if task.answer_mode == "options":
            parsed = task.parse_option(example, predictions[example.id])
            record["parsed"] = parsed
            record["correct"] = parsed == example.answer
        record["group_scores"] = {k: _plain(v) for k, v in group_scores[example.group].items()}
        records.append(record)
    return records


def samples_jsonl(task: Any, predictions: Mapping[str, str]) -> str:
    """:func:`sample_records` as JSON lines (NaN written as null, as JSON has no NaN)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample_records(task, predictions))


def _plain(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value
