"""The pure VAR math against a row-by-row transcription of docs/method.md sections 2-4."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from var_core import ConfigError, VARConfig, redistribute, sink_mask, sink_scores
from var_core.ops import row_params


def reference_row(
    a: list[float], visual: list[bool], sinks: list[bool], cfg: VARConfig
) -> tuple[list[float], bool]:
    """One attention row, straight from docs/method.md (loops, floats): returns (new row, selected)."""
    V = sum(x for x, v in zip(a, visual, strict=True) if v)
    if V < cfg.summ or V == 0:
        return list(a), False
    S = sum(x for x, v, s in zip(a, visual, sinks, strict=True) if v and not s)
    if cfg.convention == "paper":
        if S / V < cfg.rho:
            return list(a), False
        kept = 1 - cfg.p
    else:
        if not any(v and s for v, s in zip(visual, sinks, strict=True)):
            return list(a), False
        vis_sink = sum(x for x, v, s in zip(a, visual, sinks, strict=True) if v and s)
        if vis_sink / sum(x + 1e-6 for x, v in zip(a, visual, strict=True) if v) > cfg.rho:
            return list(a), False
        kept = cfg.p
    if S == 0:
        return list(a), True
    omega = (1 - kept) * sum(x for x, s in zip(a, sinks, strict=True) if s)
    new = []
    for x, v, s in zip(a, visual, sinks, strict=True):
        if s:
            new.append(kept * x)
        elif v:
            new.append(x + omega * x / S)
        else:
            new.append(x)
    return new, True


def random_case(seed: int, batch: int = 2, heads: int = 3, queries: int = 4, keys: int = 12):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(
        torch.randn(batch, heads, queries, keys, generator=g) * 2, dim=-1, dtype=torch.float64
    )
    visual = torch.zeros(batch, keys, dtype=torch.bool)
    visual[:, 2:9] = True
    sinks = torch.rand(batch, keys, generator=g) < 0.3
    sinks[:, 0] = True  # BOS
    rows = torch.rand(batch, queries, generator=g) < 0.8
    return attn, visual, sinks, rows


def check_against_reference(attn, visual, sinks, rows, cfg):
    new, selected = redistribute(attn, visual, sinks, rows, cfg)
    B, H, Q, _ = attn.shape
    for b in range(B):
        for h in range(H):
            for q in range(Q):
                if rows[b, q]:
                    want, sel = reference_row(
                        attn[b, h, q].tolist(), visual[b].tolist(), sinks[b].tolist(), cfg
                    )
                else:
                    want, sel = attn[b, h, q].tolist(), False
                assert bool(selected[b, h, q]) == sel, (b, h, q)
                assert torch.allclose(new[b, h, q], torch.tensor(want, dtype=new.dtype), atol=1e-12), (
                    b,
                    h,
                    q,
                )
    return new, selected


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_row_by_row_reference(seed, convention):
    cfg = VARConfig(tau=1.0, rho=0.5, p=0.35, summ=0.1, convention=convention)
    new, selected = check_against_reference(*random_case(seed), cfg)
    assert selected.any()


def test_rows_sum_to_one_and_untouched_rows_are_bit_identical():
    attn, visual, sinks, rows = random_case(1)
    attn = attn.float()
    new, selected = redistribute(attn, visual, sinks, rows, VARConfig(rho=0.3, p=0.7))
    assert torch.allclose(new.sum(-1), torch.ones_like(new.sum(-1)), atol=1e-6)
    changed = selected & ((visual & ~sinks).any(-1))[:, None, None]
    assert changed.any() and (~changed).any()
    assert torch.equal(new[~changed], attn[~changed])
    assert not selected[~rows[:, None, :].expand_as(selected)].any()  # rows outside `queries` never selected


@pytest.mark.parametrize(("convention", "p", "kept"), [("paper", 0.3, 0.7), ("official", 0.3, 0.3)])
def test_sinks_scale_exactly_and_budget_lands_proportionally(convention, p, kept):
    attn = torch.tensor([[[[0.30, 0.10, 0.20, 0.15, 0.05, 0.20]]]], dtype=torch.float64)
    visual = torch.tensor([[False, True, True, True, True, False]])
    sinks = torch.tensor([[True, True, False, False, False, False]])  # BOS and one visual sink
    rows = torch.tensor([[True]])
    cfg = VARConfig(rho=0.5 if convention == "paper" else 0.5, p=p, summ=0.2, convention=convention)
    new, selected = redistribute(attn, visual, sinks, rows, cfg)
    assert selected.all()
    a, n = attn[0, 0, 0], new[0, 0, 0]
    assert torch.equal(n[sinks[0]], a[sinks[0]] * kept)
    omega = (1 - kept) * a[sinks[0]].sum()
    receivers = visual[0] & ~sinks[0]
    S = a[receivers].sum()
    assert torch.allclose(n[receivers] - a[receivers], omega * a[receivers] / S, atol=1e-15)
    assert torch.equal(n[~visual[0] & ~sinks[0]], a[~visual[0] & ~sinks[0]])  # other text unchanged


def test_no_visual_non_sink_leaves_row_unchanged_but_selected():
    attn = torch.tensor([[[[0.4, 0.3, 0.3]]]])
    visual = torch.tensor([[False, True, True]])
    sinks = torch.tensor([[True, True, True]])
    cfg = VARConfig(rho=0.0, p=0.5)  # r = 0 >= rho = 0
    new, selected = redistribute(attn, visual, sinks, torch.tensor([[True]]), cfg)
    assert selected.all() and torch.equal(new, attn)


def test_no_visual_sink_paper_moves_text_sink_mass_official_skips():
    attn = torch.tensor([[[[0.5, 0.25, 0.25]]]], dtype=torch.float64)
    visual = torch.tensor([[False, True, True]])
    sinks = torch.tensor([[True, False, False]])  # only BOS
    rows = torch.tensor([[True]])
    new, selected = redistribute(attn, visual, sinks, rows, VARConfig(p=0.4))
    assert selected.all()
    assert torch.allclose(new[0, 0, 0], torch.tensor([0.3, 0.35, 0.35], dtype=torch.float64))
    new, selected = redistribute(attn, visual, sinks, rows, VARConfig(p=0.6, convention="official"))
    assert not selected.any() and torch.equal(new, attn)


def test_summ_filter():
    attn = torch.tensor([[[[0.85, 0.1, 0.05]]]])
    visual = torch.tensor([[False, True, True]])
    sinks = torch.tensor([[True, False, False]])
    rows = torch.tensor([[True]])
    _, selected = redistribute(attn, visual, sinks, rows, VARConfig(summ=0.2))
    assert not selected.any()  # V = 0.15 < 0.2
    _, selected = redistribute(attn, visual, sinks, rows, VARConfig(summ=0.15))
    assert selected.all()  # V = 0.15 >= 0.15


def test_one_config_per_row_equals_each_config_alone():
    attn, visual, sinks, rows = random_case(3, batch=3)
    configs = [VARConfig(rho=0.2, p=0.1), VARConfig(rho=0.6, p=0.9, summ=0.05), VARConfig(rho=0.9, p=0.5)]
    new, selected = redistribute(attn, visual, sinks, rows, configs)
    for b, cfg in enumerate(configs):
        one, sel = redistribute(attn[b : b + 1], visual[b : b + 1], sinks[b : b + 1], rows[b : b + 1], cfg)
        assert torch.equal(new[b : b + 1], one) and torch.equal(selected[b : b + 1], sel)
    with pytest.raises(ConfigError, match="2 configs for a batch of 3"):
        redistribute(attn, visual, sinks, rows, configs[:2])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rho=st.floats(0, 1),
    p=st.floats(0, 1),
    summ=st.floats(0, 0.6),
    convention=st.sampled_from(["paper", "official"]),
    keys=st.integers(2, 20),
)
def test_property_random_maps(seed, rho, p, summ, convention, keys):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(torch.randn(2, 2, 3, keys, generator=g) * 3, dim=-1, dtype=torch.float64)
    visual = torch.rand(2, keys, generator=g) < 0.6
    sinks = torch.rand(2, keys, generator=g) < 0.3
    rows = torch.rand(2, 3, generator=g) < 0.7
    cfg = VARConfig(tau=1.0, rho=rho, p=p, summ=summ, convention=convention)
    new, selected = check_against_reference(attn, visual, sinks, rows, cfg)
    assert torch.allclose(new.sum(-1), torch.ones(2, 2, 3, dtype=torch.float64), atol=1e-12)
    assert (new >= 0).all()


def test_sink_scores_and_mask_conventions():
    x = torch.zeros(1, 2, 8)
    x[0, 0] = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 5])
    x[0, 1, 7] = 0.0  # zero vector: phi 0, not NaN
    phi = sink_scores(x, [7])
    rms = math.sqrt((7 + 25) / 8)
    assert phi[0, 0].item() == pytest.approx(5 / rms)
    assert phi[0, 1].item() == 0.0
    official = sink_scores(x, [7], eps=1e-6)
    assert official[0, 0].item() == pytest.approx(5 / math.sqrt((7 + 25) / 8 + 1e-6))
    tau = float(phi[0, 0])
    assert sink_mask(phi, VARConfig(tau=tau))[0, 0]  # phi >= tau
    assert not sink_mask(phi, VARConfig(tau=tau, convention="official"))[0, 0]  # phi > tau
    with pytest.raises(ConfigError, match="out of range"):
        sink_scores(x, [8])


def test_phi_bounded_by_sqrt_d():
    x = torch.randn(4, 10, 64)
    x[..., 3] = 1e6
    assert (sink_scores(x, [3]) <= math.sqrt(64) + 1e-4).all()


def test_none_row_is_var_off():
    configs = [None, VARConfig(p=0.9, rho=0.0, summ=0.0)]
    for convention in ("paper", "official"):
        configs[1] = VARConfig(
            p=0.9, rho=0.0 if convention == "paper" else 1.0, summ=0.0, convention=convention
        )
        params = row_params(configs, batch=2)
        assert params.convention == convention
        assert not any(bool(params.layer_active(layer, 32)[0]) for layer in range(32))
        assert bool(params.layer_active(2, 32)[1])
        generator = torch.Generator().manual_seed(0)
        attn = torch.softmax(torch.randn(2, 3, 4, 10, generator=generator), dim=-1)
        visual = torch.zeros(2, 10, dtype=torch.bool)
        visual[:, 2:8] = True
        sinks = torch.zeros(2, 10, dtype=torch.bool)
        sinks[:, [0, 3]] = True
        new, _ = redistribute(attn, visual, sinks, torch.ones(2, 4, dtype=torch.bool), params)
        assert torch.equal(new[0], attn[0])  # even when asked, a VAR-off row moves nothing
        assert not torch.allclose(new[1], attn[1])
