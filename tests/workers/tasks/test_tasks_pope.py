"""POPE: the real label files in tests/data/pope, hand-computed scores, both file shapes, bad rows."""

from __future__ import annotations

import json
import math

import pytest
from task_fixtures import POPE_DIR, pope_record, write_json, write_jsonl, write_pope

from var_core.errors import ConfigError
from workers.tasks import DataError, get_task

SPLITS = ("random", "popular", "adversarial")


@pytest.fixture(scope="module")
def real():
    if not (POPE_DIR / "coco_pope_random.json").is_file():
        pytest.fail(f"the POPE label files are missing: {POPE_DIR}")
    return get_task("pope", POPE_DIR)


def raw_lines(split: str) -> list[dict]:
    return [json.loads(line) for line in (POPE_DIR / f"coco_pope_{split}.json").read_text().splitlines()]


def test_real_files_counts(real):
    counts = {s: sum(e.meta["split"] == s for e in real.examples) for s in SPLITS}
    assert counts == {"random": 2910, "popular": 3000, "adversarial": 3000}
    yes = {s: sum(e.meta["split"] == s and e.answer == "Yes" for e in real.examples) for s in SPLITS}
    assert yes == {"random": 1500, "popular": 1500, "adversarial": 1500}
    assert len(real.groups) == 500  # the same 500 COCO images in every split
    assert real.examples[0].id == "random/1" and real.examples[-1].id == "adversarial/3000"
    single = get_task("pope", POPE_DIR, split="random")
    assert len(single.examples) == 2910 and single.examples[0].id == "1"
    assert single.examples[0].question == "Is there a snowboard in the image?"
    assert single.text(single.examples[0]) == (
        "Is there a snowboard in the image?\nAnswer the question using a single word or phrase."
    )


def test_real_files_always_yes_by_hand(real):
    metrics = real.score({e.id: "Yes" for e in real.examples})
    # random: TP 1500, FP 1410; popular/adversarial: TP 1500, FP 1500; no TN, no FN.
    assert (metrics["random/tp"], metrics["random/fp"], metrics["random/tn"], metrics["random/fn"]) == (
        1500,
        1410,
        0,
        0,
    )
    assert metrics["random/precision"] == pytest.approx(1500 / 2910)
    assert metrics["random/recall"] == 1.0 and metrics["random/yes_ratio"] == 1.0
    assert metrics["random/f1"] == pytest.approx(3000 / 4410)
    assert metrics["popular/f1"] == pytest.approx(2 / 3) and metrics["adversarial/accuracy"] == 0.5
    assert metrics["f1"] == pytest.approx((3000 / 4410 + 2 / 3 + 2 / 3) / 3)
    assert metrics["pooled_f1"] == pytest.approx(9000 / (9000 + 4410))
    never = real.score({e.id: "No" for e in real.examples})
    assert never["random/f1"] == 0.0 and math.isnan(never["random/precision"]) and never["yes_ratio"] == 0.0


def test_real_files_parity_rule_against_an_independent_count(real):
    """Predict yes for odd question ids; count TP/FP/TN/FN straight from the JSON lines."""
    predictions = {e.id: "Yes" if e.meta["question_id"] % 2 else "No, it is not." for e in real.examples}
    metrics = real.score(predictions)
    f1s = []
    for split in SPLITS:
        lines = raw_lines(split)
        tp = sum(q["question_id"] % 2 == 1 and q["label"] == "yes" for q in lines)
        fp = sum(q["question_id"] % 2 == 1 and q["label"] == "no" for q in lines)
        tn = sum(q["question_id"] % 2 == 0 and q["label"] == "no" for q in lines)
        fn = sum(q["question_id"] % 2 == 0 and q["label"] == "yes" for q in lines)
        assert [metrics[f"{split}/{k}"] for k in ("tp", "fp", "tn", "fn")] == [tp, fp, tn, fn]
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1s.append(2 * precision * recall / (precision + recall))  # eval_pope's formula
        assert metrics[f"{split}/f1"] == pytest.approx(f1s[-1])
        assert metrics[f"{split}/accuracy"] == pytest.approx((tp + tn) / len(lines))
        assert metrics[f"{split}/yes_ratio"] == pytest.approx((tp + fp) / len(lines))
    assert metrics["f1"] == pytest.approx(sum(f1s) / 3)
    assert 0 < metrics["f1_stderr"] < 0.02


ANSWERS = {  # (label, answer) -> eval_pope reads it as yes/no
    1: ("yes", "Yes"),  # TP
    2: ("no", "No"),  # TN
    3: ("no", "No, there is no dog."),  # TN
    4: ("no", "There is a dog."),  # FP: not negated -> yes
    5: ("yes", "I am not sure"),  # FN: "not" -> no
    6: ("yes", "yes"),  # TP
}


