"""What VAR keeps per sequence and per call, apart from the model it patches (:mod:`var_core.patch`).

* :class:`VARState`: one sequence batch's image positions, prompt extent and per-layer sink-score components,
  filled by the patch's hooks as the prompt goes through the model, and continued by later calls on its cache;
* :class:`CallOptions`: how one forward call runs (a shared prefix, only filling the cache, only the last position),
  passed beside the state as ``var_call=``, never stored on it;
* :class:`SharedPrefix`: the keys and values of a prompt prefix that every batch row continues (one copy);
* :class:`VARRun`: what one ``handle.using(...)`` block ran, and its statistics;
* :class:`LayerCapture`: one layer's attention before and after VAR, for the dashboards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from var_core.config import VARConfig
from var_core.errors import UnsupportedInputError, VarsweepError
from var_core.ops import RowParams, phi_from_components, sink_components
from var_core.stats import VARStats

__all__ = ["VARState", "CallOptions", "SharedPrefix", "VARRun", "LayerCapture", "pad_keys"]


@dataclass(frozen=True)
class SharedPrefix:
    """Keys and values ``[1, H_kv, P, D]`` per layer of a prompt prefix that every batch row continues.

    A call whose :class:`CallOptions` carry one passes a cache holding only the keys after the prefix, and
    explicit ``position_ids`` (they start at P); attention reads the prefix from here instead of n copies of it.
    """

    keys: Sequence[torch.Tensor]
    values: Sequence[torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def joined(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix and a call's keys and values as one sequence (a copy: only for what runs on base attention)."""
        batch = key.shape[0]
        prefix_key, prefix_value = self.keys[layer], self.values[layer]
        return (
            torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2),
            torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2),
        )


@dataclass
class VARState:
    """What VAR knows about one sequence batch: image positions, prompt extent, per-layer sink components.

    ``prompt_len=None`` makes the first forward call the whole prompt (``generate``); give the prompt length when
    the prompt arrives in several calls (a cached prefix, then the question).
    """

    prompt_len: int | None = None
    seen: int = 0  # tokens already in the cache
    visual: torch.Tensor | None = None  # [B, prompt tokens so far] bool
    candidate: torch.Tensor | None = None  # [B, prompt tokens so far] bool: real (non-pad) prompt tokens
    image_end: torch.Tensor | None = None  # [B] first position after the last image token (no image: never)
    peak: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, prompt] max |x[d_sink]|
    mean_sq: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, prompt] mean x^2
    stats_counted: set[int] = field(default_factory=set)  # layers whose sink counts entered the stats
    _call_start: int = 0
    _call_len: int = 0

    def continued(self, prompt_len: int) -> VARState:
        """This state for a prompt of ``prompt_len`` tokens that starts with what it has seen (shares tensors)."""
        return VARState(
            prompt_len=prompt_len,
            seen=self.seen,
            visual=self.visual,
            candidate=self.candidate,
            image_end=self.image_end,
            peak=dict(self.peak),
            mean_sq=dict(self.mean_sq),
        )

    @property
    def rows(self) -> int:
        return 0 if self.visual is None else int(self.visual.shape[0])

    def expand(self, n: int) -> VARState:
        """This state for ``n`` copies of a single-row batch (views, no copies): one row per configuration.

        With :meth:`CallOptions.continuing` (the keys and values this state's prefix left in its cache), the next
        call passes a cache of the keys after the prefix only, and may pass a single row: the layers below the
        first one VAR may modify run once, and the hidden states fan out to ``n`` rows there.
        """
        if self.visual is None or self.visual.shape[0] != 1:
            raise VarsweepError("VARState.expand needs a state of one row that has seen its prefix")

        def grow(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, *t.shape[1:])

        return VARState(
            prompt_len=self.prompt_len,
            seen=self.seen,
            visual=grow(self.visual),
            candidate=grow(self.candidate),  # type: ignore[arg-type]
            image_end=grow(self.image_end),  # type: ignore[arg-type]
            peak={k: grow(v) for k, v in self.peak.items()},
            mean_sq={k: grow(v) for k, v in self.mean_sq.items()},
        )

    def _begin_call(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        image_id: int,
        *,
        fan_out: bool = False,
    ) -> None:
        """Take a call's prompt tokens in; ``fan_out``: a single row continues every row of this state."""
        if input_ids is None:
            raise VarsweepError(
                "VAR needs input_ids to locate image tokens; inputs_embeds alone are not supported"
            )
        batch, length = input_ids.shape
        self._call_start, self._call_len = self.seen, length
        n_prompt = length if self.prompt_len is None else max(0, min(length, self.prompt_len - self.seen))
        if n_prompt == 0:
            return
        ids = input_ids[:, :n_prompt]
        visual = ids == image_id
        images = (visual & ~torch.nn.functional.pad(visual[:, :-1], (1, 0), value=False)).sum(-1)  # runs
        if bool((images > 1).any()):
            raise UnsupportedInputError(
                f"VAR supports one image per prompt; a row has {int(images.max())} (separate runs of image tokens)"
            )
        real = (
            attention_mask[:, -length:][:, :n_prompt].bool()
            if attention_mask is not None and attention_mask.dim() == 2
            else torch.ones_like(visual)
        )
        if self.visual is None:
            self.visual, self.candidate = visual, real
        else:
            if batch == 1 and fan_out:  # one row continues every configuration's row
                visual, real = visual.expand(self.rows, -1), real.expand(self.rows, -1)
            elif self.visual.shape[0] != batch:
                raise VarsweepError(
                    f"batch of {batch} rows continues a VARState of {self.visual.shape[0]} rows"
                )
            self.visual = torch.cat([self.visual, visual], dim=1)
            self.candidate = torch.cat([self.candidate, real], dim=1)  # type: ignore[list-item]
        positions = torch.arange(self.visual.shape[1], device=ids.device)
        last_image = torch.where(self.visual, positions, torch.full_like(positions, -1)).amax(dim=1)
        # VAR acts on rows after the image only; a row with no image (yet) has none
        self.image_end = torch.where(last_image >= 0, last_image + 1, torch.iinfo(torch.long).max)

    def _end_call(self) -> None:
        self.seen = self._call_start + self._call_len
        if self.prompt_len is None:
            self.prompt_len = self.seen

    def _record_layer(self, layer: int, hidden: torch.Tensor, sink_dims: Sequence[int]) -> None:
        n_prompt = (self.visual.shape[1] if self.visual is not None else 0) - self._call_start
        if n_prompt <= 0:
            return
        peak, mean_sq = sink_components(hidden[:, :n_prompt], sink_dims)
        if peak.shape[0] != self.rows:  # a single row below the fan-out layer
            peak, mean_sq = peak.expand(self.rows, -1), mean_sq.expand(self.rows, -1)
        if layer in self.peak and self.peak[layer].shape[1] == self._call_start:
            peak = torch.cat([self.peak[layer], peak], dim=1)
            mean_sq = torch.cat([self.mean_sq[layer], mean_sq], dim=1)
        self.peak[layer], self.mean_sq[layer] = peak, mean_sq

    def sinks(self, layer: int, params: RowParams, n_keys: int) -> torch.Tensor:
        """[B, n_keys] sink mask of ``layer``: prompt tokens whose phi passes tau (generated tokens never sink)."""
        if layer not in self.peak:
            raise VarsweepError(f"no sink scores for layer {layer}: the prompt ran while VAR was disabled")
        phi = phi_from_components(self.peak[layer], self.mean_sq[layer], eps=params.rms_eps)
        return pad_keys(params.sinks(phi) & self.candidate, n_keys)  # type: ignore[operator]


