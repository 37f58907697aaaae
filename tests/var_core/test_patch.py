"""VAR on real architectures (the tiny presets, random weights, planted sinks): identity, exactness, effect.

Tests taking ``case`` run on the preset table of tests/support.py: every preset in float32 and bfloat16, with
the tolerances stated there.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch
from support import assert_same_tokens, build_prompt, make_image, on_model
from transformers import DynamicCache

import var_core
from var_core import UnsupportedModelError, VARConfig, discover_sink_dims, patch, redistribute, sink_scores
from var_core.families import decoder_layers, image_token_id
from workers.models import TINY_SINK_DIMS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@torch.no_grad()
def logits_of(model, inputs, **kw):
    return model(**inputs, **kw).logits


def assert_var_acted(handle, min_moved=1e-4):
    summary = handle.stats().summary()
    assert summary["selected_share"] > 0, summary
    assert summary["mass_moved_per_row"] > min_moved, summary
    assert summary["visual_sinks_per_layer"] > 0 and summary["text_sinks_per_layer"] > 0, summary
    return summary


def case_inputs(
    processor, model, question="Is the circle red or blue? Answer with the option's letter. A. Red B. Blue"
):
    return on_model(
        processor(images=make_image(0), text=build_prompt(processor, question), return_tensors="pt"), model
    )


def test_disabled_equals_unpatched_logits_and_tokens(case):
    spec, model, processor = case
    inputs = case_inputs(processor, model)
    ref = logits_of(model, inputs)
    ref_tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with patch(model, VARConfig(p=0.9)) as handle:
        handle.collect_stats = True
        changed = logits_of(model, inputs)
        assert_var_acted(handle)
        assert not torch.allclose(changed, ref, atol=1e-4)
        handle.disable()
        assert torch.equal(logits_of(model, inputs), ref)
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), ref_tokens)
    assert torch.equal(logits_of(model, inputs), ref)  # removed: the model is back to itself
    assert model.config.get_text_config()._attn_implementation == "sdpa"


def test_prefill_fills_cache_and_sink_scores_like_a_full_call(tiny, tiny_inputs):
    _, model, _ = tiny
    with patch(model) as handle, torch.no_grad():
        full_state = handle.new_state()
        full = model.model(**tiny_inputs, var_state=full_state, use_cache=True).past_key_values
        state = handle.new_state()
        empty = DynamicCache(config=model.config.get_text_config())
        handle.collect_stats = True
        cache = handle.prefill(model.model, past_key_values=empty, var_state=state, **tiny_inputs)
        assert_var_acted(handle)  # the keys compared below come after VAR rewrote the question's rows
    assert cache is empty  # and the state carries no switch of that call: they live in CallOptions
    assert {f.name for f in dataclasses.fields(state)}.isdisjoint(
        {"kv_only", "shared_prefix", "last_position_only"}
    )
    assert len(cache.layers) == len(full.layers) == handle.num_layers
    for stopped, whole in zip(cache.layers, full.layers, strict=True):
        assert torch.equal(stopped.keys, whole.keys) and torch.equal(stopped.values, whole.values)
    assert state.seen == full_state.seen == tiny_inputs["input_ids"].shape[1]
    assert sorted(state.peak) == sorted(full_state.peak) == list(range(handle.num_layers))
    for layer in state.peak:
        assert torch.equal(state.peak[layer], full_state.peak[layer])
        assert torch.equal(state.mean_sq[layer], full_state.mean_sq[layer])


def test_only_language_model_is_routed(tiny):
    _, model, _ = tiny
    with patch(model):
        assert model.config.get_text_config()._attn_implementation == "varsweep_sdpa"
        assert model.config.vision_config._attn_implementation == "sdpa"


def test_p_changes_logits_paper_convention(tiny, tiny_inputs):
    _, model, _ = tiny
    with patch(model, VARConfig(p=0.0)) as handle:
        handle.collect_stats = True
        none_moved = logits_of(model, tiny_inputs)
        assert handle.stats().summary()["mass_moved_per_row"] == 0.0
        handle.set(VARConfig(p=0.9))
        handle.collect_stats = True
        moved = logits_of(model, tiny_inputs)
        assert_var_acted(handle)
    assert (moved - none_moved).abs().max() > 1e-3


def test_using_scopes_configurations_and_statistics_and_restores_the_handle(tiny, tiny_inputs):
    """``handle.using``: VAR with the block's configurations and its statistics in the run; VAR off rows alone are
    the unpatched model; the handle's configuration, switch and statistics come back, after an error too."""
    _, model, _ = tiny
    unpatched = logits_of(model, tiny_inputs)
    default = VARConfig(p=0.0)
    with patch(model, default) as handle:
        with handle.using(VARConfig(p=0.9), stats=True) as run:
            moved = logits_of(model, tiny_inputs)
        assert run.stats is not None and run.stats.summary()["mass_moved_per_row"] > 1e-4
        assert run.stats.summary()["selected_share"] > 0
        assert (moved - unpatched).abs().max() > 1e-3
        assert handle.configs == (default,) and handle.enabled and not handle.collect_stats
        # the block's statistics stayed in the run
        assert handle.stats().summary()["mass_moved_per_row"] == 0.0
        with handle.using([None]) as off:
            torch.testing.assert_close(logits_of(model, tiny_inputs), unpatched, atol=0, rtol=0)
        assert off.stats is None and handle.enabled
        handle.disable()
        with pytest.raises(RuntimeError, match="inside"), handle.using(VARConfig(p=0.5), stats=True):
            assert handle.enabled and handle.collect_stats
            raise RuntimeError("inside the block")
        assert handle.configs == (default,) and not handle.enabled and not handle.collect_stats