def section8_dir(tmp_path):
    random = [pope_record(q, 1 + q // 3, "dog", label) for q, (label, _) in ANSWERS.items()]
    popular = [
        pope_record(1, 1, "dog", "yes"),
        pope_record(2, 1, "cat", "no"),
        pope_record(3, 2, "car", "no"),
        pope_record(4, 2, "bus", "no"),
    ]
    adversarial = [pope_record(1, 1, "dog", "yes"), pope_record(2, 2, "cat", "yes")]
    return write_pope(tmp_path, {"random": random, "popular": popular, "adversarial": adversarial})


def test_section8_per_split_and_pooled(tmp_path):
    task = get_task("pope", section8_dir(tmp_path))
    predictions = {f"random/{q}": answer for q, (_, answer) in ANSWERS.items()}
    predictions |= {"popular/1": "Yes", "popular/2": "Yes", "popular/3": "No", "popular/4": "No"}
    predictions |= {"adversarial/1": "Yes", "adversarial/2": "No"}
    m = task.score(predictions)
    # random: TP 2, FP 1, TN 2, FN 1
    assert [m[f"random/{k}"] for k in ("tp", "fp", "tn", "fn")] == [2, 1, 2, 1]
    assert (m["random/accuracy"], m["random/precision"], m["random/recall"]) == (4 / 6, 2 / 3, 2 / 3)
    assert m["random/f1"] == pytest.approx(2 / 3) and m["random/yes_ratio"] == 0.5
    # popular: TP 1, FP 1, TN 2, FN 0 -> F1 = 2/3; adversarial: TP 1, FN 1 -> F1 = 2/3, precision 1
    assert [m[f"popular/{k}"] for k in ("tp", "fp", "tn", "fn")] == [1, 1, 2, 0]
    assert m["popular/f1"] == pytest.approx(2 / 3) and m["popular/yes_ratio"] == 0.5
    assert m["adversarial/precision"] == 1.0 and m["adversarial/recall"] == 0.5
    assert m["f1"] == pytest.approx(2 / 3)  # mean of per-split F1
    assert m["accuracy"] == pytest.approx((4 / 6 + 3 / 4 + 1 / 2) / 3)
    # pooled over the 12 questions: TP 4, FP 2, FN 2 -> 8 / 12; here equal, but not in general:
    assert m["pooled_f1"] == pytest.approx(8 / 12)
    predictions["adversarial/2"] = "Yes"  # adversarial F1 -> 1.0
    m = task.score(predictions)
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["pooled_f1"] == pytest.approx(10 / 13)  # TP 5, FP 2, FN 1
    assert m["f1"] != pytest.approx(m["pooled_f1"])


def test_single_split_has_plain_keys_and_file_ids(tmp_path):
    task = get_task("pope", section8_dir(tmp_path), split="random")
    assert [e.id for e in task.examples] == [str(q) for q in ANSWERS]
    metrics = task.score({str(q): answer for q, (_, answer) in ANSWERS.items()})
    assert metrics["f1"] == pytest.approx(2 / 3) and "random/f1" not in metrics
    assert task.parse_option(task.examples[0], "There is a dog.") == "Yes"
    with pytest.raises(ConfigError, match="no split 'train'"):
        get_task("pope", tmp_path, split="train")


def test_seem_style_json_array(tmp_path):
    records = [pope_record(1, 5, "dog", "yes"), pope_record(2, 5, "cat", "no")]
    for split in SPLITS:
        write_json(tmp_path / f"aokvqa_pope_seem_{split}.json", records)
    task = get_task("pope", tmp_path, dataset="aokvqa")
    assert len(task.examples) == 6 and task.metadata["dataset"] == "aokvqa"
    assert task.score({e.id: "Yes" for e in task.examples})["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="dataset='vg'"):
        get_task("pope", tmp_path, dataset="vg")


def test_images_come_from_image_dir(tmp_path):
    data_dir = write_pope(tmp_path / "labels", {"random": [pope_record(1, 7, "dog", "yes")]}, images=False)
    task = get_task("pope", data_dir, split="random", image_dir=tmp_path / "coco")
    assert task.examples[0].image.path == tmp_path / "coco" / "COCO_val2014_000000000007.jpg"
    with pytest.raises(DataError, match="COCO_val2014_000000000007.jpg: image file not found"):
        task.check_images()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}\n{"question_id": 2,\n',
            "line 2: malformed JSON",
        ),
        (
            '{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}\n',
            "line 1: unknown label 'maybe'",
        ),
        ('{"question_id": 1, "image": "a.jpg", "label": "yes"}\n', "line 1: missing field 'text'"),
        (
            '\n{"question_id": 1, "image": "a.jpg", "text": "?", "label": "yes"}\n'
            '{"question_id": 1, "image": "b.jpg", "text": "?", "label": "no"}\n',
            "line 3: duplicate id '1' \\(first at line 2\\)",
        ),
        ('["not", "objects"]', "item 1: expected a JSON object"),
        ("", "file is empty"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, content, message):
    (tmp_path / "coco_pope_random.json").write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        get_task("pope", tmp_path, split="random")
    assert str(caught.value).startswith(str(tmp_path / "coco_pope_random.json"))


def test_missing_split_file_is_named(tmp_path):
    write_jsonl(tmp_path / "coco_pope_random.json", [pope_record(1, 1, "dog", "yes")])
    with pytest.raises(DataError, match="coco_pope_popular.json: file not found"):
        get_task("pope", tmp_path)
