"""Short-answer VQA: VQAv2, VizWiz (VQA soft accuracy) and GQA (exact match) (docs/tasks.md).

All three generate at most 16 new tokens (lmms-eval's setting) after LLaVA-1.5's short-answer prompt
``{question}\\nAnswer the question using a single word or phrase.`` (LLaVA:docs/Evaluation.md); VizWiz adds
``\\nWhen the provided information is insufficient, respond with 'Unanswerable'.`` before it
(LLaVA:playground/data/eval/vizwiz/llava_test.jsonl@32cebc3) and, like lmms-eval, ``str.capitalize``\\s the
question. Accuracy stderrs are clustered by image.

Layouts (``data_dir`` directly holds the official files):

* vqav2: ``v2_OpenEnded_mscoco_<subset>_questions.json`` + ``v2_mscoco_<subset>_annotations.json``, images
  ``<subset>/COCO_<subset>_<image_id:012d>.jpg`` (``split`` = subset, default ``val2014``; ``image_dir``
  overrides the folder). Scored as lmms-eval's ``vqav2_val``: prediction and the ten answers both get
  punctuation + digit/article normalisation, then :func:`vqa_accuracy`.
* vizwiz: ``<split>.json`` (default ``val``; a list of ``{image, question, answers: [{answer}]}``), images in
  ``<split>/``. Scored as lmms-eval's ``vizwiz_vqa_val``: the full EvalAI answer processor on both sides.
* gqa: ``<split>_questions.json`` (default ``testdev_balanced``; ``{question_id: {imageId, question,
  answer}}``), images ``images/<imageId>.jpg``. Exact match of ``prediction.strip().rstrip('.').lower()`` with
  the answer (LLaVA:scripts/convert_gqa_for_eval.py, then the official GQA eval.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from workers.tasks._answers import gqa_normalize, vqa_accuracy, vqa_normalize
from workers.tasks._base import Example, ImageRef, Scorer, Task, TaskSpec, keep_first_groups
from workers.tasks._errors import DataError
from workers.tasks._io import Record, get_field, read_json, require_file, unique_ids
from workers.tasks._stats import clustered_mean

__all__ = ["load_vqav2", "load_vizwiz", "load_gqa", "SHORT_ANSWER", "UNANSWERABLE"]

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."


def _spec(name: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        group="general",
        metric="accuracy",
        direction="maximize",
        answer_mode="generate",
        max_new_tokens=16,
    )


VQAV2, VIZWIZ, GQA = _spec("vqav2"), _spec("vizwiz"), _spec("gqa")


def load_vqav2(
    data_dir: Path, *, split: str | None = None, limit: int | None = None, image_dir: str | Path | None = None
) -> Task:
    """VQAv2 from its official question and annotation files (module docstring); ``limit`` counts images."""
    subset = split or "val2014"
    questions_file = data_dir / f"v2_OpenEnded_mscoco_{subset}_questions.json"
    annotations_file = data_dir / f"v2_mscoco_{subset}_annotations.json"
    questions = _records(questions_file, "questions")
    answers = {
        str(get_field(r, "question_id", (int, str))): r for r in _records(annotations_file, "annotations")
    }
    images = Path(image_dir) if image_dir is not None else data_dir / subset
    examples = []
    for record in questions:
        question_id = str(get_field(record, "question_id", (int, str)))
        if question_id not in answers:
            raise record.error(f"question_id {question_id} has no entry in {annotations_file.name}")
        annotation = answers[question_id]
        image_id = get_field(record, "image_id", int)
        references = _answers(annotation)
        examples.append(
            Example(
                id=question_id,
                group=str(image_id),
                question=get_field(record, "question"),
                image=ImageRef(images / f"COCO_{subset}_{image_id:012d}.jpg"),
                answer=annotation.get("multiple_choice_answer"),
                references=references,
            )
        )
    unique_ids((e.id, r) for e, r in zip(examples, questions, strict=True))
    scorer = partial(_soft_accuracy, vqa_normalize)
    return _task(VQAV2, examples, limit, text=_short_answer_text, scorer=scorer, metadata={"subset": subset})


def load_vizwiz(
    data_dir: Path, *, split: str | None = None, limit: int | None = None, image_dir: str | Path | None = None
) -> Task:
    """VizWiz-VQA from its official annotation file (module docstring); ``limit`` counts images."""
    name = split or "val"
    path = data_dir / f"{name}.json"
    records = _records(path, None)
    images = Path(image_dir) if image_dir is not None else data_dir / name
    examples = []
    for record in records:
        image = get_field(record, "image")
        examples.append(
            Example(
                id=Path(image).stem,
                group=image,
                question=get_field(record, "question"),
                image=ImageRef(images / image),
                references=_answers(record),
            )
        )
    unique_ids((e.id, r) for e, r in zip(examples, records, strict=True))
    scorer = partial(_soft_accuracy, _eval_ai_normalize)
    return _task(VIZWIZ, examples, limit, text=_vizwiz_text, scorer=scorer, metadata={"split": name})


def load_gqa(
    data_dir: Path, *, split: str | None = None, limit: int | None = None, image_dir: str | Path | None = None
) -> Task:
    """GQA from its official ``<split>_questions.json`` (module docstring); ``limit`` counts images."""
    name = split or "testdev_balanced"
    path = data_dir / f"{name}_questions.json"
    table = read_json(path)
    if not isinstance(table, dict) or not table:
        raise DataError(f"{path}: expected a non-empty JSON object of question_id -> question")
    images = Path(image_dir) if image_dir is not None else data_dir / "images"
    examples = []
    for number, (question_id, value) in enumerate(table.items(), start=1):
        if not isinstance(value, dict):
            raise DataError(f"{path} item {number} ({question_id}): expected a JSON object")
        record = Record(value, path=path, unit="item", number=number)
        image_id = get_field(record, "imageId")
        examples.append(
            Example(
                id=str(question_id),
                group=image_id,
                question=get_field(record, "question"),
                image=ImageRef(images / f"{image_id}.jpg"),
                answer=get_field(record, "answer"),
            )
        )
    return _task(GQA, examples, limit, text=_short_answer_text, scorer=_exact_match, metadata={"split": name})


def _short_answer_text(example: Example) -> str:
    return example.question + SHORT_ANSWER


def _vizwiz_text(example: Example) -> str:
    return example.question.capitalize() + UNANSWERABLE + SHORT_ANSWER


def _task(
    spec: TaskSpec,
    examples: Sequence[Example],
    limit: int | None,
    *,
    text: Callable[[Example], str],
    scorer: Scorer,
    metadata: Mapping[str, Any],
) -> Task:
    return Task(
        spec=spec, examples=keep_first_groups(examples, limit), text=text, scorer=scorer, metadata=metadata
    )


def _records(path: Path, key: str | None) -> list[Record]:
    """The list of objects at ``key`` of a JSON file (the file itself when ``key`` is None)."""
    data = read_json(require_file(path))
    items = data.get(key) if key is not None and isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        where = f"'{key}'" if key else "the file"
        raise DataError(f"{path}: expected a non-empty list at {where}")
    records = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{path} item {number}: expected a JSON object, got {type(item).__name__}")
        records.append(Record(item, path=path, unit="item", number=number))
    return records


def _answers(record: Record) -> tuple[str, ...]:
    """The human answers of a record: ``answers`` is a non-empty list of ``{"answer": str, ...}``."""
    answers = get_field(record, "answers", list)
    texts = tuple(a.get("answer") for a in answers if isinstance(a, dict))
    if not answers or len(texts) != len(answers) or not all(isinstance(t, str) for t in texts):
        raise record.error("field 'answers' should be a non-empty list of {answer: text} objects")
    return texts


def _eval_ai_normalize(text: str) -> str:
    return vqa_normalize(text, eval_ai_tokenize=True)


def _soft_accuracy(
    normalize: Callable[[str], str], examples: Sequence[Example], predictions: Mapping[str, str]
) -> dict[str, float]:
    values = [
        vqa_accuracy(normalize(predictions[e.id]), [normalize(a) for a in e.references]) for e in examples
    ]
    accuracy, stderr = clustered_mean([e.group for e in examples], values)
    return {"accuracy": accuracy, "accuracy_stderr": stderr}


def _exact_match(examples: Sequence[Example], predictions: Mapping[str, str]) -> dict[str, float]:
    correct = [float(gqa_normalize(predictions[e.id]) == (e.answer or "").lower()) for e in examples]
    accuracy, stderr = clustered_mean([e.group for e in examples], correct)
    return {"accuracy": accuracy, "accuracy_stderr": stderr}