@pytest.mark.parametrize(
    "config",
    [
        VARConfig(tau=20, rho=0.5, p=0.8, first_layer=2, except_last_layer=True),
        VARConfig(tau=20, rho=0.5, p=0.3, first_layer=3, convention="official"),  # the last layer, official
    ],
    ids=["paper-layer2", "official-last-layer"],
)
def test_patched_maps_equal_redistribute_of_unpatched_maps(case, config):
    """With VAR active in one layer only, that layer's maps are redistribute() of the unpatched (eager) maps."""
    spec, model, processor = case
    inputs = case_inputs(processor, model)
    layer = config.first_layer
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            base = model(**inputs, output_attentions=True, output_hidden_states=True)
        with patch(model, config, path="eager") as handle:
            handle.collect_stats = True
            with torch.no_grad():
                patched = model(**inputs, output_attentions=True)
            assert_var_acted(handle)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    ids = inputs["input_ids"]
    visual = ids == image_token_id(model)
    image_end = int(visual[0].nonzero()[-1]) + 1
    eps = 1e-6 if config.convention == "official" else 0.0
    phi = sink_scores(base.hidden_states[layer], TINY_SINK_DIMS, eps=eps)
    sinks = var_core.sink_mask(phi, config)
    queries = torch.arange(ids.shape[1])[None, :] >= image_end
    want, selected = redistribute(base.attentions[layer], visual, sinks, queries, config)
    assert selected.any() and (visual & sinks).any()
    assert not torch.allclose(want, base.attentions[layer])
    moved = (want.float() - base.attentions[layer].float()).abs().max()
    assert moved > 5 * spec.probs_atol  # the rewrite is far larger than the tolerance it is checked to
    tolerance = {"atol": spec.probs_atol, "rtol": 1e-5 if spec.dtype == torch.float32 else spec.rtol}
    # bfloat16: the reference's probabilities (bf16 eager) are off by up to probs_atol, the patched path's
    # (float32 from q and k on) much less, so a row whose selection is a near-tie of rho or summ may be decided
    # differently: compared everywhere else, and such rows must stay rare (a tenth of the rows at most)
    ties = selection_ties(base.attentions[layer], visual, sinks, queries, config, spec.tie(spec.probs_atol))
    assert ties.sum() <= 0.1 * queries.sum() * ties.shape[1], int(ties.sum())
    keep = ~ties[..., None]
    torch.testing.assert_close(patched.attentions[layer] * keep, want * keep, **tolerance)
    for earlier in range(layer):  # untouched layers, same inputs: same maps
        torch.testing.assert_close(patched.attentions[earlier], base.attentions[earlier], **tolerance)


def selection_ties(attn, visual, sinks, queries, config, margin):
    """``[B, H, Q]`` rows whose selection changes when rho or summ moves by ``margin`` either way (none at 0)."""
    ties = torch.zeros(attn.shape[:3], dtype=torch.bool)
    if margin == 0:
        return ties
    for name in ("rho", "summ"):
        value = getattr(config, name)
        low, high = (
            dataclasses.replace(config, **{name: min(1.0, max(0.0, value + d))}) for d in (-margin, margin)
        )
        ties |= (
            redistribute(attn, visual, sinks, queries, low)[1]
            != redistribute(attn, visual, sinks, queries, high)[1]
        )
    return ties


