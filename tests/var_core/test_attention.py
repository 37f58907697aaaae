"""shared_prefix_attention == the reference (explicit probabilities, redistribute_rows, @ values) on full keys."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from var_core import VARConfig
from var_core.attention import attention_probs, masked_logits, shared_prefix_attention
from var_core.ops import redistribute_rows, row_params


def reference(query, prefix_key, prefix_value, key, value, mask, visual, sinks, rows, params):
    batch = query.shape[0]
    keys = torch.cat([prefix_key.expand(batch, -1, -1, -1), key.expand(batch, -1, -1, -1)], dim=2)
    values = torch.cat([prefix_value.expand(batch, -1, -1, -1), value.expand(batch, -1, -1, -1)], dim=2)
    if mask is not None:
        mask = torch.cat([torch.ones(*mask.shape[:-1], prefix_key.shape[2], dtype=torch.bool), mask], dim=-1)
    probs = attention_probs(query, keys, mask, scaling=None)
    visual_all = torch.cat([visual, torch.zeros(key.shape[2], dtype=torch.bool)]).expand(batch, -1)
    result = redistribute_rows(probs, visual_all, sinks, rows, params)
    out = torch.matmul(result.attn, repeat_kv(values, query.shape[1] // key.shape[1]))
    return out.transpose(1, 2), result


def shared(query, prefix_key, prefix_value, key, value, mask, visual, sinks, rows, params):
    """shared_prefix_attention called with the arguments of ``reference``."""
    return shared_prefix_attention(
        query,
        prefix_key,
        prefix_value,
        key,
        value,
        mask,
        scaling=None,
        visual=visual,
        sinks=sinks,
        rows=rows,
        params=params,
    )


def case(seed: int, convention: str, *, kv_heads: int, own_batch: int, with_mask: bool):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    configs = [
        VARConfig(tau=1.0, rho=r, p=p, summ=0.1, convention=convention)
        for r, p in [(0.3, 0.5), (0.9, 1.0), (0.6, 0.2), (0.0, 0.7)]
    ]
    batch, heads, n_query, prefix_len, own_len, dim = len(configs), 4, 5, 40, 7, 8
    query = rand(batch, heads, n_query, dim) * 2
    prefix_key, prefix_value = rand(1, kv_heads, prefix_len, dim) * 2, rand(1, kv_heads, prefix_len, dim)
    key, value = rand(own_batch, kv_heads, own_len, dim) * 2, rand(own_batch, kv_heads, own_len, dim)
    visual = torch.zeros(prefix_len, dtype=torch.bool)
    visual[6:36] = True
    sinks = torch.rand(batch, prefix_len + own_len, generator=generator) < 0.15
    sinks[:, 0] = True  # BOS
    sinks[1, 6:36] = True  # one row: every image key is a sink, no receiver
    sinks[2] = False
    sinks[2, 10] = True  # one visual sink only
    rows = torch.ones(batch, n_query, dtype=torch.bool)
    rows[3, 0] = False
    mask = None
    if with_mask:
        causal = torch.ones(n_query, own_len, dtype=torch.bool).tril(own_len - n_query)
        mask = causal[None, None].expand(own_batch, 1, -1, -1).clone()
    params = row_params(configs, batch=batch)
    return query, prefix_key, prefix_value, key, value, mask, visual, sinks, rows, params


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("own_batch", [1, 4])
@pytest.mark.parametrize("with_mask", [False, True])
def test_shared_prefix_matches_reference(convention, kv_heads, own_batch, with_mask):
    for seed in range(3):
        inputs = case(seed, convention, kv_heads=kv_heads, own_batch=own_batch, with_mask=with_mask)
        expected, reference_result = reference(*inputs)
        out, masses = shared(*inputs)
        assert out.dtype == torch.float64 and out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        assert torch.equal(masses.selected, reference_result.selected)
        assert torch.equal(masses.changed, reference_result.changed)
        torch.testing.assert_close(masses.visual_mass, reference_result.visual_mass.double())
        torch.testing.assert_close(masses.moved_mass, reference_result.moved_mass.double())
        # VAR acted, and some rows stayed as they were: the comparison covers both
        assert masses.changed.any() and not masses.changed.all()


@pytest.mark.parametrize("edge", ["no prefix sink", "no sink at all", "no text key", "every key visual"])
def test_edge_cases_match_reference(edge):
    inputs = list(case(1, "paper", kv_heads=2, own_batch=4, with_mask=True))
    visual, sinks = inputs[6].clone(), inputs[7].clone()
    prefix_len = visual.shape[0]
    if edge == "no prefix sink":
        sinks[:, :prefix_len] = False
        sinks[:, prefix_len + 1] = True
    elif edge == "no sink at all":
        sinks[:] = False
    elif edge == "no text key":
        visual[:] = True
    else:
        visual[:] = True
        sinks[:, :prefix_len] = False
    inputs[6], inputs[7] = visual, sinks
    expected, reference_result = reference(*inputs)
    out, masses = shared(*inputs)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(masses.changed, reference_result.changed)
    if edge in ("no prefix sink", "no text key"):  # sinks with receivers remain: VAR acted
        assert masses.changed.any() and float(masses.moved_mass.max()) > 0


def test_float32_close_to_float64():
    inputs = case(0, "paper", kv_heads=2, own_batch=1, with_mask=False)
    exact, masses = shared(*inputs)
    assert masses.changed.any()
    single = [t.float() for t in inputs[:5]]
    out, _ = shared(*single, *inputs[5:])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)


def receivers_case(shift: float, *, seed: int = 0):
    """Float32 inputs whose receivers (image keys that are not sinks) sit ``shift`` logits below the rest, with
    six rows of rho from 0 to 1: S / V runs from 1 down to ~1e-10 as the shift grows."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads, kv_heads, n_query, prefix_len, own_len, dim = 6, 4, 2, 3, 40, 5, 16
    configs = [
        VARConfig(tau=1.0, rho=r, p=p, summ=0.0)
        for r, p in [(0.0, 0.4), (0.0, 1.0), (1e-10, 0.9), (0.25, 0.6), (0.5, 0.4), (1.0, 0.7)]
    ]

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    query = rand(batch, heads, n_query, dim, scale=0.3)
    query[..., 0] = dim**0.5  # with scaling dim**-0.5, the logit of key j gains key[j, 0]
    prefix_key, key = (
        rand(1, kv_heads, prefix_len, dim, scale=0.3),
        rand(1, kv_heads, own_len, dim, scale=0.3),
    )
    prefix_value, value = rand(1, kv_heads, prefix_len, dim), rand(1, kv_heads, own_len, dim)
    visual = torch.zeros(prefix_len, dtype=torch.bool)
    visual[6:36] = True
    sinks = torch.zeros(batch, prefix_len + own_len, dtype=torch.bool)
    sinks[:, [0, 8, 17, 30]] = True  # BOS and three visual sinks, in every row
    sinks[::2, prefix_len + 1] = True  # a text sink after the prefix, in some rows
    receivers = visual & ~sinks[0, :prefix_len]
    prefix_key[0, :, receivers, 0] = -shift
    prefix_key[0, :, sinks[0, :prefix_len], 0] = 4.0
    rows = torch.ones(batch, n_query, dtype=torch.bool)
    return (
        query,
        prefix_key,
        prefix_value,
        key,
        value,
        None,
        visual,
        sinks,
        rows,
        row_params(configs, batch=batch),
    )


