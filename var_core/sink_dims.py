"""Sink dimensions D_sink: a property of the base LLM (docs/method.md section 1), plus discovery for other models.

Resolution order for a model (:func:`find_sink_dims`): an explicit argument; ``sink_dims`` recorded in the text
config (by :func:`record_sink_dims`: given by the user, discovered, or planted in a test model), with the
provenance recorded beside it; the hub id, through :data:`BASE_LLM_BY_MODEL`; last, the text model's shape, which
only says the model is built like a known base LLM (a Qwen2.5-VL-7B has Qwen2-VL-7B's shape, a fine-tune keeps its
base's), so that match warns (:class:`~var_core.errors.SinkDimsAssumedWarning`). The result says how the dims
were found, for the sweep's logs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from var_core.errors import SinkDimsAssumedWarning, SinkDimsError

__all__ = [
    "SINK_DIMS",
    "BASE_LLM_BY_MODEL",
    "SinkDims",
    "find_sink_dims",
    "record_sink_dims",
    "discover_sink_dims",
    "SinkDimsDiscovery",
]

# Base LLM -> sink dimensions (docs/method.md section 1; the paper's Table/Fig. of massive activations).
SINK_DIMS: dict[str, tuple[int, ...]] = {
    "llama-2-7b": (1415, 2533),  # also Vicuna-7B v1.5, its fine-tune
    "llama-2-13b": (2100, 4743),  # also Vicuna-13B v1.5
    "qwen2-7b": (458, 2570),
    "internlm2.5-7b": (3584,),  # InternVL2-8B's LLM
}

# Hub ids -> base LLM (lower-cased): the models docs/method.md names, in their original and HF formats.
BASE_LLM_BY_MODEL: dict[str, str] = {
    "llava-hf/llava-1.5-7b-hf": "llama-2-7b",
    "liuhaotian/llava-v1.5-7b": "llama-2-7b",
    "llava-hf/llava-1.5-13b-hf": "llama-2-13b",
    "liuhaotian/llava-v1.5-13b": "llama-2-13b",
    "llava-hf/llava-v1.6-vicuna-7b-hf": "llama-2-7b",
    "liuhaotian/llava-v1.6-vicuna-7b": "llama-2-7b",
    "llava-hf/llava-v1.6-vicuna-13b-hf": "llama-2-13b",
    "liuhaotian/llava-v1.6-vicuna-13b": "llama-2-13b",
    "qwen/qwen2-vl-7b-instruct": "qwen2-7b",
    "qwen/qwen2-vl-7b": "qwen2-7b",
    "opengvlab/internvl2-8b": "internlm2.5-7b",
}

# (hidden, layers, heads, kv heads, intermediate) of the text model -> base LLM, for local folders and
# random-weight models of a real shape. A match is an assumption (see the module docstring).
_BASE_LLM_BY_SHAPE: dict[tuple[int, int, int, int, int], str] = {
    (4096, 32, 32, 32, 11008): "llama-2-7b",
    (5120, 40, 40, 40, 13824): "llama-2-13b",
    (3584, 28, 28, 4, 18944): "qwen2-7b",
}


@dataclass(frozen=True)
class SinkDims:
    """Sink dimensions for a model and how they were found."""

    dims: tuple[int, ...]
    source: str  # one line for logs: "given", "discovered: ...", "hub id ... -> llama-2-7b", "assumed: ..."
    assumed: bool = False  # True when only the text model's shape matched: not verified for this model


def _text_config(model: nn.Module) -> Any:
    config: Any = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _shape_key(text_config: object) -> tuple[int, int, int, int, int]:
    heads = int(getattr(text_config, "num_attention_heads", 0))
    return (
        int(getattr(text_config, "hidden_size", 0)),
        int(getattr(text_config, "num_hidden_layers", 0)),
        heads,
        int(getattr(text_config, "num_key_value_heads", None) or heads),
        int(getattr(text_config, "intermediate_size", 0)),
    )


def find_sink_dims(model: nn.Module, sink_dims: Sequence[int] | None = None) -> SinkDims:
    """The sink dimensions to use for ``model`` and their provenance (see the module docstring for the order).

    Warns (:class:`~var_core.errors.SinkDimsAssumedWarning`) when only the text model's shape matched.

    Raises:
        SinkDimsError: nothing matched, or the dims are out of range for the hidden size.
    """
    text_config = _text_config(model)
    name = str(getattr(model.config, "_name_or_path", "") or "")
    found: SinkDims | None = None
    if sink_dims is not None:
        found = SinkDims(tuple(int(d) for d in sink_dims), "given")
    elif getattr(text_config, "sink_dims", None) is not None:
        recorded = (
            getattr(text_config, "sink_dims_source", None) or "recorded in config.text_config.sink_dims"
        )
        found = SinkDims(tuple(int(d) for d in text_config.sink_dims), str(recorded))
    elif name.lower() in BASE_LLM_BY_MODEL:
        base = BASE_LLM_BY_MODEL[name.lower()]
        found = SinkDims(SINK_DIMS[base], f"hub id {name} -> {base} (docs/method.md sec. 1)")
    elif _shape_key(text_config) in _BASE_LLM_BY_SHAPE:
        base = _BASE_LLM_BY_SHAPE[_shape_key(text_config)]
        shape = _shape_key(text_config)
        found = SinkDims(
            SINK_DIMS[base],
            f"assumed: the text model of {name or type(model).__name__} has {base}'s shape {shape}",
            assumed=True,
        )
        warnings.warn(
            f"sink dims {found.dims} ASSUMED for {name or type(model).__name__}: its text model has the shape of "
            f"{base} (hidden, layers, heads, kv heads, intermediate = {shape}), which does not prove it shares "
            f"{base}'s massive-activation dimensions (another model or fine-tune of that shape may not); give "
            "sink_dims=... or discover them (var_core.discover_sink_dims, workers.models.load_model(..., "
            "sink_dims='discover'))",
            SinkDimsAssumedWarning,
            stacklevel=2,
        )
    if found is None:
        raise SinkDimsError(
            f"no sink dimensions known for {name or type(model).__name__} (text shape {_shape_key(text_config)}): "
            "pass sink_dims=..., or find them with var_core.discover_sink_dims(model, inputs) and record them "
            "with var_core.record_sink_dims"
        )
    hidden = int(getattr(text_config, "hidden_size", 0))
    if not found.dims or min(found.dims) < 0 or max(found.dims) >= hidden:
        raise SinkDimsError(f"sink_dims {found.dims} out of range for hidden size {hidden}")
    return found


def record_sink_dims(model: nn.Module, dims: Sequence[int], source: str) -> None:
    """Record sink dimensions and how they were found in the model's text config, where :func:`find_sink_dims`
    (and so :func:`var_core.patch`) reads them; ``save_pretrained`` keeps them."""
    text_config = _text_config(model)
    text_config.sink_dims = [int(d) for d in dims]
    text_config.sink_dims_source = source


@dataclass(frozen=True)
class SinkDimsDiscovery:
    """Result of :func:`discover_sink_dims`: the dimensions and how they were found."""

    dims: tuple[int, ...]
    scores: dict[int, float]  # dim -> median RMS-normalised |activation| of the first token
    method: str


@torch.no_grad()
def discover_sink_dims(
    model: nn.Module,
    inputs: Iterable[Mapping[str, torch.Tensor]],
    *,
    first_layer: int = 2,
    min_score: float = 6.0,
    max_dims: int = 4,
) -> SinkDimsDiscovery:
    """Find D_sink for a model not in :data:`SINK_DIMS` (docs/method.md section 1).

    For each prompt in ``inputs`` (processor outputs), run the model with ``output_hidden_states=True`` and take
    the first token (BOS, or the first real token under left padding) of every layer ``l >= first_layer``; its
    RMS-normalised activation |x[d]| / RMS(x) is massive in the sink dimensions. A dimension is kept when the
    median of that value over all (prompt, layer) pairs is at least ``min_score``; at most ``max_dims`` are
    returned, strongest first. The median makes the choice consistent over prompts and layers.
    """
    samples: list[torch.Tensor] = []
    for batch in inputs:
        out = model(**batch, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states
        mask = batch.get("attention_mask")
        first = (
            mask.long().argmax(dim=-1)
            if mask is not None
            else torch.zeros(hidden[0].shape[0], dtype=torch.long, device=hidden[0].device)
        )
        rows = torch.arange(hidden[0].shape[0], device=hidden[0].device)
        # hidden_states[l] enters layer l; the last entry is after the final norm, so it is left out.
        for layer in range(first_layer, len(hidden) - 1):
            x = hidden[layer][rows, first].float()
            samples.append(x.abs() / x.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12))
    if not samples:
        raise SinkDimsError(
            f"discover_sink_dims saw no layer >= first_layer={first_layer}: give at least one prompt "
            "to a model with more layers"
        )
    score = torch.cat(samples).median(dim=0).values
    order = torch.argsort(score, descending=True)
    dims = tuple(int(d) for d in order[:max_dims] if float(score[d]) >= min_score)
    if not dims:
        raise SinkDimsError(
            f"no dimension reaches a median normalised activation of {min_score} on the first token "
            f"(best: dim {int(order[0])} at {float(score[order[0]]):.2f}); this model may have no massive activations"
        )
    return SinkDimsDiscovery(
        dims=dims,
        scores={int(d): float(score[d]) for d in order[: max(max_dims, len(dims))]},
        method=(
            f"median over {len(samples)} (prompt, layer>={first_layer}) samples of the first token's "
            f"|x[d]|/RMS(x) >= {min_score}"
        ),
    )
