"""Option scoring: first-token ids, and first-token logits agreeing with greedy generation on the tiny models.

The engine answers an option task with the option whose first answer token has the highest logit after the
prompt. Greedy generation restricted to those tokens must produce a text that the task's own parser maps to
the same option, for every option task and both model families. A random model barely varies its choice, so
the option tokens' rows of the output layer are redrawn (seeded) until each task's examples choose at least
two different options: the agreement is then checked where it can fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from task_fixtures import build_task_dir, pope_record, write_pope

from workers.tasks import OptionTokenError, Task, get_task, option_token_ids

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mmvp-sample"
N_PER_TASK = 3


class WordTokenizer:
    """GPT-2-like pre-tokenisation (a leading space belongs to the word), one id per distinct piece."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {
            "input_ids": [
                self.vocab.setdefault(p, len(self.vocab)) for p in re.findall(r" ?[^ \n]+|\n| +", text)
            ]
        }


class Processor:
    def __init__(self) -> None:
        self.tokenizer = WordTokenizer()


def test_option_token_ids_reads_the_answer_token_after_the_prompt():
    tokenizer = WordTokenizer()
    yes, no = option_token_ids(tokenizer, "Q? ASSISTANT:", ["Yes", "No"])
    assert (yes, no) == (tokenizer.vocab[" Yes"], tokenizer.vocab[" No"])
    assert option_token_ids(tokenizer, "assistant\n", ["Yes"]) == (
        tokenizer.vocab["Yes"],
    )  # no space after \n
    assert option_token_ids(Processor(), "ASSISTANT:", ["A", "B"]) == (0 + 1, 2)  # a processor's .tokenizer


def test_option_token_ids_refuses_ambiguous_options():
    tokenizer = WordTokenizer()
    with pytest.raises(OptionTokenError, match="options 'Yes please' and 'Yes sir' share their first token"):
        option_token_ids(tokenizer, "ASSISTANT:", ["Yes please", "Yes sir"])
    with pytest.raises(OptionTokenError, match="merges with the prompt's last token"):
        option_token_ids(tokenizer, "ASSISTANT:", ["Yes"], separator="")
    with pytest.raises(OptionTokenError, match="adds no token"):
        option_token_ids(tokenizer, "ASSISTANT:", [""], separator="")
    with pytest.raises(OptionTokenError, match="no options"):
        option_token_ids(tokenizer, "ASSISTANT:", [])


def option_tasks(root: Path) -> list[Task]:
    pope = [
        pope_record(q, q, obj, label)
        for q, obj, label in ((1, "dog", "yes"), (2, "cat", "no"), (3, "car", "yes"), (4, "kite", "no"))
    ]
    return [
        get_task("mmvp", SAMPLE, limit=2),
        get_task("pope", write_pope(root / "pope", {"random": pope}), split="random"),
        get_task("cv_bench", build_task_dir("cv_bench", root / "cv")[0], split="2D"),
        get_task("mme", build_task_dir("mme", root / "mme")[0]),
    ]


class KeepOnly:
    """A logits processor that allows only ``token_ids``."""

    def __init__(self, token_ids: tuple[int, ...]) -> None:
        self.token_ids = list(token_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.token_ids] = scores[:, self.token_ids]
        return masked


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-llava", "tiny-qwen2-vl"])
def test_option_logits_agree_with_greedy_generation(preset, tmp_path):
    from transformers import LogitsProcessorList

    from var_core.families import family_of
    from workers.models import load_model

    torch.manual_seed(0)
    model, processor = load_model(preset, device="cpu")  # a private copy: its output layer is rewritten below
    family = family_of(model).name
    cases = []  # (task, example, prompt inputs, option token ids, last hidden state)
    for task in option_tasks(tmp_path):
        for example in task.examples[:N_PER_TASK]:
            prompt = task.build_prompt(example, processor, family)
            token_ids = option_token_ids(processor, prompt, example.options)
            inputs = processor(images=example.image.load(), text=prompt, return_tensors="pt")
            with torch.no_grad():
                out = model(**inputs, output_hidden_states=True)
            hidden = out.hidden_states[-1][0, -1]
            torch.testing.assert_close(model.get_output_embeddings()(hidden), out.logits[0, -1])
            cases.append((task, example, inputs, token_ids, hidden))

    head = model.get_output_embeddings().weight
    all_ids = sorted({i for *_, ids, _ in cases for i in ids})
    # Within a task the last hidden states differ little next to their common part: draw rows orthogonal to
    # every task's mean, so that the choice follows what differs between examples.
    tasks = list({id(task): task for task, *_ in cases}.values())
    means = torch.stack([torch.stack([h for t, *_, h in cases if t is task]).mean(0) for task in tasks])
    basis = torch.linalg.qr(means.T).Q
    for seed in range(50):
        rows = torch.randn(len(all_ids), head.shape[1], generator=torch.Generator().manual_seed(seed))
        rows -= (rows @ basis) @ basis.T
        chosen = {}
        for task, example, _, ids, hidden in cases:
            logits = rows[[all_ids.index(i) for i in ids]] @ hidden
            chosen[(task.name, example.id)] = example.options[int(torch.argmax(logits))]
        if all(len({c for (name, _), c in chosen.items() if name == task.name}) >= 2 for task in tasks):
            break
    else:
        pytest.fail("no seed made every task's choice vary")
    with torch.no_grad():
        head[all_ids] = rows

    for task, example, inputs, ids, _ in cases:
        generated = model.generate(
            **inputs,
            max_new_tokens=1,
            do_sample=False,
            logits_processor=LogitsProcessorList([KeepOnly(ids)]),
            return_dict_in_generate=True,
            output_logits=True,
        )
        logits = generated.logits[0][0]  # the model's own first-step logits, before the processor
        best = example.options[int(torch.argmax(logits[list(ids)]))]
        assert best == chosen[(task.name, example.id)]
        new_tokens = generated.sequences[0, inputs["input_ids"].shape[1] :]
        text = processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        assert task.parse_option(example, text) == best, (preset, task.name, example.id, text)
