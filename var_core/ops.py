"""The VAR math as small pure functions on tensors (docs/method.md sections 1-4).

Nothing here knows about models: inputs are hidden states and attention probabilities, outputs are tensors.
Several configurations can be applied at once, one per batch row (``configs`` of length B), which is how the
evaluation engine runs many trials against one shared prompt prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from var_core.config import VARConfig
from var_core.errors import ConfigError

__all__ = [
    "sink_scores",
    "sink_components",
    "phi_from_components",
    "sink_mask",
    "redistribute",
    "redistribute_rows",
    "select_rows",
    "Redistribution",
    "RowParams",
    "row_params",
    "OFFICIAL_RMS_EPS",
]

# The released code computes RMS as sqrt(mean(x^2) + 1e-6) in float32 (docs/method.md section 4).
OFFICIAL_RMS_EPS = 1e-6
# The released code adds 1e-6 to every visual probability in the denominator of the sink share (docs/method.md sec. 4).
_OFFICIAL_SHARE_EPS = 1e-6


def sink_components(hidden: torch.Tensor, sink_dims: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of phi: ``(max_{d in D_sink} |x[d]|, mean_k x[k]^2)``, each ``[...]`` in float32+.

    Kept apart so that a cached prefix serves both conventions, whose RMS differ only by eps (docs/method.md sec. 4).
    """
    if len(sink_dims) == 0:
        raise ConfigError("sink_dims is empty: phi needs at least one sink dimension")
    x = hidden if hidden.dtype == torch.float64 else hidden.float()
    dims = torch.as_tensor(list(sink_dims), device=x.device, dtype=torch.long)
    if int(dims.min()) < 0 or int(dims.max()) >= x.shape[-1]:
        raise ConfigError(f"sink_dims {list(sink_dims)} out of range for hidden size {x.shape[-1]}")
    return x.index_select(-1, dims).abs().amax(dim=-1), x.square().mean(dim=-1)