def test_fast_path_equals_eager_reference(tiny, tiny_inputs):
    _, model, _ = tiny
    config = VARConfig(tau=20, rho=0.5, p=0.7, except_last_layer=False)
    results = {}
    for path in ("eager", "fast"):
        with patch(model, config, path=path) as handle:
            handle.collect_stats = True
            logits = logits_of(model, tiny_inputs)
            tokens = model.generate(**tiny_inputs, max_new_tokens=8, do_sample=False)
            results[path] = (logits, tokens, assert_var_acted(handle))
    torch.testing.assert_close(results["fast"][0], results["eager"][0], atol=1e-4, rtol=1e-4)
    assert torch.equal(results["fast"][1], results["eager"][1])
    assert results["fast"][2] == pytest.approx(results["eager"][2], rel=1e-4)


def test_generate_with_cache_equals_full_recompute(tiny, tiny_inputs):
    """KV-cache decoding under VAR equals re-running the whole sequence at every step (no cache)."""
    _, model, _ = tiny
    prompt_len = tiny_inputs["input_ids"].shape[1]
    with patch(model, VARConfig(p=0.9)) as handle:
        handle.collect_stats = True
        # plain argmax below: no repetition penalty (tiny-qwen2.5-vl carries one, as its checkpoint does)
        cached = model.generate(**tiny_inputs, max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
        assert_var_acted(handle)
        ids = tiny_inputs["input_ids"]
        extra = {k: v for k, v in tiny_inputs.items() if k not in ("input_ids", "attention_mask")}
        for _ in range(6):
            if "mm_token_type_ids" in extra:  # Qwen2-VL: generated tokens are text
                types = extra["mm_token_type_ids"]
                extra["mm_token_type_ids"] = torch.nn.functional.pad(
                    types, (0, ids.shape[1] - types.shape[1])
                )
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=False,
                var_state=handle.new_state(prompt_len=prompt_len),
                **extra,
            )
            ids = torch.cat([ids, out.logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, ids)


# a question long enough that the other row's left padding outlasts this row's image (> 150 tokens)
LONG_QUESTION = (
    " ".join(
        [
            "Is the large circle in the picture red or blue? Are there any dogs? What color is the large circle?"
        ]
        * 8
    )
    + " Answer yes or no."
)


@pytest.mark.parametrize("path", ["fast", "eager"])
def test_left_padded_batch_equals_single_rows(case, path):
    """Very different lengths: the short row's left padding is longer than the long row's prompt up to the end
    of its image, so the fast path computes that row's pad positions explicitly too (NaN there, from a fully
    masked softmax, once spread to every row). No NaN anywhere, and each row equals the row run alone."""
    spec, model, processor = case
    prompts = [build_prompt(processor, "Is it red?"), build_prompt(processor, LONG_QUESTION)]
    images = [make_image(1), make_image(2, size=(150, 90))]  # a wide image: other crops, tiles, grids
    batch = on_model(processor(images=images, text=prompts, return_tensors="pt", padding=True), model)
    padding = (batch["attention_mask"] == 0).sum(-1)
    image = batch["input_ids"] == image_token_id(model)
    image_end = image.shape[1] - torch.flip(image, [1]).long().argmax(-1)
    assert int(padding[0]) > int(image_end[1]), (padding, image_end)
    with patch(model, VARConfig(p=0.8), path=path) as handle:
        handle.collect_stats = True
        batch_logits = logits_of(model, batch)
        assert torch.isfinite(batch_logits).all()  # pad positions included
        generated = model.generate(
            **batch, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        for row, (prompt, image_) in enumerate(zip(prompts, images, strict=True)):
            single = on_model(processor(images=[image_], text=[prompt], return_tensors="pt"), model)
            alone = logits_of(model, single)[:, -1]
            torch.testing.assert_close(alone, batch_logits[row : row + 1, -1], atol=spec.atol, rtol=spec.rtol)
            tokens = model.generate(**single, max_new_tokens=5, do_sample=False)[0, -5:]
            steps = [g[row] for g in generated.logits]
            assert_same_tokens(tokens, generated.sequences[row, -5:], steps, tie=partial(spec.tie, spec.atol))
        assert_var_acted(handle)


def test_one_config_per_row(tiny, tiny_inputs):
    _, model, _ = tiny
    configs = [VARConfig(p=0.1, rho=0.3), VARConfig(p=0.9, rho=0.6, tau=15)]
    two = {
        k: torch.cat([v, v]) if k != "image_grid_thw" and k != "pixel_values" else v
        for k, v in tiny_inputs.items()
    }
    if "image_grid_thw" in tiny_inputs:  # Qwen2-VL flattens patches of all images
        two["pixel_values"] = torch.cat([tiny_inputs["pixel_values"]] * 2)
        two["image_grid_thw"] = torch.cat([tiny_inputs["image_grid_thw"]] * 2)
    else:
        two["pixel_values"] = torch.cat([tiny_inputs["pixel_values"]] * 2)
    with patch(model, configs) as handle:
        handle.collect_stats = True
        both = logits_of(model, two)
        stats = handle.stats()
        handle.set(configs[1])
        second = logits_of(model, tiny_inputs)
        handle.set(configs[0])
        first = logits_of(model, tiny_inputs)
    torch.testing.assert_close(both[0:1], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:2], second, atol=1e-5, rtol=1e-5)
    assert stats.rows.shape[0] == 2
    assert stats.summary(0)["mass_moved_per_row"] < stats.summary(1)["mass_moved_per_row"]


def test_discover_sink_dims_finds_planted_dims(tiny):
    _, model, processor = tiny
    batches = [
        processor(images=make_image(seed), text=build_prompt(processor, q), return_tensors="pt")
        for seed, q in enumerate(["Is it red?", "How many objects are in the image?", "Is there a dog?"])
    ]
    found = discover_sink_dims(model, batches)
    assert set(found.dims) == set(TINY_SINK_DIMS), found
    assert "median over 6" in found.method


def test_discover_fails_clearly_without_sinks():
    from workers.models import load_model

    model, processor = load_model("tiny-llava", device="cpu", planted=False)
    batch = processor(images=make_image(0), text=build_prompt(processor, "Is it red?"), return_tensors="pt")
    with pytest.raises(var_core.SinkDimsError, match="no dimension reaches"):
        discover_sink_dims(model, [batch])
    with pytest.raises(var_core.SinkDimsError, match="no sink dimensions known"):
        patch(model)


def test_unsupported_models_fail_before_touching_anything():
    from transformers import LlamaConfig, LlamaForCausalLM

    text_only = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
        )
    )
    with pytest.raises(
        UnsupportedModelError,
        match="model type 'llama'.*supported: internvl, llava, llava_next, qwen2_5_vl, qwen2_vl",
    ):
        patch(text_only)


