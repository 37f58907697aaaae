"""The engine equals a plain full-prompt run of the patched model, for every configuration (VAR off included).

Tests taking ``case`` run on the preset table of tests/support.py (every preset in float32 and bfloat16), with the
tolerances stated there.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from support import assert_same_tokens, assert_var_acted

from dashboards import AttentionCapture
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
            references = {}  # config -> its full-prompt option logits (VAR off recurs in several groups)
            for row, (result, config) in enumerate(zip(results, configs, strict=True)):
                if config not in references:
                    prompt, _, logits = reference_logits(engine, mmvp, example, config)
                    references[config] = logits[
                        list(option_token_ids(processor.tokenizer, prompt, example.options))
                    ]
                want_logits = references[config].float()
                torch.testing.assert_close(got[row], want_logits, atol=spec.engine_atol, rtol=0)
                want, chosen = int(want_logits.argmax()), result.choices[example.id]
                gap = float(want_logits[want] - want_logits[chosen])  # 0 when the choices agree
                assert gap <= spec.tie(spec.engine_atol), (config, example.id, gap)
                assert result.answers[example.id] == example.options[chosen]
        for result in results:
            if result.config is not None:
                assert_var_acted(result.stats.summary())
        # one prefix per example, whatever the configs
        assert engine.cache_stats.prepared == len(mmvp.examples)
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
                                **inputs,
                                max_new_tokens=gqa.max_new_tokens,
                                do_sample=False,
                                output_logits=True,
                                return_dict_in_generate=True,
                            )
                        finally:
                            handle.enable()
                        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
                        references[key] = (new, [step[0] for step in out.logits])
                    want, logits = references[key]
                    end = next((i for i, t in enumerate(want) if t in engine._eos), len(want))
                    got = result.tokens[example.id]
                    tie = partial(spec.tie, spec.engine_atol)
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
    n_layers = len(data.layers)
    rows, cols = data.grid
    heads = model.config.get_text_config().num_attention_heads
    assert data.layers == (2,)  # 4 layers, first_layer 2, the last excluded
    assert data.before.shape == data.after.shape == (n_layers, heads, rows * cols)
    assert data.visual_sinks.shape == (n_layers, rows * cols) and data.visual_sinks.any()
    assert data.selected.any()
    selected = data.selected[0]
    sinks = data.visual_sinks[0]
    # selected heads: visual sinks lose exactly 90% of their attention; the other image tokens gain
    before, after = data.before[0][selected], data.after[0][selected]
    assert abs(after[:, sinks] - 0.1 * before[:, sinks]).max() < 1e-6
    assert (after[:, ~sinks] >= before[:, ~sinks] - 1e-7).all() and (
        after[:, ~sinks] > before[:, ~sinks]
    ).any()
    assert data.image.dtype.name == "uint8" and data.image.shape[2] == 3
    shown = AttentionCapture.of(data)  # what the dashboards draw: the image fitted to the token grid
    assert shown.image.shape[0] * cols == shown.image.shape[1] * rows and shown.title.startswith("mmvp ")


def test_host_tier_spills_and_reloads_identically(anyres, mmvp):
    """On a CPU with host_tier=True: a device budget of one prefix spills the others to host copies, which
    come back bit-identical (the same option logits, the same tensors), with nothing recomputed."""
    _, model, processor = anyres
    configs, examples = [None, VARConfig(p=0.9)], mmvp.examples[:3]
    roomy = EvalEngine(model, processor)
    try:
        want = {e.id: roomy.option_logits(mmvp, e, configs) for e in examples}
        prefixes = {key: entry.tensors() for key, entry in roomy._cache.on_device.items()}
        one_prefix = max(entry.nbytes for entry in roomy._cache.on_device.values())
    finally:
        roomy.close()
    tight = EvalEngine(model, processor, cache_bytes=one_prefix + 1, host_cache_bytes=1 << 34, host_tier=True)
    try:
        for _ in range(2):
            for example in examples:
                assert torch.equal(tight.option_logits(mmvp, example, configs), want[example.id])
        stats = tight.cache_stats
        assert stats.spills > 0 and stats.host_hits > 0, stats
        assert stats.evictions == 0 and stats.prepared == len(examples), stats  # reloaded, not recomputed
        assert len(tight._cache.on_device) == 1 and len(tight._cache.on_host) == len(examples) - 1
        key = next(iter(tight._cache.on_host))
        reloaded = tight._cache.get(key).tensors()  # back from the host tier
        assert all(torch.equal(a, b) for a, b in zip(reloaded, prefixes[key], strict=True))
    finally:
        tight.close()


def test_host_tier_budget_counts_what_the_copies_take(anyres, mmvp):
    """The host tier holds what its budget allows, counted as the bytes its buffers take; beyond, evicted."""
    from workers.prefix_cache import _pinned_size, _to_host

    _, model, processor = anyres
    engine = EvalEngine(model, processor, cache_bytes=1, host_cache_bytes=0, host_tier=True)
    try:
        engine.prepare(mmvp, mmvp.examples[:1])
        entry = next(iter(engine._cache.on_device.values()))
    finally:
        engine.close()
    copy, size = _to_host(entry, pin=False)
    # one buffer, aligned views
    assert size >= entry.nbytes and size < entry.nbytes + 64 * len(entry.tensors())
    assert all(torch.equal(a, b) for a, b in zip(copy.tensors(), entry.tensors(), strict=True))
    assert [_pinned_size(n) for n in (1, 4096, 4097, 3 << 20)] == [1, 4096, 8192, 4 << 20]
    two = EvalEngine(model, processor, cache_bytes=1, host_cache_bytes=2 * size, host_tier=True)
    try:
        two.prepare(mmvp, mmvp.examples)  # 6 prefixes: 1 on the device, 2 on the host, 3 evicted
        assert len(two._cache.on_host) == 2 and two.cache_stats.evictions == len(mmvp.examples) - 3
        assert two._cache.host_used <= 2 * size
    finally:
        two.close()


def test_cache_budgets_follow_free_memory(anyres, monkeypatch):
    """Default budgets come from the memory free once the model is loaded; the host tier is off on a CPU."""
    from workers import prefix_cache

    _, model, processor = anyres
    engine = EvalEngine(model, processor)
    try:
        available = prefix_cache._available_host_bytes()
        assert 0 < engine._cache.device_bytes <= available and engine._cache.host_bytes == 0
    finally:
        engine.close()
    # a 24 GiB GPU with 20 GiB free after the model: 4.8 GiB (20%) stays free for activations
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 << 30, 24 << 30))
    monkeypatch.setattr(prefix_cache, "_available_host_bytes", lambda: 64 << 30)
    device, host = prefix_cache.memory_budgets(torch.device("cuda", 0))
    assert device == int((20 << 30) - 0.2 * (24 << 30)) and host == 32 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 << 30, 8 << 30))
    assert prefix_cache.memory_budgets(torch.device("cuda", 0))[0] == 1 << 30  # at least 2 GiB headroom
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 << 30, 8 << 30))
    assert prefix_cache.memory_budgets(torch.device("cuda", 0))[0] == 0


@pytest.fixture()
def generation_config(anyres):
    """The preset's generation config, restored after the test."""
    _, model, _ = anyres
    saved = model.generation_config
    model.generation_config = saved.__class__.from_dict(saved.to_dict())
    yield model.generation_config
    model.generation_config = saved