def phi_from_components(peak: torch.Tensor, mean_sq: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """phi = peak / sqrt(mean_sq + eps); a zero vector has phi 0, not NaN (docs/method.md sec. 1)."""
    rms = torch.sqrt(mean_sq + eps)
    return torch.where(rms > 0, peak / rms.clamp_min(torch.finfo(rms.dtype).tiny), torch.zeros_like(peak))


def sink_scores(hidden: torch.Tensor, sink_dims: Sequence[int], eps: float = 0.0) -> torch.Tensor:
    """phi(x) = max_{d in D_sink} |x[d]| / RMS(x), RMS(x) = sqrt(mean_k x[k]^2 + eps)  (docs/method.md sec. 1).

    ``hidden`` is ``[..., D]`` (e.g. ``[B, T, D]``); returns phi ``[...]`` in float32 (float64 stays float64).
    No learned norm weight enters. The official convention uses ``eps=1e-6`` (:data:`OFFICIAL_RMS_EPS`).
    """
    return phi_from_components(*sink_components(hidden, sink_dims), eps=eps)


def _passes_tau(phi: torch.Tensor, tau: torch.Tensor, convention: str) -> torch.Tensor:
    return phi > tau if convention == "official" else phi >= tau


def sink_mask(phi: torch.Tensor, config: VARConfig | Sequence[VARConfig]) -> torch.Tensor:
    """Sink tokens: phi >= tau (paper) or phi > tau (official)  (docs/method.md sec. 1 and 4).

    ``phi`` is ``[B, T]``; with one config per batch row, row b uses ``configs[b].tau``.
    """
    params = row_params(config, batch=phi.shape[0], device=phi.device)
    return _passes_tau(phi, params.tau[:, None], params.convention)


@dataclass(frozen=True)
class RowParams:
    """VAR settings as per-batch-row tensors ``[B]`` (one convention per batch)."""

    convention: str
    tau: torch.Tensor
    kept: torch.Tensor  # fraction of its attention a sink keeps in a selected row
    rho: torch.Tensor  # paper: select when r >= rho; official: when the visual sink share <= rho
    summ: torch.Tensor
    first_layer: torch.Tensor
    except_last_layer: torch.Tensor

    def sinks(self, phi: torch.Tensor) -> torch.Tensor:
        """[B, T] sink mask for phi [B, T], each row with its own tau (docs/method.md sec. 1 and 4)."""
        return _passes_tau(phi, self.tau.to(phi.device)[:, None], self.convention)

    @property
    def rms_eps(self) -> float:
        return OFFICIAL_RMS_EPS if self.convention == "official" else 0.0

    def layer_active(self, layer: int, num_layers: int) -> torch.Tensor:
        """[B] bool: may VAR modify layer ``layer`` (0-based) of ``num_layers`` for each row?"""
        is_last = layer == num_layers - 1
        return (self.first_layer <= layer) & ~(self.except_last_layer & is_last)


# A row without a configuration (VAR off) has no layer VAR may modify.
_NO_LAYER = 2**62


def row_params(
    config: VARConfig | Sequence[VARConfig | None], *, batch: int, device: torch.device | str = "cpu"
) -> RowParams:
    """Broadcast one config, or one per row, to ``[batch]`` tensors; a ``None`` row is VAR off (never modified)."""
    given = [config] if isinstance(config, VARConfig) else list(config)
    if not given:
        raise ConfigError("no VARConfig given")
    if len(given) == 1:
        given = given * batch
    elif len(given) != batch:
        raise ConfigError(f"{len(given)} configs for a batch of {batch} rows: give one, or one per row")
    conventions = {c.convention for c in given if c is not None}
    if len(conventions) > 1:
        raise ConfigError(f"configs of one batch must share a convention, got {sorted(conventions)}")
    convention = conventions.pop() if conventions else "paper"
    # VAR off: no layer to modify, and sinks keep all their attention should a caller ask anyway
    off = VARConfig(convention=convention, p=0.0 if convention == "paper" else 1.0, first_layer=_NO_LAYER)
    configs = [off if c is None else c for c in given]

    # float64, so that thresholds and fractions are exact; redistribute casts them to the attention's dtype.
    def col(values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    return RowParams(
        convention=convention,
        tau=col([c.tau for c in configs]),
        kept=col([c.kept_fraction for c in configs]),
        rho=col([c.rho for c in configs]),
        summ=col([c.summ for c in configs]),
        first_layer=col([c.first_layer for c in configs], torch.long),
        except_last_layer=col([bool(c.except_last_layer) for c in configs], torch.bool),
    )


@dataclass(frozen=True)
class Redistribution:
    """What :func:`redistribute` computed, per row ``[B, H, Q]``, for callers that also keep statistics."""

    attn: torch.Tensor | None  # [B, H, Q, K] the new probabilities (None where they were never materialised)
    selected: torch.Tensor  # rows that passed the selection tests
    changed: torch.Tensor  # selected rows with a receiver (S > 0): the rows actually rewritten
    visual_mass: torch.Tensor  # V
    receiver_mass: torch.Tensor  # S
    moved_mass: torch.Tensor  # attention taken from sinks and given to visual non-sinks (0 where unchanged)


def redistribute(
    attn: torch.Tensor,
    visual: torch.Tensor,
    sinks: torch.Tensor,
    queries: torch.Tensor,
    config: VARConfig | Sequence[VARConfig] | RowParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual Attention Redistribution of attention probabilities (docs/method.md sections 2-4).

    Args:
        attn: ``[B, H, Q, K]`` attention probabilities (rows sum to 1).
        visual: ``[B, K]`` bool, key positions holding image tokens (I_vis).
        sinks: ``[B, K]`` bool, sink tokens of this layer (text and visual).
        queries: ``[B, Q]`` bool, the rows VAR may modify (text after the image, generated tokens).
        config: one config, one per batch row, or precomputed :class:`RowParams`.

    Returns:
        ``(new_attn, selected)``: ``new_attn`` has ``attn``'s dtype; rows that are not modified are returned
        bit-identical. ``selected`` ``[B, H, Q]`` is True for rows that passed the selection tests (sec. 2),
        including rows left unchanged because no visual non-sink receives attention (S = 0).

    Selection, per row: V = sum_{j in I_vis} alpha_j; skip when V < summ or V = 0. Paper: select when
    r = S / V >= rho, S = sum over visual non-sinks. Official: select when the sink share
    sum_{vis sinks} alpha / sum_{j in I_vis} (alpha_j + 1e-6) <= rho, and only in batch rows whose layer has a
    visual sink. Redistribution (sec. 3): sinks keep ``kept`` of their attention; the budget
    Omega = (1 - kept) * sum_{sinks} alpha goes to the visual non-sinks in proportion to alpha_j / S.
    """
    out = redistribute_rows(attn, visual, sinks, queries, config)
    assert out.attn is not None  # redistribute_rows materialises the probabilities it is given
    return out.attn, out.selected


def select_rows(
    vis_mass: torch.Tensor,
    receiver_mass: torch.Tensor,
    sink_mass: torch.Tensor,
    vis_sink_mass: torch.Tensor,
    queries: torch.Tensor,
    params: RowParams,
    *,
    n_visual: torch.Tensor,
    has_visual_sink: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which rows VAR rewrites and by how much, from each row's attention masses (docs/method.md sections 2-4).

    Masses are ``[B, H, Q]`` probabilities: V (visual), S (visual non-sinks), the sink mass and the visual-sink
    mass; ``queries`` ``[B, Q]`` marks the rows VAR may modify; ``n_visual`` and ``has_visual_sink`` are ``[B]``.
    Returns ``(selected, changed, moved_mass, gain)``: ``changed`` = selected with a receiver (S > 0),
    ``moved_mass`` = Omega = (1 - kept) * sink mass on changed rows, ``gain`` = Omega / S (0 elsewhere).
    """
    dtype = vis_mass.dtype
    summ = params.summ.to(dtype)[:, None, None]
    rho = params.rho.to(dtype)[:, None, None]
    passes_mass = (vis_mass >= summ) & (vis_mass > 0)
    if params.convention == "official":
        share = vis_sink_mass / (vis_mass + _OFFICIAL_SHARE_EPS * n_visual.to(dtype)[:, None, None])
        passes_share = (share <= rho) & has_visual_sink[:, None, None]
    else:
        ratio = receiver_mass / torch.where(vis_mass > 0, vis_mass, torch.ones_like(vis_mass))
        passes_share = ratio >= rho
    selected = queries[:, None, :] & passes_mass & passes_share
    changed = selected & (receiver_mass > 0)
    kept = params.kept.to(dtype)
    moved_mass = torch.where(changed, (1.0 - kept)[:, None, None] * sink_mass, torch.zeros_like(sink_mass))
    gain = moved_mass / torch.where(receiver_mass > 0, receiver_mass, torch.ones_like(receiver_mass))
    return selected, changed, moved_mass, gain


def redistribute_rows(
    attn: torch.Tensor,
    visual: torch.Tensor,
    sinks: torch.Tensor,
    queries: torch.Tensor,
    config: VARConfig | Sequence[VARConfig] | RowParams,
) -> Redistribution:
    """:func:`redistribute`, also returning the per-row masses it computed (see :class:`Redistribution`)."""
    batch = attn.shape[0]
    params = config if isinstance(config, RowParams) else row_params(config, batch=batch, device=attn.device)
    a = attn if attn.dtype == torch.float64 else attn.float()
    receivers = visual & ~sinks
    # One batched matmul gives the four masses of every row: V, S, sink mass, visual-sink mass.
    masks = torch.stack([visual, receivers, sinks, visual & sinks], dim=-1).to(a.dtype)[:, None]  # [B,1,K,4]
    vis_mass, receiver_mass, sink_mass, vis_sink_mass = torch.matmul(a, masks).unbind(-1)  # [B,H,Q] each
    selected, changed, moved_mass, gain = select_rows(
        vis_mass,
        receiver_mass,
        sink_mass,
        vis_sink_mass,
        queries,
        params,
        n_visual=visual.sum(-1),
        has_visual_sink=(visual & sinks).any(-1),
    )
    kept = params.kept.to(a.dtype)
    # [B,1,1,K]
    sink_scale = torch.where(sinks, kept[:, None], torch.ones_like(kept)[:, None])[:, None, None, :]
    factor = sink_scale + receivers[:, None, None, :].to(a.dtype) * gain[..., None]
    new = torch.where(changed[..., None], (a * factor).to(attn.dtype), attn)
    return Redistribution(
        attn=new,
        selected=selected,
        changed=changed,
        visual_mass=vis_mass,
        receiver_mass=receiver_mass,
        moved_mass=moved_mass,
    )
