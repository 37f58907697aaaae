"""The engine equals a plain full-prompt run of the patched model, for every configuration (VAR off included).

Tests taking ``case`` run on the preset table of tests/support.py (every preset in float32 and bfloat16), with the
tolerances stated there.
"""

from __future__ import annotations

import pytest
import torch
from support import assert_same_tokens, assert_var_acted

from var_core import VARConfig
from workers.engine import EvalEngine
from workers.synthetic import write_gqa_folder, write_mmvp_folder
from workers.tasks import get_task, option_token_ids

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Batches as the engine meets them: VAR off as a row beside VAR configurations, a configuration that fans out at
# layer 1 (not 2), the official convention, and VAR off alone (the unpatched attention throughout).
GROUPS = [
    [
        None,
        VARConfig(),
        VARConfig(p=0.95, rho=0.2, summ=0.05),
        VARConfig(tau=12, rho=0.6, p=0.7, first_layer=1, except_last_layer=False),
    ],
    [VARConfig(tau=20, rho=0.5, p=0.6, convention="official"), None],
    [None],
]


@pytest.fixture(scope="module")
def mmvp(tmp_path_factory):
    return get_task("mmvp", data_dir=str(write_mmvp_folder(tmp_path_factory.mktemp("mmvp"), pairs=3)))


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    return get_task("gqa", data_dir=str(write_gqa_folder(tmp_path_factory.mktemp("gqa"), questions=2)))


def reference_logits(engine: EvalEngine, task, example, config):
    """The plain path: the whole prompt through the patched model."""
    prompt, inputs = engine._inputs(task, example)
    handle = engine.handle
    if config is None:
        handle.disable()
    else:
        handle.set(config)
    try:
        with torch.no_grad():
            return prompt, inputs, engine.model(**inputs).logits[0, -1]
    finally:
        handle.enable()


def test_option_choices_equal_full_prompt_run(case, mmvp):
    """Option logits (not only the choice) of every configuration equal the full-prompt run's, within the case's
    ``engine_atol``; choices equal its argmax (in bfloat16 they may differ only at a tie of that tolerance)."""
    spec, model, processor = case
    engine = EvalEngine(model, processor, max_batch=3)
    try:
        results = [r for group in GROUPS for r in engine.evaluate(mmvp, group, mmvp.examples)]
        configs = [r.config for r in results]
        for example in mmvp.examples:
            # a batch holds one convention: the option logits of each group, as evaluate() batched them
            got = torch.cat([engine.option_logits(mmvp, example, group) for group in GROUPS])
            for row, (result, config) in enumerate(zip(results, configs, strict=True)):
                prompt, _, logits = reference_logits(engine, mmvp, example, config)
                ids = list(option_token_ids(processor.tokenizer, prompt, example.options))
                want_logits = logits[ids].float()
                torch.testing.assert_close(got[row], want_logits, atol=spec.engine_atol, rtol=0)
                want, chosen = int(want_logits.argmax()), result.choices[example.id]
                gap = float(want_logits[want] - want_logits[chosen])  # 0 when the choices agree
                assert gap <= spec.tie(spec.engine_atol), (config, example.id, gap)
                assert result.answers[example.id] == example.options[chosen]
        for result in results:
            if result.config is not None:
                assert_var_acted(result.stats.summary())
        assert engine.cache_stats.prepared == len(mmvp.examples)  # one prefix per example, whatever the configs
    finally:
        engine.close()


def test_generated_tokens_equal_generate(case, gqa):
    """Engine tokens equal ``model.generate(do_sample=False)`` of the patched model (bfloat16: up to a near-tie
    of the tolerance, see support.assert_same_tokens), for every configuration of every batch."""
    spec, model, processor = case
    engine = EvalEngine(model, processor, max_batch=4)
    references = {}  # (config, example id) -> (new tokens, their logits): VAR off recurs in several batches
    try:
        for group in GROUPS:
            results = engine.evaluate(gqa, group, gqa.examples)
            for result in results:
                handle = engine.handle
                for example in gqa.examples:
                    key = (result.config, example.id)
                    if key not in references:
                        _, inputs = engine._inputs(gqa, example)
                        if result.config is None:
                            handle.disable()
                        else:
                            handle.set(result.config)
                        try:
                            out = model.generate(
                                **inputs, max_new_tokens=gqa.max_new_tokens, do_sample=False,
                                output_logits=True, return_dict_in_generate=True,
                            )  # fmt: skip
                        finally:
                            handle.enable()
                        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
                        references[key] = (new, [step[0] for step in out.logits])
                    want, logits = references[key]
                    end = next((i for i, t in enumerate(want) if t in engine._eos), len(want))
                    got = result.tokens[example.id]
                    tie = spec.tie(spec.engine_atol)
                    compared = assert_same_tokens(got, want[: len(got)], logits[: len(got)], tie=tie)
                    if compared == len(got):  # no near-tie on the way: the same length too
                        assert got == want[:end], (result.config, example.id)
                    assert end > 0
                if result.config is not None:
                    assert_var_acted(result.stats.summary())
    finally:
        engine.close()


def test_cache_budget_evicts_and_recomputes_identically(tiny, mmvp):
    _, model, processor = tiny
    roomy = EvalEngine(model, processor)
    try:
        want = roomy.evaluate(mmvp, [VARConfig(p=0.9)], mmvp.examples)[0].choices
        one_prefix = max(p.nbytes for p in roomy._cache.on_device.values())
    finally:
        roomy.close()
    tight = EvalEngine(model, processor, cache_bytes=one_prefix + 1)
    try:
        for _ in range(2):
            assert tight.evaluate(mmvp, [VARConfig(p=0.9)], mmvp.examples)[0].choices == want
        assert tight.cache_stats.evictions > 0
        assert tight.cache_stats.prepared == 2 * len(mmvp.examples)
    finally:
        tight.close()


def test_capture_before_after_for_dashboards(tiny, mmvp):
    _, model, processor = tiny
    engine = EvalEngine(model, processor)
    try:
        config = VARConfig(p=0.9)
        data = engine.capture(mmvp, mmvp.examples[0], config)
    finally:
        engine.close()
    n_layers = len(data["layers"])
    rows, cols = data["grid"]
    heads = model.config.get_text_config().num_attention_heads
    assert data["layers"] == (2,)  # 4 layers, first_layer 2, the last excluded
    assert data["before"].shape == data["after"].shape == (n_layers, heads, rows * cols)
    assert data["visual_sinks"].shape == (n_layers, rows * cols) and data["visual_sinks"].any()
    assert data["selected"].any()
    selected = data["selected"][0]
    sinks = data["visual_sinks"][0]
    # selected heads: visual sinks lose exactly 90% of their attention; the other image tokens gain
    before, after = data["before"][0][selected], data["after"][0][selected]
    assert abs(after[:, sinks] - 0.1 * before[:, sinks]).max() < 1e-6
    assert (after[:, ~sinks] >= before[:, ~sinks] - 1e-7).all() and (after[:, ~sinks] > before[:, ~sinks]).any()
    assert data["image"].dtype.name == "uint8" and data["image"].shape[2] == 3