@dataclass(frozen=True)
class CallOptions:
    """How one forward call runs, beside its sequence's :class:`VARState`: passed through the forward as the
    keyword ``var_call`` (a call without it runs as usual)."""

    shared_prefix: SharedPrefix | None = None  # the cache holds only the keys after this prefix
    kv_only: bool = False  # the call only fills the cache: the last layer stops once its keys are written
    # only the last position's output of the last layer is read (the caller runs that layer's output projection
    # and MLP on it alone): with a shared prefix, the last layer attends from that position only
    last_position_only: bool = False

    @classmethod
    def continuing(
        cls, state: VARState, prefix: SharedPrefix, *, last_position_only: bool = False
    ) -> CallOptions:
        """Options of the calls that continue ``state``'s prefix, whose keys and values ``prefix`` holds."""
        image_end = int(state.image_end.max()) if state.image_end is not None else state.seen + 1
        if prefix.length != state.seen or image_end > prefix.length:
            raise VarsweepError(
                f"a shared prefix must be the state's {state.seen} tokens and hold the whole image; "
                f"got {prefix.length} tokens"
            )
        return cls(shared_prefix=prefix, last_position_only=last_position_only)


def pad_keys(mask: torch.Tensor, n_keys: int) -> torch.Tensor:
    if mask.shape[1] >= n_keys:
        return mask[:, :n_keys]
    return torch.nn.functional.pad(mask, (0, n_keys - mask.shape[1]), value=False)


@dataclass
class VARRun:
    """One :meth:`VARHandle.using` block: the configurations it ran (one per batch row) and, when asked for, the
    statistics of its forward calls (set when the block ends)."""

    configs: tuple[VARConfig | None, ...]
    stats: VARStats | None = None


@dataclass(frozen=True)
class LayerCapture:
    """One layer's attention for the last query row of a forward call, before and after VAR (CPU tensors)."""

    before: torch.Tensor  # [B, H, K] probabilities, VAR not yet applied in this layer
    after: torch.Tensor  # [B, H, K] after redistribution
    selected: torch.Tensor  # [B, H] heads selected for this row
    visual: torch.Tensor  # [B, K] image-token keys
    sinks: torch.Tensor  # [B, K] sink keys of this layer
