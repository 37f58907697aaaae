"""Answer parsers shared by the tasks; each is a port of the cited original, deviations documented in place.

Parsers are pure and never guess: an answer they cannot read comes back as ``None`` and the scorer counts it
wrong (and in ``invalid_rate``). The one exception is POPE, whose official parser has no "unreadable" outcome.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.tasks._base import Example

__all__ = [
    "extract_letter",
    "pope_yes_no",
    "mme_yes_no",
    "vqa_normalize",
    "vqa_accuracy",
    "gqa_normalize",
    "parse_rating",
]


@cache
def _letter_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    cls = f"[{letters}]"
    return tuple(
        re.compile(pattern, flags=re.IGNORECASE)
        for pattern in (
            rf"^\s*\(?({cls})\)?\.?\s*$",  # just the letter, optional parentheses / period
            rf"^\s*\(?({cls})\)?[\.\s]",  # letter at the start
            rf"answer\s+is\s+\(?({cls})\)?",  # "answer is A"
            rf"option\s+\(?({cls})\)?",  # "option A"
            rf"(?<![A-Za-z])\(?({cls})\)?(?:\s|$)",  # any standalone letter
        )
    )


def extract_letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter an answer names, or ``None``.

    lmms-eval:lmms_eval/tasks/mmvp/utils.py ``_extract_answer_letter`` (its five patterns, in order,
    case-insensitive), generalised from A/B to ``letters``. Two deviations, both for answers that name no
    letter: the last pattern needs the letter to start a word (lmms-eval reads "club " as B), and there is no
    first-character fallback (lmms-eval reads "Blue" as B); such answers are unparseable here. As in
    lmms-eval, an article "a" standing alone reads as A.
    """
    allowed = "".join(letter.upper() for letter in letters)
    for pattern in _letter_patterns(allowed):
        match = pattern.search(text.strip())
        if match:
            return match.group(1).upper()
    return None


def pope_yes_no(text: str) -> str:
    """LLaVA:llava/eval/eval_pope.py (= AoiDragon/POPE:evaluate.py) reading of a yes/no answer.

    ``"no"`` if the first sentence has the word ``No``, ``not`` or ``no`` (split on single spaces after dropping
    commas), else ``"yes"``: unreadable text counts as yes.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def mme_yes_no(text: str) -> str | None:
    """lmms-eval:lmms_eval/tasks/mme/utils.py ``parse_pred_ans`` (from Otter); its "other" is ``None``."""
    answer = text.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer)
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return None


# GT-Vision-Lab/VQA:PythonEvaluationTools/vqaEvaluation/vqaEval.py (BSD), identical to
# LLaVA:llava/eval/m4c_evaluator.py EvalAIAnswerProcessor and
# lmms-eval:lmms_eval/tasks/_task_utils/vqa_eval_metric.py.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the original's "(?!<=" is a look-ahead; kept as is
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # The original passes re.UNICODE (32) as sub()'s count: only strings with over 32 periods differ.
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_normalize(text: str, *, eval_ai_tokenize: bool = False) -> str:
    """VQA answer normalisation: whitespace, punctuation, number words, articles, contractions.

    With ``eval_ai_tokenize`` it first applies EvalAIAnswerProcessor's ``word_tokenize`` (lowercase, drop
    ``,`` and ``?``, ``'s`` -> `` 's``), i.e. the full ``EvalAIAnswerProcessor.__call__`` that lmms-eval
    applies to VizWiz predictions and answers (lmms-eval:lmms_eval/tasks/vizwiz_vqa/utils.py); without it, the
    ``process_punctuation`` + ``process_digit_article`` pair that lmms-eval applies to VQAv2 predictions and
    answers (lmms-eval:lmms_eval/tasks/vqav2/utils.py ``vqav2_process_results``).
    """
    if eval_ai_tokenize:
        text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA soft accuracy of a normalised prediction against normalised human answers.

    For each annotator, min(1, matches among the other annotators / 3), averaged (vqaEval.py ``evaluate``);
    with ten answers, k matching annotators give 0.3, 0.6, 0.9, 1.0 for k = 1, 2, 3, >= 4. NaN without
    answers.
    """
    if not answers:
        return float("nan")
    scores = [
        min(1.0, sum(other == prediction for j, other in enumerate(answers) if j != i) / 3)
        for i in range(len(answers))
    ]
    return sum(scores) / len(scores)


def gqa_normalize(text: str) -> str:
    """LLaVA:scripts/convert_gqa_for_eval.py: ``text.rstrip('.').lower()``, after LLaVA's ``strip()``."""
    return text.strip().rstrip(".").lower()


def parse_rating(reply: str) -> int | None:
    """llava-rlhf/LLaVA-RLHF:Eval/eval_gpt_mmhal.py: the one ``"rating: N"`` (N in 0..6) in the judge's reply.

    ``None`` when there is none or more than one (the original then scores 0 with a warning).
    """
    found = [score for score in range(7) if f"rating: {score}" in reply.lower()]
    return found[0] if len(found) == 1 else None


def letter_option(example: Example, raw: str) -> str | None:
    """The option letter of ``example`` that ``raw`` names (:func:`extract_letter` over its options)."""
    return extract_letter(raw, example.options or ())
