"""Processor classes of the model families, usable where torchvision is missing (beside the CPU torch)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import transformers
from transformers import ProcessorMixin
from transformers.utils import is_torchvision_available

from var_core.families import family_of

if TYPE_CHECKING:
    from torch import nn

__all__ = ["image_only_processor", "processor_class"]


@functools.cache
def image_only_processor(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``cls`` without its video processor, which needs torchvision (absent beside the CPU torch); images need
    none. Same class name, so a saved folder names ``cls`` and loads as ``cls`` where torchvision is installed;
    ``save_pretrained`` and ``from_pretrained`` work without it."""

    def get_attributes(klass: type[ProcessorMixin]) -> list[str]:
        return [name for name in cls.get_attributes() if "video" not in name]

    return type(cls.__name__, (cls,), {"get_attributes": classmethod(get_attributes), "__module__": __name__})


def processor_class(model: nn.Module) -> type[ProcessorMixin]:
    """The family's processor class, image-only when its video processor cannot be built here."""
    cls = getattr(transformers, family_of(model).processor)
    needs_video = any("video" in name for name in cls.get_attributes())
    return image_only_processor(cls) if needs_video and not is_torchvision_available() else cls
