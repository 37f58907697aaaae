"""MMVP: loader in both formats, bad rows, the lmms-eval corrections, the scorer (docs/tasks.md)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from task_fixtures import hf_image, write_mmvp, write_parquet

from var_core.errors import ConfigError
from workers.tasks import DataError, get_task

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mmvp-sample"


def test_section8_scores(tmp_path):
    rows = [
        ("Is the door open?", "(a) Open (b) Closed", "(a)"),
        ("Is the door open?", "(a) Open (b) Closed", "(b)"),
        ("Is it red?", "(a) Yes (b) No", "(b)"),
        ("Is it red?", "(a) Yes (b) No", "(b)"),
    ]
    task = get_task("mmvp", write_mmvp(tmp_path, rows))
    outputs = {"1": "A", "2": "(B)", "3": "B. Closed", "4": "The answer is A"}  # right, right, right, wrong
    metrics = task.score(outputs)
    assert metrics["accuracy"] == 0.75
    assert metrics["pair_accuracy"] == 0.5
    assert metrics["pair_accuracy_stderr"] == pytest.approx(0.5)  # pairs [1, 0]: sd 0.707 / sqrt 2
    assert metrics["accuracy_stderr"] == pytest.approx(0.25)  # clustered by pair: sqrt(2 * 0.5 / 16)
    assert metrics["invalid_rate"] == 0.0
    assert task.score({**outputs, "1": "Closed"})["invalid_rate"] == 0.25


def test_examples_prompt_and_pairs(tmp_path):
    task = get_task("mmvp", write_mmvp(tmp_path))
    assert [e.id for e in task.examples] == ["1", "2", "3", "4"]
    assert task.groups == ("pair1", "pair2")
    first = task.examples[0]
    assert (first.options, first.answer, first.meta["choices"]) == (("A", "B"), "A", ("Open", "Closed"))
    assert task.text(first) == (
        "Is the door open?\nA. Open\nB. Closed\nAnswer with the option's letter from the given choices directly."
    )
    assert task.metadata["variant"] == "original" and task.metadata["source"] == "csv"
    assert first.image.path == tmp_path / "MMVP Images" / "1.jpg"


def test_lndex_header_typo_is_accepted(tmp_path):
    task = get_task("mmvp", write_mmvp(tmp_path, header="lndex"))
    assert len(task.examples) == 4


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    return path.parent


HEADER = ["Index", "Question", "Options", "Correct Answer"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["Id", "Q", "O", "A"], ["1", "q", "(a) x (b) y", "(a)"]],
            r"line 1: expected a header starting with Index",
        ),
        (
            [HEADER, ["1", "q", "(a) x (b) y", "(a)"], ["2", "q", "(a) x (b) y"]],
            r"line 3: expected 4 columns, found 3",
        ),
        (
            [HEADER, ["1", "q", "(a) x (b) y", "(a)"], ["2", "q", "(a) x (b) y", "(c)"]],
            r"line 3: unknown answer letter '\(c\)'",
        ),
        (
            [HEADER, ["1", "q", "(a) x (b) y", "(a)"], ["2", "q", "x or y", "(b)"]],
            r"line 3: Options 'x or y' should",
        ),
        (
            [HEADER, ["one", "q", "(a) x (b) y", "(a)"], ["2", "q", "(a) x (b) y", "(b)"]],
            r"line 2: Index 'one' is not an integer",
        ),
        (
            [HEADER, ["2", "q", "(a) x (b) y", "(a)"], ["1", "q", "(a) x (b) y", "(b)"]],
            r"line 2: Index 2 out of order",
        ),
        ([HEADER, ["1", "q", "(a) x (b) y", "(a)"]], r"line 2: 1 questions: MMVP pairs need an even number"),
        ([HEADER], r"no data rows under the header"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, rows, message):
    data_dir = write_csv(tmp_path / "Questions.csv", rows)
    with pytest.raises(DataError, match=message) as caught:
        get_task("mmvp", data_dir)
    assert str(caught.value).startswith(str(tmp_path / "Questions.csv"))


def test_empty_file_and_missing_data(tmp_path):
    (tmp_path / "Questions.csv").write_text("\n")
    with pytest.raises(DataError, match="Questions.csv: file is empty"):
        get_task("mmvp", tmp_path)
    (tmp_path / "Questions.csv").unlink()
    with pytest.raises(DataError, match="no Questions.csv .* and no \\*.parquet"):
        get_task("mmvp", tmp_path)


def test_missing_and_corrupt_images_are_named(tmp_path):
    task = get_task("mmvp", write_mmvp(tmp_path))
    (tmp_path / "MMVP Images" / "3.jpg").unlink()
    with pytest.raises(DataError, match=r"MMVP Images/3.jpg: image file not found"):
        task.check_images()
    (tmp_path / "MMVP Images" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=r"MMVP Images/3.jpg: cannot open image"):
        task.examples[2].image.load()


def parquet_rows(answers=("(a)", "(b)", "(b)", "(a)")) -> list[dict]:
    return [
        {
            "Index": i,
            "Question": "Is it open?",
            "Options": "(a) Open (b) Closed",
            "Correct Answer": answer,
            "image": hf_image((i * 50, 0, 0)),
        }
        for i, answer in enumerate(answers, start=1)
    ]


def test_lmms_lab_eval_parquet(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", parquet_rows())
    task = get_task("mmvp", tmp_path)
    assert task.metadata["variant"] == "lmms-lab-eval" and task.metadata["source"] == "parquet"
    assert [e.answer for e in task.examples] == ["A", "B", "B", "A"]
    image = task.examples[2].image
    assert image.row == 3 and np.asarray(image.load())[0, 0, 0] == pytest.approx(150, abs=3)
    task.check_images()
    with pytest.raises(ConfigError, match="use Questions.csv for 'original'"):
        get_task("mmvp", tmp_path, variant="original")


def test_parquet_bad_cells_are_named(tmp_path):
    rows = parquet_rows()
    rows[3]["image"] = {"bytes": b"junk", "path": None}
    path = write_parquet(tmp_path / "mmvp.parquet", rows)
    task = get_task("mmvp", tmp_path)
    with pytest.raises(DataError, match=r"mmvp.parquet row 4 column 'image': cannot open image"):
        task.check_images()
    write_parquet(path, [{k: v for k, v in r.items() if k != "Options"} for r in rows])
    with pytest.raises(DataError, match=r"mmvp.parquet: missing column\(s\) Options"):
        get_task("mmvp", tmp_path)


def test_lmms_eval_corrections_on_the_original_csv(tmp_path):
    answers = ["(a)" if i % 2 else "(b)" for i in range(1, 281)]  # 1:(a) 2:(b) ... like the original pairs
    rows = [(f"Question {(i + 1) // 2}?", "(a) x (b) y", a) for i, a in enumerate(answers, start=1)]
    write_mmvp(tmp_path, rows)
    original = get_task("mmvp", tmp_path)
    fixed = get_task("mmvp", tmp_path, variant="lmms-lab-eval")
    changed = {e.id for e, f in zip(original.examples, fixed.examples, strict=True) if e.answer != f.answer}
    assert changed == {"99", "100", "279", "280"}
    assert fixed.metadata["variant"] == "lmms-lab-eval" and fixed.metadata["source"] == "csv"
    with pytest.raises(ConfigError, match="variant='corrected'"):
        get_task("mmvp", tmp_path, variant="corrected")
    short = tmp_path / "short"
    write_mmvp(short, rows[:4])
    with pytest.raises(DataError, match="Index 99 does not hold MMVP's original answer"):
        get_task("mmvp", short, variant="lmms-lab-eval")


def test_the_synthetic_sample_loads_and_answers_itself():
    task = get_task("mmvp", SAMPLE)
    assert len(task.examples) == 20 and len(task.groups) == 10
    task.check_images()
    assert task.score({e.id: e.answer for e in task.examples})["pair_accuracy"] == 1.0
    for first, second in zip(task.examples[::2], task.examples[1::2], strict=True):
        assert first.question == second.question and first.answer != second.answer
        assert first.image.load().size == (112, 112)


def test_the_sample_regenerates_identically(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLE / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_sample(tmp_path)
    assert (tmp_path / "Questions.csv").read_text() == (SAMPLE / "Questions.csv").read_text()
    for index in range(1, 21):
        made = np.asarray(Image.open(tmp_path / "MMVP Images" / f"{index}.jpg"), dtype=float)
        kept = np.asarray(Image.open(SAMPLE / "MMVP Images" / f"{index}.jpg"), dtype=float)
        assert np.abs(made - kept).mean() < 1.0  # identical pixels up to the JPEG encoder's version