def test_generation_config_is_applied(anyres, gqa, generation_config):
    """A repetition penalty (Qwen2-VL's checkpoints ship one) changes greedy tokens; the engine applies it as
    generate() does, on the prompt and the generated tokens."""
    _, model, processor = anyres
    generation_config.repetition_penalty = 1.8
    generation_config.no_repeat_ngram_size = 3
    engine = EvalEngine(model, processor)
    try:
        results = engine.evaluate(gqa, [VARConfig(p=0.9)], gqa.examples)
        differs = False
        for result in results:
            if result.config is None:
                engine.handle.disable()
            else:
                engine.handle.set(result.config)
            try:
                for example in gqa.examples:
                    _, inputs = engine._inputs(gqa, example)
                    n = gqa.max_new_tokens
                    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)[
                        0, inputs["input_ids"].shape[1] :
                    ]
                    plain = model.generate(
                        **inputs,
                        max_new_tokens=n,
                        do_sample=False,
                        repetition_penalty=1.0,
                        no_repeat_ngram_size=0,
                    )[0, inputs["input_ids"].shape[1] :]
                    want = out.tolist()
                    want = want[: next((i for i, t in enumerate(want) if t in engine._eos), len(want))]
                    assert result.tokens[example.id] == want, (result.config, example.id)
                    differs |= not torch.equal(out, plain)
            finally:
                engine.handle.enable()
        assert differs  # the settings changed tokens: applying them mattered
    finally:
        engine.close()


def test_generation_config_the_engine_cannot_reproduce_is_refused(anyres, generation_config):
    from workers.decoding import UnsupportedGenerationError

    _, model, processor = anyres
    generation_config.num_beams = 4
    with pytest.raises(
        UnsupportedGenerationError, match=r"sets num_beams=4: the engine decodes greedily"
    ) as info:
        EvalEngine(model, processor)
    assert "\n" not in str(info.value)
    generation_config.num_beams = None
    generation_config.temperature, generation_config.top_p = 0.1, 0.001  # sampling only: greedy ignores them
    EvalEngine(model, processor).close()
