"""Model-family facts, as data: where the decoder layers live, how to find image tokens, how they cover the image.

The method code never branches on model names; it asks this table (keyed by ``config.model_type``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from var_core.errors import UnsupportedModelError

if TYPE_CHECKING:  # the table is data: a driver reads it without importing torch
    import torch
    from torch import nn
    from transformers import PretrainedConfig

__all__ = [
    "Family",
    "FAMILIES",
    "ImageGrid",
    "ImageLayout",
    "family_of",
    "image_token_id",
    "image_layout",
    "prompt_positions",
    "decoder_layers",
    "backbone",
    "residual_branches",
    "sliding_window_layers",
]


ImageGrid = Literal["square", "anyres", "merged_thw", "tiles"]


@dataclass(frozen=True)
class Family:
    """Where things are in one family of ``*ForConditionalGeneration`` models, and how its inputs are laid out."""

    name: str  # prompt family (workers.tasks.render_prompt): "llava" (vicuna_v1), "qwen2_vl" or "internvl" (chat)
    image_token_attrs: tuple[str, ...]  # config fields holding the image placeholder token id
    # how the image tokens cover the image (see image_layout): "square" (one grid), "anyres" (a base grid, then
    # crops with a newline token per row), "merged_thw" (image_grid_thw, merge x merge patches per token),
    # "tiles" (tiles of a fixed grid, the last one the whole image)
    image_grid: ImageGrid
    # the strings the family's processor reads as image placeholders: a question must not contain them
    image_strings: tuple[str, ...] = ()
    mrope: bool = False  # 3-row M-RoPE position ids, from the backbone's get_rope_index (Qwen2-VL)
    # the transformers processor class; built without its video processor where torchvision is missing
    processor: str = ""
    backbone: str = "model"  # the multimodal model that receives input_ids and pixel_values
    layers: str = "model.language_model.layers"  # the language model's decoder layers
    # modules of a decoder layer whose per-position outputs are added to the residual stream
    residual_branches: tuple[str, ...] = ("self_attn.o_proj", "mlp")


# keyed by config.model_type
FAMILIES: dict[str, Family] = {
    "llava": Family(
        name="llava",
        image_token_attrs=("image_token_id", "image_token_index"),
        image_grid="square",
        image_strings=("<image>",),
        processor="LlavaProcessor",
    ),
    "llava_next": Family(
        name="llava",
        image_token_attrs=("image_token_id", "image_token_index"),
        image_grid="anyres",
        image_strings=("<image>",),
        processor="LlavaNextProcessor",
    ),
    "qwen2_vl": Family(
        name="qwen2_vl",
        image_token_attrs=("image_token_id",),
        image_grid="merged_thw",
        mrope=True,
        image_strings=("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
        processor="Qwen2VLProcessor",
    ),
    "qwen2_5_vl": Family(
        name="qwen2_vl",
        image_token_attrs=("image_token_id",),
        image_grid="merged_thw",
        mrope=True,
        image_strings=("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
        processor="Qwen2_5_VLProcessor",
    ),
    "internvl": Family(
        name="internvl",
        image_token_attrs=("image_token_id",),
        image_grid="tiles",
        image_strings=("<IMG_CONTEXT>", "<img>", "</img>", "<image>"),
        processor="InternVLProcessor",
    ),
}


def _config_of(model: nn.Module | PretrainedConfig) -> Any:
    """A model's config, or the config given (told apart without importing transformers)."""
    return (
        model
        if hasattr(model, "model_type") and hasattr(model, "to_dict")
        else getattr(model, "config", None)
    )


def family_of(model: nn.Module | PretrainedConfig) -> Family:
    """The family of a model, or of a model's config (so a driver can check a model without loading it)."""
    model_type = getattr(_config_of(model), "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"VAR does not know the model type {model_type!r} ({type(model).__name__}); supported: "
            f"{', '.join(sorted(FAMILIES))}. Load a *ForConditionalGeneration model of one of these types."
        )
    return FAMILIES[model_type]


def _resolve(root: nn.Module, path: str) -> object:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UnsupportedModelError(f"{type(root).__name__} has no `{path}` (missing `{part}`)")
    return obj


