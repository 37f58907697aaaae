"""VQAv2, VizWiz and GQA: official files, VQA soft accuracy with normalisation, exact match."""

from __future__ import annotations

import pytest
from task_fixtures import write_gqa, write_json, write_vizwiz, write_vqav2

from workers.tasks import DataError, get_task


def test_vqav2_normalisation_and_soft_accuracy(tmp_path):
    questions = [
        (1, 100, "How many dogs?", ["2"] * 4 + ["3"] * 6),  # k = 4 for "2"
        (2, 100, "How many cats?", ["3"] * 3 + ["4"] * 7),  # k = 3 for "3"
        (3, 200, "What animal?", ["dog"] * 2 + ["cat"] * 8),  # k = 2 for "dog"
        (4, 300, "What is it?", ["a dog", "yes"] + ["cat"] * 8),  # "a dog" -> "dog": k = 1
    ]
    task = get_task("vqav2", write_vqav2(tmp_path, questions))
    assert task.text(task.examples[0]) == "How many dogs?\nAnswer the question using a single word or phrase."
    assert task.examples[0].image.path == tmp_path / "val2014" / "COCO_val2014_000000000100.jpg"
    assert task.groups == ("100", "200", "300")
    m = task.score({"1": "Two", "2": "three.", "3": "A dog", "4": "dog,"})
    assert m["accuracy"] == pytest.approx((1.0 + 0.9 + 0.6 + 0.3) / 4)
    assert task.score({"1": "2", "2": "3", "3": "dog", "4": "yes,"})["accuracy"] == pytest.approx(2.8 / 4)
    task.check_images()


def test_vizwiz_unanswerable_and_eval_ai_processing(tmp_path):
    items = [
        ("VizWiz_val_00000001.jpg", "what is this?", ["unanswerable"] * 10),
        ("VizWiz_val_00000002.jpg", "WHAT COLOR is the shirt?", ["blue"] * 3 + ["navy"] * 7),
    ]
    task = get_task("vizwiz", write_vizwiz(tmp_path, items))
    assert [e.id for e in task.examples] == ["VizWiz_val_00000001", "VizWiz_val_00000002"]
    assert task.text(task.examples[1]) == (
        "What color is the shirt?\nWhen the provided information is insufficient, respond with 'Unanswerable'."
        "\nAnswer the question using a single word or phrase."
    )
    m = task.score({"VizWiz_val_00000001": "Unanswerable", "VizWiz_val_00000002": "Blue?"})
    assert m["accuracy"] == pytest.approx((1.0 + 0.9) / 2)


def test_gqa_exact_match(tmp_path):
    task = get_task(
        "gqa",
        write_gqa(
            tmp_path,
            {
                "201": ("n1", "What color is the car?", "red"),
                "202": ("n1", "Is it on the left?", "yes"),
                "203": ("n2", "What is on the table?", "laptop"),
            },
        ),
    )
    assert task.examples[0].image.path == tmp_path / "images" / "n1.jpg"
    m = task.score({"201": "Red.", "202": " yes", "203": "a laptop"})
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy_stderr"] > 0


def test_bad_rows_name_file_and_row(tmp_path):
    write_vqav2(tmp_path, [(1, 100, "How many?", ["2"] * 10)])
    questions = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    write_json(
        questions,
        {
            "questions": [
                {"image_id": 100, "question": "How many?", "question_id": 1},
                {"image_id": 100, "question": "Why?", "question_id": 2},
            ]
        },
    )
    with pytest.raises(DataError, match=r"questions.json item 2: question_id 2 has no entry in"):
        get_task("vqav2", tmp_path)
    write_json(questions, {"questions": [{"image_id": 100, "question_id": 1}]})
    with pytest.raises(DataError, match=r"questions.json item 1: missing field 'question'"):
        get_task("vqav2", tmp_path)
    questions.write_text('{"questions": [')
    with pytest.raises(DataError, match=r"questions.json line 1: malformed JSON"):
        get_task("vqav2", tmp_path)
    write_json(tmp_path / "val.json", [{"image": "a.jpg", "question": "what?", "answers": ["blue"]}])
    with pytest.raises(DataError, match=r"val.json item 1: field 'answers' should be a non-empty list of"):
        get_task("vizwiz", tmp_path)
    write_json(tmp_path / "testdev_balanced_questions.json", {"5": {"imageId": "n1", "question": "What?"}})
    with pytest.raises(DataError, match=r"testdev_balanced_questions.json item 1: missing field 'answer'"):
        get_task("gqa", tmp_path)
