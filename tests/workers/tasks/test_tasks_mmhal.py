"""MMHal-Bench: records, a pluggable judge (never the network), the original's rating parse."""

from __future__ import annotations

import pytest
from task_fixtures import mmhal_records, write_mmhal

from workers.tasks import DataError, ScoringError, get_task
from workers.tasks.mmhal import JudgeRequest

REPLIES = [
    "Good.\nRating: 4, somewhat informative, no hallucination",
    "no verdict here",
    "Rating: 2 at first, then Rating: 5",
    "rating: 6",
    "Rating: 0",
    "Rating: 3",
    "Rating: 1",
    "Rating: 5",
]


def test_scores_with_a_fake_judge(tmp_path):
    seen: list[JudgeRequest] = []

    def judge(request: JudgeRequest) -> str:
        seen.append(request)
        return REPLIES[len(seen) - 1]

    task = get_task("mmhal", write_mmhal(tmp_path), judge=judge)
    assert task.text(task.examples[0]) == "What is happening in picture 0?"
    assert task.examples[3].image.path == tmp_path / "images" / "0003_o.jpg"
    m = task.score({e.id: f"answer {e.id}" for e in task.examples})
    ratings = [4, 0, 0, 6, 0, 3, 1, 5]  # no rating and two ratings both score 0
    assert m["score"] == pytest.approx(sum(ratings) / 8)
    assert m["hallucination_rate"] == pytest.approx(4 / 8)  # ratings below 3: 0, 0, 0, 1
    assert m["invalid_rate"] == pytest.approx(2 / 8)
    assert m["type/attribute"] == 4 and m["type/adversarial"] == 0 and m["type/counting"] == 6
    assert seen[0] == JudgeRequest(
        image_content="Dog, Animal",
        question="What is happening in picture 0?",
        gt_answer="A dog is sitting (0).",
        model_answer="answer 0",
    )


def test_scoring_without_a_judge_is_an_error(tmp_path):
    task = get_task("mmhal", write_mmhal(tmp_path))
    with pytest.raises(ScoringError, match="mmhal needs a judge"):
        task.score({e.id: "x" for e in task.examples})
    bad = get_task("mmhal", tmp_path, judge=lambda request: {"rating": 4})
    with pytest.raises(ScoringError, match="returned dict for id 0"):
        bad.score({e.id: "x" for e in bad.examples})


def test_image_path_field_wins_and_bad_records_are_named(tmp_path):
    records = mmhal_records(2)
    records[1]["image_path"] = "elsewhere/pic.jpg"
    task = get_task("mmhal", write_mmhal(tmp_path, records))
    assert task.examples[1].image.path == tmp_path / "elsewhere" / "pic.jpg"
    records[1] = {k: v for k, v in records[1].items() if k != "gt_answer"}
    write_mmhal(tmp_path, records)
    with pytest.raises(DataError, match=r"response_template.json item 2: missing field 'gt_answer'"):
        get_task("mmhal", tmp_path)
