"""CV-Bench: jsonl + img/ and parquet, the card's source-balanced formula, bad rows (docs/tasks.md)."""

from __future__ import annotations

import math

import pytest
from task_fixtures import CV_ROWS, cv_row, write_cv_bench, write_jsonl

from workers.tasks import DataError, get_task

# ADE20K 1/3 right, COCO 2/2, Omni3D 1/2.
PREDICTIONS = {
    "2D/0": "(C) 1",
    "2D/1": "B",
    "2D/2": "The answer is A",
    "2D/3": "B",
    "2D/6": "A.",
    "3D/4": "A",
    "3D/5": "A",
}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_section8_formulas(tmp_path, fmt):
    task = get_task("cv_bench", write_cv_bench(tmp_path, fmt=fmt))
    assert task.metadata["formats"] == {"2D": fmt, "3D": fmt}
    m = task.score(PREDICTIONS)
    assert (m["ADE20K"], m["COCO"], m["Omni3D"]) == (pytest.approx(1 / 3), 1.0, 0.5)
    assert m["2d"] == pytest.approx(2 / 3) and m["3d"] == 0.5
    assert m["overall"] == pytest.approx(7 / 12)
    assert m["accuracy"] == pytest.approx(4 / 7)  # lmms-eval's micro accuracy differs
    assert m["overall_stderr"] == pytest.approx(math.sqrt(10) / 12)  # sqrt((1/4 * 1/3)^2 + 0 + (1/2 * 1/2)^2)
    assert m["invalid_rate"] == 0.0
    task.check_images()


def test_examples_and_prompt(tmp_path):
    task = get_task("cv_bench", write_cv_bench(tmp_path))
    first, second = task.examples[:2]
    assert (first.id, first.options, first.answer) == ("2D/0", ("A", "B", "C", "D"), "C")
    assert (second.options, second.answer) == (("A", "B"), "A")
    assert first.group == "img/2D/ade20k_0.png" and first.image.path == tmp_path / "img/2D/ade20k_0.png"
    assert task.text(first) == (
        "Question 0? Select from the following choices.\n(A) 3\n(B) 2\n(C) 1\n(D) 0"
        "\nAnswer with the option's letter from the given choices directly."
    )
    assert task.parse_option(first, "E") is None and task.parse_option(second, "C") is None


def test_one_split(tmp_path):
    task = get_task("cv_bench", write_cv_bench(tmp_path), split="2D")
    assert {e.meta["source"] for e in task.examples} == {"ADE20K", "COCO"}
    m = task.score({k: v for k, v in PREDICTIONS.items() if k.startswith("2D")})
    assert m["overall"] == m["2d"] == pytest.approx(2 / 3) and "3d" not in m


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {**cv_row(9, "COCO", ["a", "b", "c", "d"], "(E)")},
            r"line 2: unknown answer letter '\(E\)' for 4 choices",
        ),
        ({**cv_row(9, "KITTI", ["a", "b"], "(A)")}, r"line 2: unknown source 'KITTI'"),
        (
            {k: v for k, v in cv_row(9, "COCO", ["a", "b"], "(A)").items() if k != "prompt"},
            "line 2: missing field 'prompt'",
        ),
        ({**cv_row(0, "COCO", ["a", "b"], "(A)")}, r"line 2: duplicate id '2D/0' \(first at line 1\)"),
        ({**cv_row(9, "COCO", ["a"], "(A)")}, "line 2: expected 2 to 26 choices, got 1"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, row, message):
    write_cv_bench(tmp_path)
    write_jsonl(tmp_path / "test_2d.jsonl", [CV_ROWS[0], row])
    with pytest.raises(DataError, match=message) as caught:
        get_task("cv_bench", tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "test_2d.jsonl"))


def test_missing_split_file(tmp_path):
    write_cv_bench(tmp_path)
    (tmp_path / "test_3d.jsonl").unlink()
    with pytest.raises(DataError, match="no test_3d.jsonl or test_3d.parquet for CV-Bench split 3D"):
        get_task("cv_bench", tmp_path)
    assert len(get_task("cv_bench", tmp_path, split="2D").examples) == 5
