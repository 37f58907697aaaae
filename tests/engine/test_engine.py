"""The engine equals a plain full-prompt run of the patched model, for every configuration (VAR off included)."""

from __future__ import annotations

import pytest
import torch

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
    return get_task("gqa", data_dir=str(write_gqa_folder(tmp_path_factory.mktemp("gqa"), questions=3)))


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


def test_option_choices_equal_full_prompt_run(tiny, mmvp):
    _, model, processor = tiny
    engine = EvalEngine(model, processor, max_batch=3)
    try:
        results = [r for group in GROUPS for r in engine.evaluate(mmvp, group, mmvp.examples)]
        configs = [r.config for r in results]
        for result, config in zip(results, configs, strict=True):
            for example in mmvp.examples:
                prompt, _, logits = reference_logits(engine, mmvp, example, config)
                ids = list(option_token_ids(processor.tokenizer, prompt, example.options))
                want = int(logits[ids].argmax())
                assert result.choices[example.id] == want, (config, example.id)
                assert result.answers[example.id] == example.options[want]
            if config is not None:
                summary = result.stats.summary()
                assert summary["selected_share"] > 0 and summary["mass_moved_per_row"] > 0, (config, summary)
        assert engine.cache_stats.prepared == len(mmvp.examples)  # one prefix per example, whatever the configs
    finally:
        engine.close()


def test_generated_tokens_equal_generate(tiny, gqa):
    _, model, processor = tiny
    engine = EvalEngine(model, processor, max_batch=4)
    try:
        for group in GROUPS:
            results = engine.evaluate(gqa, group, gqa.examples)
            for result in results:
                handle = engine.handle
                for example in gqa.examples:
                    _, inputs = engine._inputs(gqa, example)
                    if result.config is None:
                        handle.disable()
                    else:
                        handle.set(result.config)
                    try:
                        out = model.generate(**inputs, max_new_tokens=gqa.max_new_tokens, do_sample=False)
                    finally:
                        handle.enable()
                    want = out[0, inputs["input_ids"].shape[1] :].tolist()
                    eos = engine._eos
                    want = want[: next((i for i, t in enumerate(want) if t in eos), len(want))]
                    assert result.tokens[example.id] == want, (result.config, example.id)
                    assert len(want) > 0
                if result.config is not None:
                    summary = result.stats.summary()
                    assert summary["selected_share"] > 0 and summary["mass_moved_per_row"] > 0, summary
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