def test_model_without_image_token_id(tiny):
    _, model, _ = tiny
    attrs = ("image_token_id", "image_token_index")
    saved = {a: getattr(model.config, a, None) for a in attrs}
    try:
        for a in attrs:
            if saved[a] is not None:
                setattr(model.config, a, -1)  # the configs refuse None; -1 means "no token"
        with pytest.raises(UnsupportedModelError, match="no image token id"):
            patch(model)
    finally:
        for a, v in saved.items():
            if v is not None:
                setattr(model.config, a, v)
    assert model.config.get_text_config()._attn_implementation == "sdpa"


def test_double_patch_refused(tiny):
    _, model, _ = tiny
    with patch(model), pytest.raises(var_core.VarsweepError, match="already VAR-patched"):
        patch(model)


def test_unsupported_prompt_shapes_fail_in_one_line(tiny):
    """Several images in a prompt, a static KV cache, sliding-window layers: refused, naming what is unsupported."""
    name, model, processor = tiny
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Left or"},
                {"type": "image"},
                {"type": "text", "text": "right?"},
            ],
        }
    ]
    two = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[make_image(1), make_image(2)], text=two, return_tensors="pt")
    one = processor(images=make_image(1), text=build_prompt(processor, "Is it red?"), return_tensors="pt")
    with patch(model) as handle:
        with pytest.raises(var_core.UnsupportedInputError, match="one image per prompt; a row has 2") as info:
            logits_of(model, inputs)
        assert "\n" not in str(info.value)
        with pytest.raises(
            var_core.UnsupportedInputError, match="dynamic KV cache; this call passes a StaticCache"
        ):
            model.generate(**one, max_new_tokens=2, do_sample=False, cache_implementation="static")
        handle.disable()
        logits_of(model, inputs)  # VAR off: the model itself takes both images
    attention = decoder_layers(model)[1].self_attn
    had, saved = "sliding_window" in vars(attention), vars(attention).get("sliding_window")
    attention.sliding_window = 16  # a Qwen2-style layer with a sliding window
    try:
        with pytest.raises(UnsupportedModelError, match=r"sliding-window attention; decoder layers \[1\]"):
            patch(model)
    finally:
        if had:
            attention.sliding_window = saved
        else:
            del attention.sliding_window
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # refused before touching the model


def test_handle_says_how_sink_dims_were_found(tiny):
    _, model, _ = tiny
    with patch(model) as handle:
        assert handle.sink_dims == TINY_SINK_DIMS
        assert handle.sink_dims_source == "planted (workers.presets.plant_sinks)"
    with patch(model, sink_dims=[3, 5]) as handle:
        assert handle.sink_dims == (3, 5) and handle.sink_dims_source == "given"
