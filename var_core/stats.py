"""Attention statistics of a VAR patch, per configuration slot, layer and head.

Gathered only while ``handle.collect_stats`` is True. Counts are sums, so statistics of several batches merge
with ``+``; the derived views (shares, means) divide at the end. The sums are small float64 numpy arrays on the
host: a result that carries them crosses process boundaries (Ray) without torch on the other side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from var_core.ops import Redistribution

__all__ = ["VARStats"]


@dataclass
class VARStats:
    """Sums over the rows VAR could modify, shaped ``[C, L, H]`` (``[C, L]`` for sink counts).

    C is the number of configurations of the patch (one per batch row when several are set).
    """

    visual_sinks: np.ndarray  # [C, L] visual sink tokens, summed over sequences
    text_sinks: np.ndarray  # [C, L]
    sequences: np.ndarray  # [C, L] sequences whose sinks were counted
    rows: np.ndarray  # [C, L, H] modifiable (query) rows seen
    selected: np.ndarray  # [C, L, H] rows that passed the selection tests
    ratio_sum: np.ndarray  # [C, L, H] sum of r (visual non-sink share) over rows with visual mass
    ratio_rows: np.ndarray  # [C, L, H] rows with visual mass
    moved: np.ndarray  # [C, L, H] attention mass taken from sinks and given to visual non-sinks

    @classmethod
    def empty(cls, configs: int, layers: int, heads: int) -> VARStats:
        def z(*shape: int) -> np.ndarray:
            return np.zeros(shape, dtype=np.float64)

        return cls(
            visual_sinks=z(configs, layers),
            text_sinks=z(configs, layers),
            sequences=z(configs, layers),
            rows=z(configs, layers, heads),
            selected=z(configs, layers, heads),
            ratio_sum=z(configs, layers, heads),
            ratio_rows=z(configs, layers, heads),
            moved=z(configs, layers, heads),
        )

    def add(
        self,
        layer: int,
        *,
        result: Redistribution,
        visual: torch.Tensor,
        sinks: torch.Tensor,
        rows: torch.Tensor,
        count_sinks: bool,
    ) -> None:
        """Accumulate one attention call of ``layer``: masks ``[B, K]``, modifiable rows ``[B, Q]``."""
        batch = rows.shape[0]
        # one slot per row when each row has its own configuration, else a single slot
        slot = np.arange(batch) if self.rows.shape[0] == batch else np.zeros(batch, dtype=np.int64)
        row_mask = rows[:, None, :].expand_as(result.selected)
        has_mass = row_mask & (result.visual_mass > 0)
        ratio = (result.receiver_mass / result.visual_mass.clamp_min(1e-30)).masked_fill(~has_mass, 0.0)

        def accumulate(target: np.ndarray, values: torch.Tensor) -> None:
            np.add.at(target[:, layer], slot, values.detach().double().cpu().numpy())

        accumulate(self.rows, row_mask.sum(-1))
        accumulate(self.selected, (result.selected & row_mask).sum(-1))
        accumulate(self.ratio_sum, ratio.sum(-1))
        accumulate(self.ratio_rows, has_mass.sum(-1))
        accumulate(self.moved, result.moved_mass.sum(-1))
        if count_sinks:
            accumulate(self.visual_sinks, (sinks & visual).sum(-1))
            accumulate(self.text_sinks, (sinks & ~visual).sum(-1))
            self.sequences[:, layer] += np.bincount(slot, minlength=self.sequences.shape[0])

    def __add__(self, other: VARStats) -> VARStats:
        return VARStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def select(self, slot: int) -> VARStats:
        """The statistics of one configuration slot (keeps a leading axis of 1)."""
        return VARStats(**{f.name: getattr(self, f.name)[slot : slot + 1].copy() for f in fields(self)})

    @property
    def selected_share(self) -> np.ndarray:
        """[C, L, H] share of modifiable (head, query) rows that were selected."""
        return self.selected / np.maximum(self.rows, 1)

    @property
    def mean_ratio(self) -> np.ndarray:
        """[C, L, H] mean visual non-sink ratio r over rows with visual attention."""
        return self.ratio_sum / np.maximum(self.ratio_rows, 1)

    @property
    def mean_moved(self) -> np.ndarray:
        """[C, L, H] mean attention mass moved per modifiable row."""
        return self.moved / np.maximum(self.rows, 1)

    def summary(self, slot: int | None = None) -> dict[str, float]:
        """Scalars for tracking: totals over layers and heads, for one slot or all."""
        s = self if slot is None else self.select(slot)
        rows = float(s.rows.sum())
        sequences = float(s.sequences.sum())
        return {
            "rows": rows,
            "selected_share": float(s.selected.sum()) / rows if rows else 0.0,
            "mean_ratio": float(s.ratio_sum.sum()) / max(float(s.ratio_rows.sum()), 1.0),
            "mass_moved_per_row": float(s.moved.sum()) / rows if rows else 0.0,
            "visual_sinks_per_layer": float(s.visual_sinks.sum()) / sequences if sequences else 0.0,
            "text_sinks_per_layer": float(s.text_sinks.sum()) / sequences if sequences else 0.0,
        }
