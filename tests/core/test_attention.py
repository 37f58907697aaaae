"""shared_prefix_attention == the reference (explicit probabilities, redistribute_rows, @ values) on full keys."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from var_core import VARConfig
from var_core.attention import attention_probs, shared_prefix_attention
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
        query, prefix_key, prefix_value, key, value, mask,
        scaling=None, visual=visual, sinks=sinks, rows=rows, params=params,
    )  # fmt: skip


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
