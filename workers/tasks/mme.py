"""MME: yes/no questions, two per image, in 14 categories (docs/tasks.md).

Data: ``data_dir`` directly holds the category folders of ``MME_Benchmark_release_version``. Five categories
(artwork, celebrity, landmark, posters, scene) keep images in ``images/`` and questions in
``questions_answers_YN/``; the others keep ``<stem>.txt`` beside ``<stem>.jpg``/``.png``. Each ``.txt`` holds
two lines ``question<TAB>Yes|No``. Category folders missing from ``data_dir`` are left out (``task.metadata``
lists those loaded); other folders are ignored. Ids are ``<category>/<stem>/<1|2>``; the group is the image.

Prompt: the question with `` Please answer yes or no.`` replaced by ``\\nAnswer the question using a single
word or phrase.`` (LLaVA:playground/data/eval/MME/llava_mme.jsonl@32cebc3;
lmms-eval:lmms_eval/tasks/mme/utils.py ``mme_doc_to_text``). Options ``("Yes", "No")``; answers parsed by
:func:`mme_yes_no` (lmms-eval's Otter parser).

Scores in points (lmms-eval ``mme_aggregate_results``): per category, the mean over images of 100 * (share of
its two questions right) + 100 * (both right), i.e. 100 * acc + 100 * acc+; ``perception`` and ``cognition``
sum their categories (max 2000 and 800 with all present); ``total`` (headline) = both. Stderrs treat images as
independent within a category and categories as independent of each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.tasks._answers import mme_yes_no
from workers.tasks._base import Example, ImageRef, Task, TaskSpec, check_split, keep_first_groups
from workers.tasks._errors import DataError
from workers.tasks._io import read_text
from workers.tasks._stats import clustered_mean, combined_stderr, ratio_stderr

__all__ = ["load_mme", "SPEC", "PERCEPTION", "COGNITION"]

SPEC = TaskSpec(
    name="mme",
    group="general",
    metric="total",
    direction="maximize",
    answer_mode="options",
    max_new_tokens=16,
)
PERCEPTION: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
MME_SUFFIX = " Please answer yes or no."
SUFFIX = "\nAnswer the question using a single word or phrase."
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def load_mme(data_dir: Path, *, split: str | None = None, limit: int | None = None) -> Task:
    """MME from its release folder (module docstring); ``limit`` counts images."""
    check_split("mme", split, ())
    categories = [c for c in (*PERCEPTION, *COGNITION) if (data_dir / c).is_dir()]
    if not categories:
        raise DataError(f"{data_dir}: no MME category folder ({', '.join((*PERCEPTION, *COGNITION))})")
    examples = [example for category in categories for example in _category_examples(data_dir / category)]
    return Task(
        spec=SPEC,
        examples=keep_first_groups(examples, limit),
        text=_text,
        scorer=_score,
        option_parser=_parse_option,
        metadata={"categories": tuple(categories)},
    )


def _category_examples(folder: Path) -> list[Example]:
    split_layout = (folder / "questions_answers_YN").is_dir() and (folder / "images").is_dir()
    text_dir, image_dir = (
        (folder / "questions_answers_YN", folder / "images") if split_layout else (folder, folder)
    )
    text_files = sorted(text_dir.glob("*.txt"))
    if not text_files:
        raise DataError(f"{text_dir}: no question files (*.txt)")
    return [example for path in text_files for example in _file_examples(path, image_dir, folder.name)]


def _file_examples(path: Path, image_dir: Path, category: str) -> list[Example]:
    lines = [(n, line) for n, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]
    if len(lines) != 2:
        raise DataError(f"{path}: expected 2 question lines (MME asks two per image), found {len(lines)}")
    image = _image_path(path, image_dir, category)
    examples = []
    for k, (lineno, line) in enumerate(lines, start=1):
        question, sep, answer = line.rstrip("\n").partition("\t")
        label = answer.strip().lower()
        if not sep or not question.strip() or label not in ("yes", "no"):
            raise DataError(f"{path} line {lineno}: expected 'question<TAB>Yes|No', got {line.strip()!r}")
        examples.append(
            Example(
                id=f"{category}/{path.stem}/{k}",
                group=f"{category}/{image.name}",
                question=question.strip(),
                image=ImageRef(image),
                options=("Yes", "No"),
                answer=label.capitalize(),
                meta={"category": category},
            )
        )
    return examples


def _image_path(text_file: Path, image_dir: Path, category: str) -> Path:
    """The image beside the question file; when none is there yet, the release's name for it (checked lazily):
    ``.png`` for the cognition categories, ``.jpg`` for perception (the release's file types)."""
    for suffix in _IMAGE_SUFFIXES:
        candidate = image_dir / f"{text_file.stem}{suffix}"
        if candidate.is_file():
            return candidate
    return image_dir / f"{text_file.stem}{'.png' if category in COGNITION else '.jpg'}"


def _text(example: Example) -> str:
    return example.question.replace(MME_SUFFIX, "") + SUFFIX


def _parse_option(example: Example, raw: str) -> str | None:
    answer = mme_yes_no(raw)
    return None if answer is None else answer.capitalize()


def _score(examples: Sequence[Example], predictions: Mapping[str, str]) -> dict[str, float]:
    parsed = [_parse_option(e, predictions[e.id]) for e in examples]
    correct = [float(p == e.answer) for p, e in zip(parsed, examples, strict=True)]
    metrics: dict[str, float] = {}
    stderrs: dict[str, float] = {}
    for category in dict.fromkeys(e.meta["category"] for e in examples):
        rows = [
            (e.group, c) for e, c in zip(examples, correct, strict=True) if e.meta["category"] == category
        ]
        metrics[category], stderrs[category] = _category_score([g for g, _ in rows], [c for _, c in rows])
    for name, members in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [c for c in members if c in stderrs]
        metrics[name] = sum(metrics[c] for c in present)
        metrics[f"{name}_stderr"] = combined_stderr([1.0] * len(present), [stderrs[c] for c in present])
    metrics["total"] = metrics["perception"] + metrics["cognition"]
    metrics["total_stderr"] = combined_stderr([1.0] * len(stderrs), list(stderrs.values()))
    metrics["accuracy"], metrics["accuracy_stderr"] = clustered_mean([e.group for e in examples], correct)
    metrics["invalid_rate"] = sum(p is None for p in parsed) / len(parsed)
    return metrics


def _category_score(groups: Sequence[str], correct: Sequence[float]) -> tuple[float, float]:
    """100 * acc + 100 * acc+ as the mean over images of 100 * (right / asked + all right), and its stderr."""
    right: dict[str, float] = {}
    asked: dict[str, int] = {}
    for group, value in zip(groups, correct, strict=True):
        right[group] = right.get(group, 0.0) + value
        asked[group] = asked.get(group, 0) + 1
    per_image = [100.0 * (right[g] / asked[g] + float(right[g] == asked[g])) for g in right]
    return sum(per_image) / len(per_image), ratio_stderr(per_image, [1.0] * len(per_image))
