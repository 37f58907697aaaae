"""Paired comparison of two systems: delta, clustered bootstrap interval, randomisation p-value."""

from __future__ import annotations

import random

import pytest
from task_fixtures import pope_record, write_pope

from workers.synthetic import write_mmvp_folder
from workers.tasks import get_task, paired_comparison


@pytest.fixture(scope="module")
def mmvp(tmp_path_factory):
    return get_task("mmvp", data_dir=str(write_mmvp_folder(tmp_path_factory.mktemp("mmvp"), pairs=40)))


def answers(task, rng: random.Random, right: float) -> dict[str, str]:
    """Each question answered correctly with probability ``right``."""
    wrong = {"A": "B", "B": "A"}
    return {e.id: e.answer if rng.random() < right else wrong[e.answer] for e in task.examples}


def test_identical_systems_differ_by_zero(mmvp):
    same = answers(mmvp, random.Random(0), 0.6)
    result = paired_comparison(mmvp, same, dict(same), metric="accuracy")
    assert result.delta == 0 and result.ci_low == 0 == result.ci_high
    assert result.p_value == 1.0 and not result.gain and result.n_resamples == 2000 and result.n_groups == 40
    assert result.describe().endswith("no evidence of a gain")


def test_seeded_the_same_inputs_give_the_same_answer(mmvp):
    rng = random.Random(1)
    a, b = answers(mmvp, rng, 0.7), answers(mmvp, rng, 0.6)
    assert paired_comparison(mmvp, a, b, seed=5) == paired_comparison(mmvp, a, b, seed=5)


@pytest.mark.slow
def test_equal_systems_calibrated_coverage_and_false_positives(mmvp):
    """Over many seeds of two equally good systems, the 95% interval holds 0 about 95% of the time and p < 0.05
    about 5% of the time (300 simulations: binomial 99% bands)."""
    covered = rejected = 0
    runs = 300
    for seed in range(runs):
        rng = random.Random(seed)
        a, b = answers(mmvp, rng, 0.65), answers(mmvp, rng, 0.65)
        result = paired_comparison(mmvp, a, b, metric="accuracy", resamples=200, seed=seed)
        covered += result.ci_low <= 0 <= result.ci_high
        rejected += result.p_value < 0.05
    assert 0.91 <= covered / runs <= 0.985, covered
    assert 0.015 <= rejected / runs <= 0.09, rejected


def test_a_large_true_gain_is_found(mmvp):
    rng = random.Random(2)
    better, worse = answers(mmvp, rng, 0.9), answers(mmvp, rng, 0.5)
    result = paired_comparison(mmvp, better, worse, metric="accuracy")
    assert result.p_value < 0.01 and result.ci_low > 0 and result.gain
    assert result.delta == pytest.approx(result.value_a - result.value_b)
    assert result.describe().startswith("+") and "groups" in result.describe()


def test_ratio_metric_f1_by_hand(tmp_path):
    """POPE F1 = 2TP / (2TP + FP + FN) is a ratio over images, not a mean: checked on a case by hand."""
    records = [
        pope_record(1, 1, "cat", "yes"),
        pope_record(2, 1, "dog", "no"),
        pope_record(3, 2, "car", "yes"),
        pope_record(4, 2, "bus", "no"),
        pope_record(5, 3, "cup", "yes"),
        pope_record(6, 3, "pen", "no"),
    ]
    task = get_task("pope", str(write_pope(tmp_path, {"random": records}, images=False)), split="random")
    a = {"1": "Yes", "2": "No", "3": "Yes", "4": "Yes", "5": "No", "6": "No"}  # TP 2, FP 1, FN 1: F1 4/6
    b = {"1": "Yes", "2": "Yes", "3": "No", "4": "Yes", "5": "No", "6": "No"}  # TP 1, FP 2, FN 2: F1 2/6
    result = paired_comparison(task, a, b)
    assert result.metric == "f1"
    assert result.value_a == pytest.approx(4 / 6) and result.value_b == pytest.approx(2 / 6)
    assert result.delta == pytest.approx(1 / 3)
    # A is never worse than B on any image, and no draw of three images gives more than 2/3 (all 27 enumerated)
    assert 0 <= result.ci_low <= result.delta <= result.ci_high <= 2 / 3 + 1e-12
    # swap patterns, by hand: image 3 is the same for both; swapping none or both of images 1 and 2 gives
    # |delta| = 1/3, swapping one of them 0.171 (F1 4/7 against 2/5): p = P(|delta_s| >= 1/3) = 1/2
    assert result.p_value == pytest.approx(0.5, abs=0.04) and not result.gain