def backbone(model: nn.Module) -> nn.Module:
    from torch import nn

    module = _resolve(model, family_of(model).backbone)
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(f"{type(model).__name__}.{family_of(model).backbone} is not a module")
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    from torch import nn

    family = family_of(model)
    layers = _resolve(model, family.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(f"{type(model).__name__}.{family.layers} is not a non-empty ModuleList")
    return layers


def residual_branches(model: nn.Module, layer: int) -> list[nn.Module]:
    """The modules of decoder layer ``layer`` whose per-position outputs are added to the residual stream."""
    from torch import nn

    found = [_resolve(decoder_layers(model)[layer], path) for path in family_of(model).residual_branches]
    return [module for module in found if isinstance(module, nn.Module)]


def image_token_id(model: nn.Module | PretrainedConfig) -> int:
    """The id of the image placeholder token, from the model's (or the given) config."""
    family = family_of(model)
    config = _config_of(model)
    for attr in family.image_token_attrs:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= 0:
            return value
    raise UnsupportedModelError(
        f"{type(model).__name__} has no image token id: none of config.{', config.'.join(family.image_token_attrs)}"
        " is set, so VAR cannot tell image positions from text"
    )


def sliding_window_layers(model: nn.Module) -> list[int]:
    """Decoder layers whose attention is limited to a sliding window.

    Qwen2-style layers carry ``self_attn.sliding_window`` (None on full-attention layers, whatever the config's
    ``sliding_window`` says); Mistral-style layers read ``config.sliding_window`` at call time.
    """
    text_config = _config_of(model).get_text_config()
    found = []
    for index, layer in enumerate(decoder_layers(model)):
        attention = layer.self_attn
        window = (
            attention.sliding_window
            if hasattr(attention, "sliding_window")
            else getattr(getattr(attention, "config", text_config), "sliding_window", None)
        )
        if window is not None:
            found.append(index)
    return found


@dataclass(frozen=True)
class ImageLayout:
    """Image tokens ``[start, start + rows * cols)`` of one image (counted among its image tokens) cover the
    whole image as a ``rows x cols`` grid, row-major."""

    start: int
    rows: int
    cols: int


def image_layout(model: nn.Module, inputs: Mapping[str, torch.Tensor], n_image_tokens: int) -> ImageLayout:
    """Where the whole image lies among the ``n_image_tokens`` image tokens of row 0 of ``inputs``.

    * square (LLaVA-1.5): all tokens, a square grid.
    * anyres (LLaVA-NeXT): the first (image_size / patch_size)^2 tokens are the base image; the crops and their
      newline tokens follow.
    * merged_thw (Qwen2-VL): ``image_grid_thw`` patches, merged ``spatial_merge_size`` x ``spatial_merge_size``
      into one token.
    * tiles (InternVL): tiles of ``image_seq_length`` tokens; the last one is the whole image (the thumbnail
      after the crops, or the only tile).
    """
    config = _config_of(model)
    grid = family_of(model).image_grid
    if grid == "merged_thw":
        merge = int(config.vision_config.spatial_merge_size)
        _, rows, cols = (int(v) for v in inputs["image_grid_thw"][0])
        return ImageLayout(0, rows // merge, cols // merge)
    if grid == "anyres":
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        return ImageLayout(0, side, side)
    if grid == "tiles":
        side = int(round(int(config.image_seq_length) ** 0.5))
        return ImageLayout(n_image_tokens - side * side, side, side)
    side = int(round(n_image_tokens**0.5))
    if side * side != n_image_tokens:
        raise UnsupportedModelError(
            f"{n_image_tokens} image tokens do not form the square grid of {type(model).__name__}"
        )
    return ImageLayout(0, side, side)


def prompt_positions(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Position ids of a whole one-row prompt (processor outputs): ``[1, T]``, or ``[3, 1, T]`` for M-RoPE.

    M-RoPE positions come from the backbone's ``get_rope_index`` (image tokens get 2-D positions, the text after
    the image continues from the largest): explicit positions keep calls that continue a cached prefix stateless.
    """
    import torch

    ids = inputs["input_ids"]
    if family_of(model).mrope:
        positions, _ = backbone(model).get_rope_index(  # type: ignore[operator]
            ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
        )
        return positions
    return torch.arange(ids.shape[1], device=ids.device)[None]
