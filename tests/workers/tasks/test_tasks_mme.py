"""MME: both folder layouts, acc + acc+ per category, perception/cognition/total in points."""

from __future__ import annotations

import pytest
from task_fixtures import write_mme

from workers.tasks import DataError, get_task

Q = " Please answer yes or no."
CATEGORIES = {
    "artwork": {  # split layout: images/ + questions_answers_YN/
        "10002": [(f"Is this a painting?{Q}", "Yes"), (f"Is this glassware?{Q}", "No")],
        "10003": [(f"Is this by Monet?{Q}", "Yes"), (f"Is this by Manet?{Q}", "No")],
    },
    "code_reasoning": {  # flat layout, .png
        "0020": [(f"Does it print 3?{Q}", "Yes"), (f"Does it print 4?{Q}", "No")],
    },
}


@pytest.fixture()
def task(tmp_path):
    return get_task("mme", write_mme(tmp_path, CATEGORIES))


def test_loader_and_prompt(task, tmp_path):
    assert task.metadata["categories"] == ("artwork", "code_reasoning")
    assert [e.id for e in task.examples] == [
        "artwork/10002/1",
        "artwork/10002/2",
        "artwork/10003/1",
        "artwork/10003/2",
        "code_reasoning/0020/1",
        "code_reasoning/0020/2",
    ]
    first = task.examples[0]
    assert first.group == "artwork/10002.jpg" and first.image.path == tmp_path / "artwork/images/10002.jpg"
    assert task.examples[4].image.path == tmp_path / "code_reasoning/0020.png"
    assert (first.options, first.answer) == (("Yes", "No"), "Yes")
    assert task.text(first) == "Is this a painting?\nAnswer the question using a single word or phrase."


def test_section8_acc_plus(task):
    # artwork: image 10002 both right, image 10003 one right -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
    # code_reasoning: one image, one right -> acc 1/2, acc+ 0 -> 50
    predictions = {
        "artwork/10002/1": "Yes",
        "artwork/10002/2": "No",
        "artwork/10003/1": "Yes",
        "artwork/10003/2": "Yes",
        "code_reasoning/0020/1": "yes.",
        "code_reasoning/0020/2": "Yes",
    }
    m = task.score(predictions)
    assert m["artwork"] == pytest.approx(125.0) and m["code_reasoning"] == pytest.approx(50.0)
    assert m["perception"] == pytest.approx(125.0) and m["cognition"] == pytest.approx(50.0)
    assert m["total"] == pytest.approx(175.0)
    # per-image values for artwork are 200 and 50: sd 106.07 / sqrt 2 = 75; code_reasoning has one image ->
    # NaN
    assert m["perception_stderr"] == pytest.approx(75.0)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["invalid_rate"] == 0.0
    perfect = task.score({e.id: e.answer for e in task.examples})
    assert perfect["total"] == pytest.approx(400.0)


def test_unparseable_answers_are_wrong_not_guessed(task):
    m = task.score({e.id: "Maybe" for e in task.examples})
    assert m["total"] == 0.0 and m["invalid_rate"] == 1.0
    assert task.parse_option(task.examples[0], "No, it is not") == "No"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"Is this a painting?{Q}\tYes\n", "expected 2 question lines .* found 1"),
        (f"Is this a painting?{Q}\tYes\nIs it?{Q}\tPerhaps\n", "line 2: expected 'question<TAB>Yes|No'"),
        (f"Is this a painting?{Q} Yes\nIs it?{Q}\tNo\n", "line 1: expected 'question<TAB>Yes|No'"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, content, message):
    write_mme(tmp_path, CATEGORIES)
    bad = tmp_path / "artwork" / "questions_answers_YN" / "10003.txt"
    bad.write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        get_task("mme", tmp_path)
    assert str(caught.value).startswith(str(bad))


def test_no_category_folder(tmp_path):
    (tmp_path / "eval_tool").mkdir()
    with pytest.raises(DataError, match="no MME category folder"):
        get_task("mme", tmp_path)
