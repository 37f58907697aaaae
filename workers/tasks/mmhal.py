"""MMHal-Bench: 96 open questions judged 0..6 by a language model (docs/tasks.md).

Data: ``data_dir`` directly holds ``response_template.json`` (a list of records with ``question_type``,
``question_topic``, ``image_id``, ``image_src``, ``image_content``, ``question``, ``gt_answer``; HF
``Shengcao1006/MMHal-Bench``) and the images: a record's ``image_path`` (relative to ``data_dir``) when it has
one, else ``images/<file name of image_src>``. Ids are the record's position from 0 (the original's ``i``);
each record is its own group. ``limit`` keeps the first records; the original asserts all 96, we do not.

Prompt: the bare question (llava-rlhf/LLaVA-RLHF:Eval/eval_scripts/eval_mmhal.sh ``--test-prompt ''``);
generation with ``max_new_tokens`` 1024 by default (LLaVA-RLHF:Eval/model_vqa_mmhal.py).

Judging: ``score()`` asks the ``judge`` given to ``get_task("mmhal", ..., judge=...)`` once per record, in
order, with a :class:`JudgeRequest` (image contents joined by ``", "``, question, reference answer, model
answer) and parses the reply with :func:`parse_rating` (llava-rlhf/LLaVA-RLHF:Eval/eval_gpt_mmhal.py). The
judge builds its own prompt: the original GPT-4 template (eval_gpt_mmhal.py ``template``, GPL-3.0) is not
bundled here. A judge is any callable, e.g. one that calls ``gpt-4-0314`` at temperature 0; tests use a local
fake and nothing here touches the network. A reply without exactly one rating scores 0 as in the original, and
counts in ``invalid_rate``.

Metrics: ``score`` (headline, mean rating 0..6) with ``score_stderr``, ``hallucination_rate`` = share of
ratings below 3, and ``type/<question_type>`` mean ratings (the original groups by ``index % 8``, which is the
question type as long as the 96 records keep their order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath

from workers.tasks._answers import parse_rating
from workers.tasks._base import Example, ImageRef, Task, TaskSpec, check_split, keep_first_groups
from workers.tasks._errors import ScoringError
from workers.tasks._io import Record, get_field, read_records
from workers.tasks._stats import ratio, ratio_stderr

__all__ = ["load_mmhal", "JudgeRequest", "Judge", "DEFAULT_MAX_NEW_TOKENS"]

DEFAULT_MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class JudgeRequest:
    """What the MMHal judge sees for one answer (the four slots of LLaVA-RLHF's template, in order)."""

    image_content: str
    question: str
    gt_answer: str
    model_answer: str


Judge = Callable[[JudgeRequest], str]


SPEC = TaskSpec(
    name="mmhal",
    group="hallucination",
    metric="score",
    direction="maximize",
    answer_mode="generate",
    max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    lower_is_better=("hallucination_rate",),
)


def load_mmhal(
    data_dir: Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    judge: Judge | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Task:
    """MMHal-Bench from ``data_dir`` (module docstring); ``judge`` is needed by ``score()`` only."""
    check_split("mmhal", split, ())
    spec = replace(SPEC, max_new_tokens=max_new_tokens)
    path = data_dir / "response_template.json"
    examples = [_example(record, index, data_dir) for index, record in enumerate(read_records(path))]
    return Task(
        spec=spec,
        examples=keep_first_groups(examples, limit),
        text=_text,
        scorer=partial(_score, judge),
        metadata={"judge": getattr(judge, "__name__", type(judge).__name__) if judge is not None else None},
    )


def _text(example: Example) -> str:
    return example.question


def _example(record: Record, index: int, data_dir: Path) -> Example:
    content = get_field(record, "image_content", list)
    if not all(isinstance(c, str) for c in content):
        raise record.error("field 'image_content' should be a list of class names")
    if record.get("image_path"):
        image = data_dir / get_field(record, "image_path")
    else:
        image = data_dir / "images" / PurePosixPath(get_field(record, "image_src")).name
    return Example(
        id=str(index),
        group=str(index),
        question=get_field(record, "question"),
        image=ImageRef(image),
        answer=get_field(record, "gt_answer"),
        meta={
            "question_type": get_field(record, "question_type"),
            "question_topic": get_field(record, "question_topic"),
            "image_id": get_field(record, "image_id"),
            "image_content": ", ".join(content),
        },
    )


def _score(
    judge: Judge | None, examples: Sequence[Example], predictions: Mapping[str, str]
) -> dict[str, float]:
    if judge is None:
        raise ScoringError("mmhal needs a judge to score: get_task('mmhal', data_dir, judge=callable)")
    ratings: list[int | None] = []
    for example in examples:
        request = JudgeRequest(
            image_content=example.meta["image_content"],
            question=example.question,
            gt_answer=example.answer or "",
            model_answer=predictions[example.id],
        )
        reply = judge(request)
        if not isinstance(reply, str):
            raise ScoringError(
                f"mmhal judge returned {type(reply).__name__} for id {example.id}, expected the reply text"
            )
        ratings.append(parse_rating(reply))
    scores = [float(r or 0) for r in ratings]
    ones = [1.0] * len(scores)
    metrics = {
        "score": ratio(scores, ones),
        "score_stderr": ratio_stderr(scores, ones),
        "hallucination_rate": ratio([float(s < 3) for s in scores], ones),
        "invalid_rate": sum(r is None for r in ratings) / len(ratings),
    }
    for question_type in dict.fromkeys(e.meta["question_type"] for e in examples):
        typed = [s for s, e in zip(scores, examples, strict=True) if e.meta["question_type"] == question_type]
        metrics[f"type/{question_type}"] = sum(typed) / len(typed)
    return metrics
