"""MMVP: 300 two-option questions in 150 pairs (docs/tasks.md).

Data (``data_dir`` directly holds it), told apart by what is there:

* original (tsb0601/MMVP:README.md; HF ``MMVP/MMVP``): ``Questions.csv`` + ``MMVP Images/{Index}.jpg``.
  Columns are read by position (Index, Question, Options, Correct Answer); the header's first cell may be
  ``Index`` or the real file's ``lndex`` (cambrian:eval/eval/mmvp/mmvp_eval.py).
* lmms-lab-eval/MMVP (lmms-eval:lmms_eval/tasks/mmvp/_default_template_yaml): ``*.parquet`` (or
  ``data/*.parquet``) with the same four columns + ``image``. Its ground truth fixes the swapped answers of
  Index 99/100 and 279/280.

``variant`` picks the ground truth and is recorded in ``task.metadata``: ``"original"`` (default for the CSV)
or ``"lmms-lab-eval"`` (default for the parquet; on the CSV it applies lmms-eval's four corrections).

Prompt: lmms-eval's ``{Question}\\nA. {opt1}\\nB. {opt2}\\nAnswer with the option's letter from the given
choices directly.`` (lmms-eval:lmms_eval/tasks/mmvp/utils.py ``mmvp_doc_to_text``). Answers: options ``("A",
"B")``, parsed with :func:`extract_letter`. Metrics: ``pair_accuracy`` (headline: both questions of a pair
right, VLMEvalKit's "Overall") and per-question ``accuracy`` (lmms-eval's ``mmvp_accuracy``), with stderrs
clustered by pair, and ``invalid_rate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from var_core.errors import ConfigError
from workers.tasks._answers import letter_option
from workers.tasks._base import Example, ImageRef, Task, TaskSpec, check_split, keep_first_groups
from workers.tasks._errors import DataError
from workers.tasks._io import Record, read_csv_rows, read_parquet
from workers.tasks._stats import clustered_mean, ratio_stderr

__all__ = ["load_mmvp", "SPEC", "VARIANTS"]

SPEC = TaskSpec(
    name="mmvp",
    group="vision-centric",
    metric="pair_accuracy",
    direction="maximize",
    answer_mode="options",
    max_new_tokens=16,
)
VARIANTS: tuple[str, ...] = ("original", "lmms-lab-eval")
COLUMNS = ("Index", "Question", "Options", "Correct Answer")
SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# lmms-eval:lmms_eval/tasks/mmvp/utils.py docstring: Index -> (original answer, corrected answer).
LMMS_EVAL_FIXES: Mapping[int, tuple[str, str]] = {
    99: ("(a)", "(b)"),
    100: ("(b)", "(a)"),
    279: ("(a)", "(b)"),
    280: ("(b)", "(a)"),
}
_OPTIONS = re.compile(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", re.IGNORECASE)  # lmms-eval _parse_options


def load_mmvp(
    data_dir: Path, *, split: str | None = None, limit: int | None = None, variant: str | None = None
) -> Task:
    """MMVP from ``data_dir`` (layouts in the module docstring); ``limit`` counts pairs."""
    check_split("mmvp", split, ())
    csv_file = data_dir / "Questions.csv"
    parquets = sorted(data_dir.glob("*.parquet")) or sorted((data_dir / "data").glob("*.parquet"))
    if csv_file.is_file():
        source, default_variant = "csv", "original"
        rows = [_csv_example_row(r, data_dir) for r in _csv_records(csv_file)]
    elif parquets:
        source, default_variant = "parquet", "lmms-lab-eval"
        rows = [_parquet_example_row(r) for p in parquets for r in read_parquet(p, columns=COLUMNS)]
    else:
        raise DataError(f"{data_dir}: no Questions.csv (original MMVP) and no *.parquet (lmms-lab-eval/MMVP)")
    variant = variant or default_variant
    if variant not in VARIANTS:
        raise ConfigError(f"mmvp variant={variant!r} is not one of {', '.join(VARIANTS)}")
    if source == "parquet" and variant == "original":
        raise ConfigError(
            "mmvp: the parquet is lmms-lab-eval's corrected data; use Questions.csv for 'original'"
        )
    if source == "csv" and variant == "lmms-lab-eval":
        rows = _apply_lmms_eval_fixes(rows, csv_file)
    examples = _examples(rows)
    return Task(
        spec=SPEC,
        examples=keep_first_groups(examples, limit),
        text=_text,
        scorer=_score,
        option_parser=letter_option,
        metadata={"variant": variant, "source": source, "n_pairs_total": len(examples) // 2},
    )


class _Row(NamedTuple):
    """One question row, from either format, before validation."""

    record: Record
    index: int
    question: str
    options: str
    answer: str
    image: ImageRef


def _csv_records(path: Path) -> list[Record]:
    header, records = read_csv_rows(path, n_columns=len(COLUMNS))
    if header[0].strip().lower() not in ("index", "lndex"):
        raise DataError(f"{path} line 1: expected a header starting with Index (or lndex), got {header[0]!r}")
    return records


def _csv_example_row(record: Record, data_dir: Path) -> _Row:
    index = _index(record, record["0"])
    image = ImageRef(data_dir / "MMVP Images" / f"{index}.jpg")
    return _Row(record, index, record["1"], record["2"], record["3"], image)


def _parquet_example_row(record: Record) -> _Row:
    for column in COLUMNS:
        if record[column] is None:
            raise record.error(f"missing value in column {column!r}")
    image = ImageRef(record.path, row=record.number, column="image")
    question, options, answer = (str(record[c]) for c in COLUMNS[1:])
    return _Row(record, _index(record, record["Index"]), question, options, answer, image)


def _index(record: Record, value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError as e:
        raise record.error(f"Index {value!r} is not an integer") from e


def _apply_lmms_eval_fixes(rows: list[_Row], path: Path) -> list[_Row]:
    answers = {row.index: row.answer.strip().lower() for row in rows}
    for index, (original, _) in LMMS_EVAL_FIXES.items():
        if answers.get(index) != original:
            raise DataError(
                f"{path}: Index {index} does not hold MMVP's original answer {original}, cannot fix it"
            )
    return [
        row._replace(answer=LMMS_EVAL_FIXES[row.index][1]) if row.index in LMMS_EVAL_FIXES else row
        for row in rows
    ]


def _examples(rows: Sequence[_Row]) -> list[Example]:
    if len(rows) % 2:
        raise rows[-1].record.error(f"{len(rows)} questions: MMVP pairs need an even number of rows")
    examples = []
    for position, (record, index, question, options_text, answer_text, image) in enumerate(rows, start=1):
        if index != position:
            raise record.error(f"Index {index} out of order: expected {position} (pairs are rows 2k-1, 2k)")
        choices = tuple(m.strip() for m in _OPTIONS.findall(options_text))
        if len(choices) != 2:
            raise record.error(f"Options {options_text!r} should read '(a) X (b) Y'")
        examples.append(
            Example(
                id=str(index),
                group=f"pair{(index + 1) // 2}",
                question=question.strip(),
                image=image,
                options=("A", "B"),
                answer=_answer_letter(record, answer_text),
                meta={"index": index, "choices": choices},
            )
        )
    return examples


def _answer_letter(record: Record, answer: str) -> str:
    """lmms-eval ``_normalize_answer``: ``(a)``/``a`` -> A, ``(b)``/``b`` -> B; anything else is bad data."""
    text = answer.strip().lower()
    if "(a)" in text or text == "a":
        return "A"
    if "(b)" in text or text == "b":
        return "B"
    raise record.error(f"unknown answer letter {answer!r} (expected (a) or (b))")


def _text(example: Example) -> str:
    first, second = example.meta["choices"]
    return f"{example.question}\nA. {first}\nB. {second}{SUFFIX}"


def _score(examples: Sequence[Example], predictions: Mapping[str, str]) -> dict[str, float]:
    parsed = [letter_option(e, predictions[e.id]) for e in examples]
    correct = [float(p == e.answer) for p, e in zip(parsed, examples, strict=True)]
    pair_right: dict[str, float] = {}
    for example, right in zip(examples, correct, strict=True):
        pair_right[example.group] = min(pair_right.get(example.group, 1.0), right)
    pairs = list(pair_right.values())
    accuracy, accuracy_stderr = clustered_mean([e.group for e in examples], correct)
    return {
        "pair_accuracy": sum(pairs) / len(pairs),
        "pair_accuracy_stderr": ratio_stderr(pairs, [1.0] * len(pairs)),
        "accuracy": accuracy,
        "accuracy_stderr": accuracy_stderr,
        "invalid_rate": sum(p is None for p in parsed) / len(parsed),
    }