@pytest.mark.parametrize("shift", [-6.0, -2.0, 2.0, 6.0, 10.0, 14.0, 17.0, 19.0])
def test_float32_accurate_when_receivers_hold_almost_no_visual_mass(shift):
    """Float32 against a float64 reference over S / V from 1 to ~1e-10 and rho from 0 to 1: within 1e-5.

    The error is relative to each output vector's norm. Subtracting the sinks' mass from V (the former
    formulation) lost 0.8 of S at S / V ~ 3e-10, and the output with it (g = Omega / S multiplies the loss).
    """
    inputs = receivers_case(shift)
    exact, reference_result = reference(
        *[t.double() if t.is_floating_point() else t for t in inputs[:5]], *inputs[5:]
    )
    out, masses = shared(*inputs)
    assert out.dtype == torch.float32
    ratio = reference_result.receiver_mass / reference_result.visual_mass
    assert 1e-11 < float(ratio.min()) and float(ratio.max()) <= 1.0
    torch.testing.assert_close(
        masses.receiver_mass.double(), reference_result.receiver_mass, rtol=1e-5, atol=0
    )
    error = (out.double() - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert float(error.max()) < 1e-5, (float(ratio.min()), float(error.max()))
    assert torch.equal(masses.changed, reference_result.changed)
    # VAR acted, also at the smallest S / V
    assert masses.changed.any() and float(masses.moved_mass.max()) > 0


def test_receivers_case_spans_s_over_v_from_1e_minus_9_to_1():
    """The shifts above cover the range the accuracy test claims (so a narrower case cannot slip in)."""
    ratios = []
    for shift in (-6.0, 19.0):
        inputs = receivers_case(shift)
        _, result = reference(*[t.double() if t.is_floating_point() else t for t in inputs[:5]], *inputs[5:])
        ratios.append(result.receiver_mass / result.visual_mass)
    assert float(ratios[0].max()) > 0.5 and float(ratios[1].min()) < 1e-9


def test_bfloat16_logits_are_computed_in_float32():
    """bf16 queries and keys with sink-sized logits (~26): the probabilities equal float64 math on the same bf16
    values to float32 rounding; a bf16 product of q and k is off by up to several percent there."""
    generator = torch.Generator().manual_seed(0)
    query = (torch.randn(1, 4, 6, 64, generator=generator) * 1.2).bfloat16()
    key = (torch.randn(1, 2, 40, 64, generator=generator) * 1.2).bfloat16()
    key[:, :, 0] = query[0, 0, 0] * 2.5  # a sink-like key: logits ~26 against it
    probs = attention_probs(query, key, None, scaling=None)
    exact = attention_probs(query.double(), key.double(), None, scaling=None)
    assert probs.dtype == torch.float32 and float(exact.max()) > 0.9
    torch.testing.assert_close(probs.double(), exact, atol=1e-6, rtol=1e-5)
    bf16_product = torch.softmax(
        masked_logits((query * 64**-0.5) @ repeat_kv(key, 2).transpose(2, 3), None).float(), dim=-1
    )
    assert float((bf16_product.double() - exact).abs().max()) > 1e-3  # what the float32 product avoids
