"""Attention with explicit probabilities, and VAR against a prefix that every batch row shares.

Pure tensor functions (no model, no hooks). :func:`attention_probs` is the reference: softmax probabilities that
:func:`var_core.ops.redistribute_rows` rewrites. :func:`shared_prefix_attention` gives the same output for the
common sweep case, one prompt prefix evaluated under B configurations (one per batch row), without materialising
B copies of the prefix's keys and values or the rewritten probabilities.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv

from var_core.ops import Redistribution, RowParams, select_rows

__all__ = [
    "attend",
    "attention_probs",
    "causal_allowed",
    "masked_logits",
    "masked_softmax",
    "shared_prefix_attention",
]


def causal_allowed(n_rows: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """``[q, K]`` bool: which keys each of a call's last q queries may attend to under a causal mask."""
    rows = torch.arange(n_keys - n_rows, n_keys, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= rows


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Apply an attention mask to logits ``[B, H, q, K]`` whose rows are the call's last q queries.

    ``mask`` is a boolean (True = may attend) or additive float mask broadcastable to the logits, or None:
    transformers passes none for a causal call whose q queries are the last q of the K keys. Masked keys get
    -inf, so their probability is exactly 0.
    """
    if mask is None:
        n_rows, n_keys = logits.shape[-2:]
        return logits.masked_fill(~causal_allowed(n_rows, n_keys, logits.device), float("-inf"))
    return (
        logits.masked_fill(~mask, float("-inf"))
        if mask.dtype == torch.bool
        else logits + mask.to(logits.dtype)
    )


def masked_softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis of masked logits, where a row with no visible key gives zeros, not NaN.

    Such a row is a pad query (left padding); SDPA returns zeros for it, and a NaN there would reach the pad
    position's keys and values in the next layer, and through them every row of the batch (0 * NaN = NaN).
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.where(torch.isneginf(logits.amax(-1, keepdim=True)), 0.0, probs)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype explicit attention works in: float32, or float64 for float64 inputs (never bf16/fp16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_probs(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """Softmax probabilities ``[B, H, q, K]`` of queries ``[B, H, q, D]`` on keys ``[B, H_kv, K, D]``.

    Computed in float32 (float64 for float64 inputs) from q and k on: a bf16 product of q and k is off by up to
    several percent at the large logits of sink keys, more than SDPA, which accumulates in float32.
    """
    dtype = _work_dtype(query.dtype)
    keys = repeat_kv(key, query.shape[1] // key.shape[1]).to(dtype)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # scaling q is cheaper than the logits
    logits = torch.matmul(query.to(dtype) * scale, keys.transpose(2, 3))
    return masked_softmax(masked_logits(logits, mask))


def attend(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``probs [B, H, q, K] @ values [B, H_kv, K, D]`` in the probabilities' dtype; ``[B, q, H, D]`` in value's."""
    values = repeat_kv(value, probs.shape[1] // value.shape[1]).to(probs.dtype)
    return torch.matmul(probs, values).to(value.dtype).transpose(1, 2)


def _rows(x: torch.Tensor, batch: int, groups: int, n_query: int) -> torch.Tensor:
    """``[H_kv, B * g * q, ...]`` (one matrix per key-value head) -> ``[B, H, q, ...]``."""
    kv_heads, rest = x.shape[0], x.shape[2:]
    grouped = x.view(kv_heads, batch, groups, n_query, *rest).transpose(0, 1)
    return grouped.reshape(batch, kv_heads * groups, n_query, *rest)


def _flat(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``[B, H, q, ...]`` -> ``[H_kv, B * g * q, ...]``; head h reads key-value head h // g, as in ``repeat_kv``."""
    batch, heads, n_query, *rest = x.shape
    grouped = x.reshape(batch, kv_heads, heads // kv_heads, n_query, *rest).transpose(0, 1)
    return grouped.reshape(kv_heads, batch * (heads // kv_heads) * n_query, *rest)


def shared_prefix_attention(
    query: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scaling: float | None,
    visual: torch.Tensor,
    sinks: torch.Tensor,
    rows: torch.Tensor,
    params: RowParams,
) -> tuple[torch.Tensor, Redistribution]:
    """VAR attention output of every batch row over a shared prefix plus that row's own keys.

    Args:
        query: ``[B, H, q, D]``, the last q queries of each row.
        prefix_key, prefix_value: ``[1, H_kv, P, D]``, keys and values of the prefix, shared by all rows.
        key, value: ``[B or 1, H_kv, S, D]``, each row's keys after the prefix (the queries' own included).
        mask: over the S keys after the prefix (see :func:`masked_logits`); every prefix key is visible.
        visual: ``[P]`` bool, image keys of the prefix; keys after the prefix hold no image token.
        sinks: ``[B, P + S]`` bool, this layer's sink keys per row.
        rows: ``[B, q]`` bool, the rows VAR may modify.

    Returns ``(output [B, q, H, D] in value's dtype, masses)``, the output equal (up to rounding) to
    ``redistribute_rows(attention_probs(...)) @ values`` on the concatenated keys. It uses the identity of docs/method.md
    sec. 3: with e_j = exp(logit_j - max) and Z = sum_j e_j, a rewritten row is alpha'_j = f_j e_j / Z with
    f_j = kept on sinks, 1 + g on visual non-sinks (g = Omega / S) and 1 elsewhere. The prefix keys split into
    U, the union of every row's prefix sinks (a few keys, gathered), and the rest, whose factor is the same in
    every row: its image keys W (receivers in every row) and its text keys T (factor 1). So
    sum_j alpha'_j v_j = (E_T + (1 + g) E_W + sum_{j in U} f_j e_j v_j + own keys) / Z, E_X = sum_{j in X} e_j v_j;
    one product of the exponentials with ``[v * W | W | 1]`` per key-value head gives E_W, its mass and the
    prefix's Z. Every mass (V, S, the sink masses) and the output are sums of non-negative weights, never a
    difference of near-equal sums, so they stay accurate when the receivers hold almost none of the visual mass
    (S / V near 0, where g is huge). Nothing of size B x P x D (copies of the prefix) or B x H x q x P beyond the
    exponentials themselves is written.
    """
    batch, heads, n_query, dim = query.shape
    kv_heads, prefix_len = prefix_key.shape[1], prefix_key.shape[2]
    groups = heads // kv_heads
    shape = (batch, groups, n_query)
    dtype = _work_dtype(query.dtype)
    scale = scaling if scaling is not None else dim**-0.5
    q = query.to(dtype) * scale

    # prefix logits [H_kv, R, P]: one product per key-value head for all rows of all configurations
    exp_prefix = torch.bmm(_flat(q, kv_heads).contiguous(), prefix_key[0].to(dtype).transpose(1, 2))
    logits_own = masked_logits(torch.matmul(q, repeat_kv(key, groups).to(dtype).transpose(2, 3)), mask)
    peak = torch.maximum(_rows(exp_prefix.amax(-1), *shape), logits_own.amax(-1))  # [B, H, q], finite
    exp_prefix.sub_(_flat(peak, kv_heads)[..., None]).exp_()
    exp_own = (logits_own - peak[..., None]).exp()

    prefix_sinks, own_sinks = sinks[:, :prefix_len], sinks[:, prefix_len:]
    in_union = prefix_sinks.any(0)
    union = in_union.nonzero().flatten()  # U: the union of every row's prefix sinks, a few keys
    text = (~visual & ~in_union).nonzero().flatten()  # T: the other text keys, a few
    plain_visual = (visual & ~in_union).to(dtype)[:, None]  # W: [P, 1]
    values = prefix_value[0].to(dtype)  # [H_kv, P, D]
    ones = torch.ones_like(values[..., :1])
    parts = _rows(
        torch.bmm(exp_prefix, torch.cat([values * plain_visual, plain_visual.expand_as(ones), ones], -1)),
        *shape,
    )
    plain_visual_out, plain_visual_exp = parts[..., :dim], parts[..., dim]
    total = parts[..., dim + 1] + exp_own.sum(-1)
    text_out = _rows(torch.bmm(exp_prefix.index_select(-1, text), values.index_select(1, text)), *shape)

    exp_union = _rows(exp_prefix.index_select(-1, union), *shape)  # [B, H, q, U]
    is_sink = prefix_sinks[:, union][:, None, None, :]  # [B, 1, 1, U]
    is_visual = visual[union]  # [U]
    own_sink = own_sinks[:, None, None, :]
    visual_exp = plain_visual_exp + (exp_union * is_visual).sum(-1)
    receiver_exp = plain_visual_exp + (exp_union * (is_visual & ~is_sink)).sum(-1)
    sink_exp = (exp_union * is_sink).sum(-1) + (exp_own * own_sink).sum(-1)
    visual_sink_exp = (exp_union * (is_visual & is_sink)).sum(-1)

    visual_mass, receiver_mass = visual_exp / total, receiver_exp / total
    selected, changed, moved_mass, gain = select_rows(
        visual_mass,
        receiver_mass,
        sink_exp / total,
        visual_sink_exp / total,
        rows,
        params,
        n_visual=visual.sum().expand(batch),
        has_visual_sink=(prefix_sinks & visual).any(-1),
    )
    # what a sink keeps: `kept` in a rewritten row, all of it elsewhere (direct, not 1 + (kept - 1))
    kept = torch.where(changed, params.kept.to(dtype)[:, None, None], 1.0)[..., None]
    union_factor = torch.where(is_sink, kept, 1 + gain[..., None] * is_visual)
    union_out = _rows(
        torch.bmm(_flat(exp_union * union_factor, kv_heads), values.index_select(1, union)), *shape
    )
    own_out = torch.matmul(torch.where(own_sink, exp_own * kept, exp_own), repeat_kv(value, groups).to(dtype))
    out = (text_out + (1 + gain[..., None]) * plain_visual_out + union_out + own_out) / total[..., None]
    masses = Redistribution(
        attn=None,
        selected=selected,
        changed=changed,
        visual_mass=visual_mass,
        receiver_mass=receiver_mass,
        moved_mass=moved_mass,
    )
    return out.to(value.dtype).transpose(1, 2).contiguous(), masses
