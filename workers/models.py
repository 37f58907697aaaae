"""Model loading for the workers: hub ids and local folders through ``from_pretrained``, and the offline presets
(``workers.presets``) by name; sink dimensions given, found or discovered.

``workers.catalog`` checks a model name without loading it (what a driver does); this module loads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, ProcessorMixin

from var_core.errors import SinkDimsError, first_line
from var_core.families import family_of
from var_core.sink_dims import (
    SinkDims,
    SinkDimsDiscovery,
    discover_sink_dims,
    find_sink_dims,
    record_sink_dims,
)
from workers.catalog import PRESET_TYPES, ModelCheck, ModelLoadError, check_model, looks_like_hub_id
from workers.presets import (
    LLAVA_15_7B_SHAPE,
    LLAVA_CPU_SHAPE,
    PRESETS,
    TINY_INTERNVL_SHAPE,
    TINY_LLAVA_NEXT_SHAPE,
    TINY_SINK_DIMS,
    PlantedSinks,
    TinyShape,
    build_tiny_internvl,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    near_tie_answers,
    plant_sinks,
)
from workers.processors import image_only_processor, processor_class

__all__ = [
    "load_model",
    "model_sink_dims",
    "discover_model_sink_dims",
    "save_model",
    # re-exported: what other parts import from here (workers.catalog, workers.presets, workers.processors)
    "ModelLoadError",
    "ModelCheck",
    "PRESET_TYPES",
    "check_model",
    "PRESETS",
    "TINY_SINK_DIMS",
    "PlantedSinks",
    "TinyShape",
    "LLAVA_CPU_SHAPE",
    "LLAVA_15_7B_SHAPE",
    "TINY_LLAVA_NEXT_SHAPE",
    "TINY_INTERNVL_SHAPE",
    "plant_sinks",
    "near_tie_answers",
    "build_tiny_llava",
    "build_tiny_llava_next",
    "build_tiny_qwen2_vl",
    "build_tiny_qwen2_5_vl",
    "build_tiny_internvl",
    "image_only_processor",
]

SinkDimsChoice = Sequence[int] | Literal["discover"] | None


def load_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    planted: bool = True,
    sink_dims: SinkDimsChoice = None,
) -> tuple[nn.Module, ProcessorMixin]:
    """Load ``(model, processor)``: a preset, a local folder or a hub id, in eval mode with SDPA attention.

    ``device`` defaults to cuda when available. Presets come with planted sinks and near-tied answer tokens
    (:func:`plant_sinks`, :func:`near_tie_answers`) unless ``planted=False``. ``sink_dims`` overrides how
    ``var_core.patch`` finds the sink dimensions: a sequence of dims (recorded as "given"), or ``"discover"``
    (:func:`discover_model_sink_dims`, recorded with the method). :func:`model_sink_dims` then says which dims
    the model uses and how they were found.
    """
    if isinstance(sink_dims, str) and sink_dims != "discover":
        raise SinkDimsError(f"sink_dims={sink_dims!r}: give dimensions (ints) or 'discover'")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name in PRESETS:
        model, processor = PRESETS[name]()
        if planted:
            plant_sinks(model, processor)
            near_tie_answers(model, processor)
        model.config._name_or_path = name
    else:
        model, processor = _from_pretrained(name, dtype=dtype)
    family_of(model)  # fail early, with the list of supported types
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(device).eval()
    if sink_dims == "discover":
        found = discover_model_sink_dims(model, processor)
        record_sink_dims(model, found.dims, f"discovered: {found.method}")
    elif sink_dims is not None:
        record_sink_dims(model, sink_dims, "given")
    return model, processor


def model_sink_dims(model: nn.Module) -> SinkDims:
    """The sink dims ``var_core.patch`` will use for ``model`` and how they were found (``.source``, one line).

    Warns like :func:`var_core.find_sink_dims` when they are only assumed from the text model's shape.
    """
    return find_sink_dims(model)


_DISCOVERY_QUESTIONS = (
    "What is shown in this image?",
    "Is there a dog in the image?",
    "What color is the large circle?",
)


@torch.no_grad()
def discover_model_sink_dims(
    model: nn.Module, processor: ProcessorMixin, *, first_layer: int = 2, min_score: float = 6.0
) -> SinkDimsDiscovery:
    """Find the model's sink dimensions (:func:`var_core.discover_sink_dims`) from a few synthetic prompts.

    Three questions in the family's benchmark prompt format, each with a different image (a flat colour, noise,
    and shapes), so the dims found do not depend on one input. Raises ``SinkDimsError`` when no dimension
    is massive enough (the model may have no massive activations).
    """
    import numpy as np
    from PIL import Image, ImageDraw

    from workers.tasks import render_prompt

    rng = np.random.default_rng(0)
    shapes = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(shapes).ellipse((40, 40, 160, 160), fill="red", outline="black")
    images = [
        Image.new("RGB", (224, 224), (128, 128, 128)),
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)),
        shapes,
    ]
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    batches = []
    for question, image in zip(_DISCOVERY_QUESTIONS, images, strict=True):
        prompt = render_prompt(question, processor=processor, family=family_of(model).name)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        batches.append(
            {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
        )
    return discover_sink_dims(model, batches, first_layer=first_layer, min_score=min_score)


def _from_pretrained(name: str, *, dtype: torch.dtype | None) -> tuple[nn.Module, ProcessorMixin]:
    local = Path(name).expanduser()
    if not local.is_dir() and (os.sep in name and not looks_like_hub_id(name)):
        raise ModelLoadError(f"model {name!r}: no such folder, and not a preset ({', '.join(PRESETS)})")
    source = str(local) if local.is_dir() else name
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype or "auto", attn_implementation="sdpa"
        )
        family_of(model)  # the processor class comes from the family table
        processor = processor_class(model).from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load model {name!r} (not a preset: {', '.join(PRESETS)}; not a local folder with a "
            f"config.json; hub: {first_line(e)})"
        ) from e
    return model, processor


def save_model(model: nn.Module, processor: ProcessorMixin, folder: str | Path) -> Path:
    """Save a model and its processor so that :func:`load_model` (``from_pretrained``) reads them back."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
