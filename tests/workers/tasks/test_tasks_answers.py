"""Answer parsers and standard errors, on hand-computed cases (docs/tasks.md)."""

from __future__ import annotations

import math

import pytest

from workers.tasks._answers import (
    extract_letter,
    gqa_normalize,
    mme_yes_no,
    parse_rating,
    pope_yes_no,
    vqa_accuracy,
    vqa_normalize,
)
from workers.tasks._stats import clustered_mean, combined_stderr, ratio, ratio_stderr


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("(B)", "B"),
        ("B. Closed", "B"),
        ("The answer is A", "A"),
        (" b ", "B"),
        ("A.", "A"),
        ("Option B is right", "B"),
        ("I choose (A) here", "A"),
        ("Closed", None),  # option text alone names no letter
        ("Blue", None),  # lmms-eval's first-character fallback would say B
        ("club ", None),  # lmms-eval's last pattern would say B
        ("", None),
    ],
)
def test_extract_letter_two_options(text, letter):
    assert extract_letter(text, ("A", "B")) == letter


def test_extract_letter_only_offered_letters():
    assert extract_letter("C", ("A", "B")) is None
    assert extract_letter("(C) 1", ("A", "B", "C", "D")) == "C"
    assert extract_letter("The answer is D.", "ABCD") == "D"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No, there is no dog.", "no"),
        ("There is a dog.", "yes"),  # eval_pope: anything not negated is yes
        ("I am not sure", "no"),
        ("yes. No doubt.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # only the exact words No / not / no negate
        ("", "yes"),
    ],
)
def test_pope_parser_is_eval_pope(text, label):
    assert pope_yes_no(text) == label


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("Y", "yes"),
        ("n", "no"),
        ("Yes, it is.", "yes"),
        ("Not really", "no"),
        ("x", None),
        ("Maybe", None),
        ("The answer is yes", None),
    ],
)
def test_mme_parser(text, label):
    assert mme_yes_no(text) == label


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Two", "2"),
        ("a dog", "dog"),
        ("dog.", "dog"),
        ("yes,", "yes"),
        ("The  Dog\n", "dog"),
        ("2.5", "2.5"),
        ("isnt", "isn't"),
        ("black/white", "black white"),
        ("1,000", "1000"),
        ("Unanswerable", "unanswerable"),
    ],
)
def test_vqa_normalisation(text, normal):
    assert vqa_normalize(text) == normal


def test_vqa_eval_ai_tokenize_drops_question_marks_and_splits_possessives():
    assert vqa_normalize("Tom's dog?", eval_ai_tokenize=True) == "tom 's dog"
    assert vqa_normalize("Tom's dog?") == "tom's dog"


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_k_matching_annotators(k, expected):
    answers = ["dog"] * k + [f"other{i}" for i in range(10 - k)]
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_vqa_accuracy_without_answers_is_nan():
    assert math.isnan(vqa_accuracy("dog", []))


def test_gqa_normalisation():
    assert gqa_normalize(" Red.\n") == "red"
    assert gqa_normalize("on the left") == "on the left"


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("The response is fine.\nRating: 4, somewhat informative", 4),
        ("rating: 0", 0),
        ("no verdict", None),
        ("Rating: 2 ... on second thought Rating: 5", None),
        ("RATING: 6", 6),
    ],
)
def test_mmhal_rating(reply, rating):
    assert parse_rating(reply) == rating


def test_ratio_stderr_of_a_mean_is_sample_sd_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mean = 0.75
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert ratio(values, [1.0] * 4) == mean
    assert ratio_stderr(values, [1.0] * 4) == pytest.approx(sd / 2)


def test_clustered_stderr_by_hand():
    # Two clusters: (2 right of 2), (0 right of 2); R = 0.5; residuals (2 - 1)^2 + (0 - 1)^2 = 2;
    # se^2 = 2 / 1 * 2 / 4^2 = 0.25.
    value, stderr = clustered_mean(["a", "a", "b", "b"], [1.0, 1.0, 0.0, 0.0])
    assert (value, stderr) == (0.5, pytest.approx(0.5))
    # Unclustered, the same answers would claim a smaller error: sd 0.577 / 2.
    assert ratio_stderr([1.0, 1.0, 0.0, 0.0], [1.0] * 4) == pytest.approx(math.sqrt(1 / 3) / 2)


def test_undefined_stderrs_are_nan():
    assert math.isnan(ratio_stderr([1.0], [1.0]))
    assert math.isnan(ratio_stderr([0.0, 0.0], [0.0, 0.0]))
    assert math.isnan(ratio([0.0], [0.0]))
    assert combined_stderr([0.5, 0.5], [0.2, 0.2]) == pytest.approx(math.sqrt(0.02))
