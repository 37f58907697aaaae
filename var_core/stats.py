"""Attention statistics of a VAR patch, per configuration slot, layer and head.

Gathered only while ``handle.collect_stats`` is True. Counts are sums, so statistics of several batches merge
with ``+``; the derived views (shares, means) divide at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from var_core.ops import Redistribution

__all__ = ["VARStats"]


@dataclass
class VARStats:
    """Sums over the rows VAR could modify, shaped ``[C, L, H]`` (``[C, L]`` for sink counts).

    C is the number of configurations of the patch (one per batch row when several are set).
    """

    visual_sinks: torch.Tensor  # [C, L] visual sink tokens, summed over sequences
    text_sinks: torch.Tensor  # [C, L]
    sequences: torch.Tensor  # [C, L] sequences whose sinks were counted
    rows: torch.Tensor  # [C, L, H] modifiable (query) rows seen
    selected: torch.Tensor  # [C, L, H] rows that passed the selection tests
    ratio_sum: torch.Tensor  # [C, L, H] sum of r (visual non-sink share) over rows with visual mass
    ratio_rows: torch.Tensor  # [C, L, H] rows with visual mass
    moved: torch.Tensor  # [C, L, H] attention mass taken from sinks and given to visual non-sinks

    @classmethod
    def empty(cls, configs: int, layers: int, heads: int) -> VARStats:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64)

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
        slot = torch.arange(batch) if self.rows.shape[0] == batch else torch.zeros(batch, dtype=torch.long)
        row_mask = rows[:, None, :].expand_as(result.selected)
        has_mass = row_mask & (result.visual_mass > 0)
        ratio = torch.where(has_mass, result.receiver_mass / result.visual_mass.clamp_min(1e-30), 0.0)

        def accumulate(target: torch.Tensor, values: torch.Tensor) -> None:
            target[:, layer].index_add_(0, slot, values.double().cpu())

        accumulate(self.rows, row_mask.float().sum(-1))
        accumulate(self.selected, (result.selected & row_mask).float().sum(-1))
        accumulate(self.ratio_sum, ratio.sum(-1))
        accumulate(self.ratio_rows, has_mass.float().sum(-1))
        accumulate(self.moved, result.moved_mass.sum(-1))
        if count_sinks:
            accumulate(self.visual_sinks, (sinks & visual).float().sum(-1))
            accumulate(self.text_sinks, (sinks & ~visual).float().sum(-1))
            accumulate(self.sequences, torch.ones(batch))

    def __add__(self, other: VARStats) -> VARStats:
        return VARStats(**{name: getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__})

    def select(self, slot: int) -> VARStats:
        """The statistics of one configuration slot (keeps a leading axis of 1)."""
        return VARStats(
            **{name: getattr(self, name)[slot : slot + 1].clone() for name in self.__dataclass_fields__}
        )

    @property
    def selected_share(self) -> torch.Tensor:
        """[C, L, H] share of modifiable (head, query) rows that were selected."""
        return self.selected / self.rows.clamp_min(1)

    @property
    def mean_ratio(self) -> torch.Tensor:
        """[C, L, H] mean visual non-sink ratio r over rows with visual attention."""
        return self.ratio_sum / self.ratio_rows.clamp_min(1)

    @property
    def mean_moved(self) -> torch.Tensor:
        """[C, L, H] mean attention mass moved per modifiable row."""
        return self.moved / self.rows.clamp_min(1)

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
