"""Model-family facts, as data: where the decoder layers live and how to find image tokens.

The method code never branches on model names; it asks this table (keyed by ``config.model_type``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from var_core.errors import UnsupportedModelError

__all__ = ["Family", "FAMILIES", "family_of", "image_token_id", "decoder_layers", "backbone", "residual_branches"]


@dataclass(frozen=True)
class Family:
    """Where things are in one family of ``*ForConditionalGeneration`` models."""

    name: str  # prompt family: "llava" (vicuna_v1 conversation) or "qwen2_vl" (chat template)
    backbone: str  # the multimodal model that receives input_ids and pixel_values
    layers: str  # the language model's decoder layers, relative to the top model
    image_token_attrs: tuple[str, ...]  # config fields holding the image placeholder token id
    # modules of a decoder layer whose per-position outputs are added to the residual stream
    residual_branches: tuple[str, ...] = ("self_attn.o_proj", "mlp")


_LLAVA = Family(
    name="llava",
    backbone="model",
    layers="model.language_model.layers",
    image_token_attrs=("image_token_id", "image_token_index"),
)
_QWEN2_VL = Family(
    name="qwen2_vl",
    backbone="model",
    layers="model.language_model.layers",
    image_token_attrs=("image_token_id",),
)

# keyed by config.model_type
FAMILIES: dict[str, Family] = {
    "llava": _LLAVA,
    "llava_next": _LLAVA,
    "qwen2_vl": _QWEN2_VL,
    "qwen2_5_vl": _QWEN2_VL,
}


def family_of(model: nn.Module | PretrainedConfig) -> Family:
    """The family of a model, or of a model's config (so a driver can check a model without loading it)."""
    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
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
    module = _resolve(model, family_of(model).backbone)
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(f"{type(model).__name__}.{family_of(model).backbone} is not a module")
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    family = family_of(model)
    layers = _resolve(model, family.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(f"{type(model).__name__}.{family.layers} is not a non-empty ModuleList")
    return layers


def residual_branches(model: nn.Module, layer: int) -> list[nn.Module]:
    """The modules of decoder layer ``layer`` whose per-position outputs are added to the residual stream."""
    found = [_resolve(decoder_layers(model)[layer], path) for path in family_of(model).residual_branches]
    return [module for module in found if isinstance(module, nn.Module)]


def image_token_id(model: nn.Module | PretrainedConfig) -> int:
    """The id of the image placeholder token, from the model's (or the given) config."""
    family = family_of(model)
    config = model if isinstance(model, PretrainedConfig) else model.config
    for attr in family.image_token_attrs:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= 0:
            return value
    raise UnsupportedModelError(
        f"{type(model).__name__} has no image token id: none of config.{', config.'.join(family.image_token_attrs)}"
        " is set, so VAR cannot tell image positions from text"
    )
