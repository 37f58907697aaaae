"""Inject VAR into a Hugging Face LMM without forking its modeling code.

``patch(model, config)`` installs three things, all removed by ``handle.remove()``:

* a registered attention function (``AttentionInterface``) for the language model only; the vision tower keeps its
  own attention. Rows VAR does not touch are delegated to the model's original attention function (SDPA or eager),
  so a disabled patch reproduces the unpatched model exactly; the few rows VAR may modify (text after the image,
  generated tokens) are computed with explicit probabilities and rewritten by :func:`var_core.ops.redistribute`;
* a forward pre-hook on every decoder layer that records the sink-score components of prompt tokens (docs/method.md sec. 1);
* a forward pre/post hook on the multimodal backbone that finds image positions from the image token id and
  threads a per-sequence :class:`VARState` through the forward as the keyword ``var_state``.

A :class:`VARState` lives with one sequence (one KV cache): it is looked up by cache across ``generate`` steps, or
passed explicitly (``model(..., var_state=state)``) by callers that reuse a prefix cache. How one call runs (a
shared prefix, only filling the cache, only the last position) is a frozen :class:`CallOptions` passed beside it
(``var_call=``), never stored on the state.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, Cache
from transformers.cache_utils import StaticLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from var_core.attention import attend, attention_probs, causal_allowed, shared_prefix_attention
from var_core.config import VARConfig
from var_core.errors import UnsupportedInputError, UnsupportedModelError, VarsweepError
from var_core.families import backbone, decoder_layers, family_of, image_token_id, sliding_window_layers
from var_core.ops import (
    Redistribution,
    RowParams,
    redistribute_rows,
    row_params,
)
from var_core.sink_dims import SinkDims, find_sink_dims
from var_core.state import CallOptions, LayerCapture, SharedPrefix, VARRun, VARState, pad_keys
from var_core.stats import VARStats

__all__ = ["patch", "VARHandle", "VARRun", "VARState", "SharedPrefix", "AttentionPath", "LayerCapture"]

AttentionPath = Literal["fast", "eager"]
_SUPPORTED_BASES = ("sdpa", "eager")
_NAME = "varsweep_{}"  # one registered name per base implementation, so masks come in the base's format
_HANDLES: weakref.WeakKeyDictionary[nn.Module, VARHandle] = weakref.WeakKeyDictionary()


class _CacheFilled(Exception):
    """Raised inside the last layer of a ``kv_only`` call once its keys and values are in the cache."""


_PLAIN_CALL = CallOptions()
_FILL_CACHE = CallOptions(kv_only=True)


class VARHandle:
    """A VAR patch on one model. Undo is API: :meth:`using` (a scope), :meth:`disable`, :meth:`enable`,
    :meth:`remove`, ``with``."""

    def __init__(
        self,
        model: nn.Module,
        config: VARConfig | Sequence[VARConfig],
        *,
        sink_dims: SinkDims,
        base_implementation: str,
        path: AttentionPath,
    ) -> None:
        self.model = model
        self.sink_dims = sink_dims.dims
        # how they were found (var_core.find_sink_dims), for the logs
        self.sink_dims_source = sink_dims.source
        self.path: AttentionPath = path
        self.image_token_id = image_token_id(model)
        self.layers = decoder_layers(model)
        self.num_layers = len(self.layers)
        model_config: Any = model.config
        self.num_heads = int(model_config.get_text_config().num_attention_heads)
        self.base_implementation = base_implementation
        self._base_attention = (
            eager_attention_forward if base_implementation == "eager" else ALL_ATTENTION_FUNCTIONS["sdpa"]
        )
        self._enabled = True
        self._removed = False
        self._configs: list[VARConfig | None] = []
        self._params_cache: dict[tuple[int, str], RowParams] = {}
        self._stats: VARStats | None = None
        self.collect_stats = False
        self._captured: dict[int, LayerCapture] | None = None
        self._states: weakref.WeakKeyDictionary[object, VARState] = weakref.WeakKeyDictionary()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.set(config)

    # ----------------------------------------------------------------- public API
    @property
    def configs(self) -> tuple[VARConfig | None, ...]:
        return tuple(self._configs)

    @property
    def enabled(self) -> bool:
        return self._enabled and not self._removed

    def set(self, config: VARConfig | Sequence[VARConfig | None]) -> None:
        """Use ``config`` from the next forward on; a sequence gives one config per batch row (None: VAR off)."""
        configs = [config] if isinstance(config, VARConfig) else list(config)
        row_params(configs, batch=len(configs))  # validates: non-empty, one convention
        self._configs = list[VARConfig | None](configs)
        self._params_cache.clear()
        self._stats = None
        # no configuration modifies a layer below this one: there, rows of one prompt are all alike (a single
        # input row fans out to one row per configuration here)
        first = [c.first_layer for c in configs if c is not None]
        self._first_active_layer = min(min(first, default=self.num_layers), self.num_layers - 1)

    @contextmanager
    def using(
        self, configs: VARConfig | Sequence[VARConfig | None] | None, *, stats: bool = False
    ) -> Iterator[VARRun]:
        """VAR with ``configs`` for the forward calls inside the block: one per batch row (``None``: VAR off for
        that row); ``None`` or only ``None`` rows: VAR off, the unpatched attention throughout. With ``stats`` the
        run holds the block's statistics once it ends. Whatever happens in the block, the handle's configuration,
        on/off switch and statistics are restored when it ends (as peft's ``disable_adapter`` restores its
        adapters)."""
        self._check_live()
        rows = [configs] if configs is None or isinstance(configs, VARConfig) else list(configs)
        saved = (self._enabled, list(self._configs), self.collect_stats, self._stats)
        run = VARRun(configs=tuple(rows))
        var_on = any(c is not None for c in rows)
        try:
            if var_on:
                self.set(rows)
            self._enabled = var_on
            self.collect_stats = stats and var_on
            yield run
            if self.collect_stats:
                run.stats = self.stats()
        finally:
            enabled, previous, collect, gathered = saved
            self.set(previous)
            self._enabled, self.collect_stats, self._stats = enabled, collect, gathered

    def disable(self) -> None:
        """Route every call to the original attention: outputs equal the unpatched model's."""
        self._enabled = False

    def enable(self) -> None:
        self._check_live()
        self._enabled = True

    def stats(self, reset: bool = False) -> VARStats:
        """Statistics gathered while ``collect_stats`` was True (one slot per configuration)."""
        stats = self._stats or VARStats.empty(len(self._configs), self.num_layers, self.num_heads)
        if reset:
            self._stats = None
        return stats

    @contextmanager
    def capture(self) -> Iterator[dict[int, LayerCapture]]:
        """Record, for every layer VAR may modify, the last query row's attention before and after VAR.

        The dict fills during the forward calls made inside the ``with`` block (the last call wins) and is no
        longer written to after it; nothing is recorded outside it.
        """
        captured: dict[int, LayerCapture] = {}
        self._captured = captured
        try:
            yield captured
        finally:
            self._captured = None

    def new_state(self, prompt_len: int | None = None) -> VARState:
        """A fresh per-sequence state, for callers that pass ``var_state=`` themselves."""
        return VARState(prompt_len=prompt_len)

    def prefill(
        self, module: nn.Module, *, past_key_values: Cache, var_state: VARState, **inputs: Any
    ) -> Cache:
        """Run ``module`` (the model or its backbone) only to fill ``past_key_values`` and ``var_state``.

        For a prompt prefix that later calls continue: the last layer stops once its keys and values are in the
        cache (its attention output, MLP and the LM head would be thrown away). Returns the cache.
        """
        if not self.enabled:
            raise VarsweepError("prefill records sink scores: enable the VAR patch first")
        try:
            module(
                **inputs,
                past_key_values=past_key_values,
                var_state=var_state,
                var_call=_FILL_CACHE,
                use_cache=True,
            )
        except _CacheFilled:
            pass
        return past_key_values

    def remove(self) -> None:
        """Take every hook and the attention routing out of the model."""
        if self._removed:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        _route_attention(self.model, self.base_implementation)
        for layer in self.layers:
            _HANDLES.pop(_self_attention(layer), None)
        self._removed = True

    def __enter__(self) -> VARHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else ("enabled" if self._enabled else "disabled")
        return (
            f"VARHandle({type(self.model).__name__}, {state}, path={self.path}, sink_dims={self.sink_dims}, "
            f"layers={self.num_layers}, configs={self._configs})"
        )

    # ----------------------------------------------------------------- internals
    def _check_live(self) -> None:
        if self._removed:
            raise VarsweepError("this VAR patch was removed; call var_core.patch(model, config) again")

    def _params(self, batch: int, device: torch.device) -> RowParams:
        key = (batch, str(device))
        if key not in self._params_cache:
            self._params_cache[key] = row_params(self._configs, batch=batch, device=device)
        return self._params_cache[key]

    def _install(self) -> None:
        self._hooks.append(
            backbone(self.model).register_forward_pre_hook(self._before_backbone, with_kwargs=True)
        )
        self._hooks.append(
            backbone(self.model).register_forward_hook(
                self._after_backbone, with_kwargs=True, always_call=True
            )
        )
        for layer in self.layers:
            self._hooks.append(layer.register_forward_pre_hook(self._before_layer, with_kwargs=True))
            _HANDLES[_self_attention(layer)] = self
        _route_attention(self.model, _NAME.format(self.base_implementation))

    def _before_backbone(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        if not self.enabled:
            return None
        cache = kwargs.get("past_key_values")
        if cache is not None and any(
            isinstance(layer, StaticLayer) for layer in getattr(cache, "layers", ())
        ):
            raise UnsupportedInputError(
                f"VAR needs a dynamic KV cache; this call passes a {type(cache).__name__} (leave cache_implementation "
                "unset)"
            )
        state = kwargs.get("var_state")
        if state is None and cache is not None:
            state = self._states.get(cache)
            if state is None and cache.get_seq_length() > 0:
                raise VarsweepError(
                    "this KV cache was filled outside the VAR patch: pass var_state=... with the prefix's state"
                )
        if state is None:
            state = VARState()
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        options: CallOptions = kwargs.get("var_call") or _PLAIN_CALL
        state._begin_call(
            input_ids,
            kwargs.get("attention_mask"),
            self.image_token_id,
            fan_out=options.shared_prefix is not None,
        )
        kwargs["var_state"] = state
        return args, kwargs

    def _after_backbone(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        state = kwargs.get("var_state")
        if state is None:
            return
        state._end_call()
        cache = getattr(output, "past_key_values", None)
        if cache is not None:
            self._states[cache] = state

    def _before_layer(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        state = kwargs.get("var_state")
        if state is None or not self.enabled:
            return None
        layer, hidden = _layer_index(_self_attention(module)), args[0]
        state._record_layer(layer, hidden, self.sink_dims)
        if hidden.shape[0] == 1 and state.rows > 1 and layer == self._first_active_layer:
            return (hidden.expand(state.rows, -1, -1), *args[1:]), kwargs
        return None

    def _attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        dropout: float,
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        state: VARState | None = kwargs.pop("var_state", None)
        options: CallOptions = kwargs.pop("var_call", None) or _PLAIN_CALL
        base_kwargs = {**kwargs, "dropout": dropout, "scaling": scaling}
        layer = _layer_index(module)
        if options.kv_only and layer == self.num_layers - 1:
            raise _CacheFilled
        if state is not None and options.shared_prefix is not None:
            shared = options.shared_prefix
            if self.enabled and layer >= self._first_active_layer:
                return self._attend_shared(
                    module,
                    query,
                    key,
                    value,
                    attention_mask,
                    scaling,
                    state,
                    shared,
                    options.last_position_only,
                )
            # below the first layer VAR may modify (or VAR off): nothing to rewrite, the base attention serves
            key, value = shared.joined(layer, key, value)
            mask = _prefix_visible(attention_mask, shared.length, query, key, self.base_implementation)
            return self._base_attention(module, query, key, value, mask, **base_kwargs)
        if state is None or not self.enabled:
            return self._base_attention(module, query, key, value, attention_mask, **base_kwargs)
        batch, _, n_query, _ = query.shape
        n_keys = key.shape[2]
        positions = torch.arange(n_keys - n_query, n_keys, device=query.device)
        after_image = positions[None, :] >= state.image_end[:, None]  # type: ignore[index]
        if self.path == "fast" and (layer < self._first_active_layer or not bool(after_image.any())):
            return self._base_attention(module, query, key, value, attention_mask, **base_kwargs)
        params = self._params(batch, query.device)
        modifiable = after_image & params.layer_active(layer, self.num_layers).to(query.device)[:, None]
        if self.path == "eager":
            first = 0
        elif not bool(modifiable.any()):
            return self._base_attention(module, query, key, value, attention_mask, **base_kwargs)
        else:
            first = int(modifiable.any(dim=0).nonzero()[0])
        outputs = []
        if first > 0:
            head_mask = attention_mask[..., :first, :] if attention_mask is not None else None
            outputs.append(
                self._base_attention(module, query[:, :, :first], key, value, head_mask, **base_kwargs)[0]
            )
        rows_mask = attention_mask[..., first:, :] if attention_mask is not None else None
        probs = attention_probs(query[:, :, first:], key, rows_mask, scaling)
        visual = pad_keys(state.visual, n_keys)  # type: ignore[arg-type]
        sinks = state.sinks(layer, params, n_keys)
        result = redistribute_rows(probs, visual, sinks, modifiable[:, first:], params)
        assert result.attn is not None  # given probabilities, it returns them rewritten
        if self.collect_stats:
            self._record_stats(layer, state, result, visual, sinks, modifiable[:, first:])
        if self._captured is not None and bool(modifiable[:, -1].any()):
            self._captured[layer] = LayerCapture(
                before=probs[:, :, -1].float().cpu(),
                after=result.attn[:, :, -1].float().cpu(),
                selected=result.selected[:, :, -1].cpu(),
                visual=visual.cpu(),
                sinks=sinks.cpu(),
            )
        outputs.append(attend(result.attn, value))  # float32 throughout, like SDPA's accumulation
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        # The eager path holds every row's probabilities, so it can serve output_attentions (after VAR).
        weights = result.attn.to(query.dtype) if self.path == "eager" else None
        return out.contiguous(), weights

    def _attend_shared(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        state: VARState,
        shared: SharedPrefix,
        last_position_only: bool,
    ) -> tuple[torch.Tensor, None]:
        """Every row of a call that continues a shared prefix (all after the image): see shared_prefix_attention."""
        layer, batch, n_keys = _layer_index(module), query.shape[0], shared.length + key.shape[2]
        n_query = query.shape[2]
        if last_position_only and layer == self.num_layers - 1:
            query = query[:, :, -1:]
            attention_mask = attention_mask[..., -1:, :] if attention_mask is not None else None
        params = self._params(batch, query.device)
        rows = torch.ones(batch, query.shape[2], dtype=torch.bool, device=query.device)
        rows &= params.layer_active(layer, self.num_layers).to(query.device)[:, None]
        visual = pad_keys(state.visual, n_keys)  # type: ignore[arg-type]
        sinks = state.sinks(layer, params, n_keys)
        out, result = shared_prefix_attention(
            query,
            shared.keys[layer],
            shared.values[layer],
            key,
            value,
            attention_mask,
            scaling=scaling,
            visual=visual[0, : shared.length],
            sinks=sinks,
            rows=rows,
            params=params,
        )
        if self.collect_stats:
            self._record_stats(layer, state, result, visual, sinks, rows)
        return out.expand(-1, n_query, -1, -1), None

    def _record_stats(
        self,
        layer: int,
        state: VARState,
        result: Redistribution,
        visual: torch.Tensor,
        sinks: torch.Tensor,
        modifiable: torch.Tensor,
    ) -> None:
        if self._stats is None:
            self._stats = VARStats.empty(len(self._configs), self.num_layers, self.num_heads)
        count_sinks = bool(modifiable.any()) and layer not in state.stats_counted
        if count_sinks:
            state.stats_counted.add(layer)
        self._stats.add(
            layer, result=result, visual=visual, sinks=sinks, rows=modifiable, count_sinks=count_sinks
        )


def _self_attention(layer: nn.Module) -> nn.Module:
    attention = layer.self_attn
    assert isinstance(attention, nn.Module)  # every family's decoder layer has one (var_core.families)
    return attention


def _layer_index(attention: Any) -> int:
    """The decoder layer an attention module belongs to (transformers sets ``layer_idx`` on each)."""
    return int(attention.layer_idx)


def _route_attention(model: Any, implementation: str) -> None:
    """Name the attention function of the language model (only: the vision tower keeps its own)."""
    model.set_attn_implementation({"text_config": implementation})


def _prefix_visible(
    mask: torch.Tensor | None, prefix_len: int, query: torch.Tensor, key: torch.Tensor, base: str
) -> torch.Tensor:
    """A call's mask over its own keys, widened to a shared prefix (all visible), in the base's format."""
    if mask is None:  # causal: the queries are the last of the keys
        allowed = causal_allowed(query.shape[2], key.shape[2], query.device)[None, None]
    else:
        own = mask if mask.dtype == torch.bool else mask == 0
        allowed = torch.cat([own.new_ones(*own.shape[:-1], prefix_len), own], dim=-1)
    if base == "eager":
        return torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~allowed, torch.finfo(query.dtype).min
        )
    return allowed


def _var_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    handle = _HANDLES.get(module)
    if handle is None:
        raise VarsweepError(f"{type(module).__name__} routes to VAR attention but no VAR patch owns it")
    return handle._attend(module, query, key, value, attention_mask, scaling, dropout, kwargs)


def _register_attention() -> None:
    """Make VAR's attention known to transformers under one name per base implementation (done on first patch:
    importing var_core registers nothing). The mask function is registered under the same name, else
    transformers passes no mask at all (../docs/method.md, "Where VAR runs")."""
    for base in _SUPPORTED_BASES:  # registering again replaces an entry with itself: harmless
        AttentionInterface.register(_NAME.format(base), _var_attention)
        AttentionMaskInterface.register(_NAME.format(base), ALL_MASK_ATTENTION_FUNCTIONS[base])


def patch(
    model: nn.Module,
    config: VARConfig | Sequence[VARConfig] | None = None,
    sink_dims: Sequence[int] | None = None,
    *,
    path: AttentionPath = "fast",
) -> VARHandle:
    """Patch ``model`` (a ``*ForConditionalGeneration`` of a family in :data:`var_core.FAMILIES`) with VAR.

    Everything is checked before the model is touched: the family, the image token id, the decoder layers (no
    sliding window), the sink dimensions (:func:`var_core.find_sink_dims`; ``handle.sink_dims_source`` says how
    they were found) and the attention implementation (SDPA or eager).
    ``path="eager"`` computes every attention row with explicit probabilities, as the released code does; the
    default ``"fast"`` keeps every row VAR cannot touch on the original implementation.
    """
    config = VARConfig() if config is None else config
    if path not in ("fast", "eager"):
        raise VarsweepError(f"path={path!r} is not one of 'fast', 'eager'")
    family_of(model)
    image_token_id(model)
    layers = decoder_layers(model)
    windowed = sliding_window_layers(model)
    if windowed:
        raise UnsupportedModelError(
            f"VAR does not support sliding-window attention; decoder layers {windowed} of {type(model).__name__} use it"
        )
    dims = find_sink_dims(model, sink_dims)
    if any(_self_attention(layer) in _HANDLES for layer in layers):
        raise VarsweepError("this model is already VAR-patched: remove() the existing handle first")
    model_config: Any = model.config
    base = model_config.get_text_config()._attn_implementation
    if base not in _SUPPORTED_BASES:
        raise UnsupportedModelError(
            f"VAR runs on top of the 'sdpa' or 'eager' attention of the language model; it uses {base!r}. "
            "Load the model with attn_implementation='sdpa'."
        )
    _register_attention()
    handle = VARHandle(model, config, sink_dims=dims, base_implementation=base, path=path)
    handle._install()
    return handle
