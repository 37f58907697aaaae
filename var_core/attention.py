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

__all__ = ["attention_probs", "causal_allowed", "masked_logits", "shared_prefix_attention"]


def causal_allowed(n_rows: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """``[q, K]`` bool: which keys each of a call's last q queries may attend to under a causal mask."""
    rows = torch.arange(n_keys - n_rows, n_keys, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= rows


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Apply an attention mask to logits ``[B, H, q, K]`` whose rows are the call's last q queries.

    ``mask`` is a boolean (True = may attend) or additive float mask broadcastable to the logits, or None:
    transformers passes none for a causal call whose q queries are the last q of the K keys.
    """
    if mask is None:
        return logits.masked_fill(~causal_allowed(*logits.shape[-2:], logits.device), float("-inf"))
    return logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()


def attention_probs(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """Softmax probabilities ``[B, H, q, K]`` (float32, or float64 for float64 inputs) of queries ``[B, H, q, D]``
    on keys ``[B, H_kv, K, D]``."""
    keys = repeat_kv(key, query.shape[1] // key.shape[1])
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    logits = torch.matmul(query * scale, keys.transpose(2, 3))  # scaling q is cheaper than the logits
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.softmax(masked_logits(logits, mask), dim=-1)


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
    ``redistribute_rows(attention_probs(...)) @ values`` on the concatenated keys. It uses the identity of VAR.md
    sec. 3: with e_j = exp(logit_j - max) and Z = sum_j e_j, a rewritten row is
    alpha'_j = e_j / Z * (1 + a [j sink] + g [j visual non-sink]), a = -p (sinks keep 1 - p), g = Omega / S. So
    sum_j alpha'_j v_j = (E_text + (1 + g) E_vis + sum_{j in sinks} e_j (a - g [j visual]) v_j + suffix) / Z,
    where E_text, E_vis = sum of e_j v_j over the prefix's text and image keys: one product of the exponentials
    with ``[v * visual | visual | 1]`` per key-value head gives E_vis and the masses V and Z; the text keys and
    the sinks, a few columns, are gathered. Nothing of size B x P x D (copies of the prefix) or B x H x q x P
    beyond the exponentials themselves is written.
    """
    batch, heads, n_query, dim = query.shape
    kv_heads, prefix_len = prefix_key.shape[1], prefix_key.shape[2]
    groups = heads // kv_heads
    shape = (batch, groups, n_query)
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    scale = scaling if scaling is not None else dim**-0.5
    q = query.to(dtype) * scale

    # prefix logits [H_kv, R, P]: one product per key-value head for all rows of all configurations
    exp_prefix = torch.bmm(_flat(q, kv_heads).contiguous(), prefix_key[0].to(dtype).transpose(1, 2))
    logits_own = masked_logits(torch.matmul(q, repeat_kv(key, groups).to(dtype).transpose(2, 3)), mask)
    peak = torch.maximum(_rows(exp_prefix.amax(-1), *shape), logits_own.amax(-1))  # [B, H, q]
    exp_prefix.sub_(_flat(peak, kv_heads)[..., None]).exp_()
    exp_own = (logits_own - peak[..., None]).exp()

    is_visual = visual.to(dtype)[:, None]  # [P, 1]
    values = prefix_value[0].to(dtype)  # [H_kv, P, D]
    ones = torch.ones_like(values[..., :1])
    # image keys: one product with [v * visual | visual | 1] gives E_vis, the visual sum V and the prefix's Z
    parts = _rows(torch.bmm(exp_prefix, torch.cat([values * is_visual, is_visual.expand_as(ones), ones], -1)), *shape)
    visual_out, visual_exp = parts[..., :dim], parts[..., dim]
    total = parts[..., dim + 1] + exp_own.sum(-1)
    text = (~visual).nonzero().flatten()  # the prefix's text keys: a few
    text_out = _rows(torch.bmm(exp_prefix.index_select(-1, text), values.index_select(1, text)), *shape)

    prefix_sinks, own_sinks = sinks[:, :prefix_len], sinks[:, prefix_len:]
    columns = prefix_sinks.any(0).nonzero().flatten()  # the union of every row's prefix sinks: a few keys
    exp_sinks = _rows(exp_prefix.index_select(-1, columns), *shape)  # [B, H, q, U]
    is_sink = prefix_sinks[:, columns].to(dtype)[:, None, None, :]  # [B, 1, 1, U]
    is_visual_sink = is_sink * is_visual[columns, 0]
    own_sink = own_sinks.to(dtype)[:, None, None, :]
    sink_exp = (exp_sinks * is_sink).sum(-1) + (exp_own * own_sink).sum(-1)
    visual_sink_exp = (exp_sinks * is_visual_sink).sum(-1)

    visual_sinks = prefix_sinks & visual
    has_receiver = (visual.sum() - visual_sinks.sum(-1) > 0)[:, None, None]
    visual_mass = visual_exp / total
    receiver_mass = torch.where(has_receiver, (visual_exp - visual_sink_exp).clamp_min(0) / total, 0.0)
    selected, changed, moved_mass, gain = select_rows(
        visual_mass,
        receiver_mass,
        sink_exp / total,
        visual_sink_exp / total,
        rows,
        params,
        n_visual=visual.sum().expand(batch),
        has_visual_sink=visual_sinks.any(-1),
    )
    sink_gain = torch.where(changed, params.kept.to(dtype)[:, None, None] - 1, 0.0)  # a = kept - 1 = -p

    corrections = exp_sinks * (sink_gain[..., None] * is_sink - gain[..., None] * is_visual_sink)
    sink_values = values.index_select(1, columns)  # [H_kv, U, D]
    sink_out = _rows(torch.bmm(_flat(corrections, kv_heads), sink_values), *shape)
    own_out = torch.matmul(exp_own * (1 + sink_gain[..., None] * own_sink), repeat_kv(value, groups).to(dtype))
    out = (text_out + (1 + gain[..., None]) * visual_out + sink_out + own_out) / total[..., None]
    masses = Redistribution(
        attn=None,
        selected=selected,
        changed=changed,
        visual_mass=visual_mass,
        receiver_mass=receiver_mass,
        moved_mass=moved_mass,
    )
    return out.to(value.dtype).transpose(1, 2).contiguous(), masses
