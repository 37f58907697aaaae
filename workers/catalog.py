"""Which models a sweep can load, checked before any worker loads one: no weights, and no torch for a preset."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from var_core.errors import VarsweepError, first_line
from var_core.families import FAMILIES, family_of, image_token_id

__all__ = ["ModelLoadError", "ModelCheck", "PRESET_TYPES", "check_model", "looks_like_hub_id"]


class ModelLoadError(VarsweepError, ValueError):
    """A model name is neither a preset, a local folder nor a reachable hub id."""


# the model type of each preset, so a driver can check one without building it
PRESET_TYPES = {
    "tiny-llava": "llava",
    "tiny-llava-next": "llava_next",
    "tiny-qwen2-vl": "qwen2_vl",
    "tiny-qwen2.5-vl": "qwen2_5_vl",
    "tiny-internvl": "internvl",
    "llava-cpu-bench": "llava",
}


@dataclass(frozen=True)
class ModelCheck:
    """What a driver knows of a model before any worker loads it."""

    key: str  # what results are stored under (see check_model)
    model_type: str
    image_strings: tuple[str, ...]  # the family's image placeholders, which a question must not contain


def check_model(name: str) -> ModelCheck:
    """Check, without loading weights, that ``name`` can be swept.

    A preset is fine as it is. Otherwise the config is read (a local folder, or the hub when reachable): it must
    be a supported multimodal family with an image token. The key is ``name``, except for a local folder: the
    hub id recorded in its config, else the folder's name, then ``@`` and 8 hex digits of the folder's resolved
    path, so that two local checkpoints never share a key.
    """
    if name in PRESET_TYPES:
        model_type = PRESET_TYPES[name]
        return ModelCheck(key=name, model_type=model_type, image_strings=FAMILIES[model_type].image_strings)
    local = Path(name).expanduser()
    if not local.is_dir() and os.sep in name and not looks_like_hub_id(name):
        raise ModelLoadError(f"model {name!r}: no such folder, and not a preset ({', '.join(PRESET_TYPES)})")
    from transformers import AutoConfig  # torch comes with it: only for a checkpoint that is not a preset

    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else name)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load model {name!r} (not a preset: {', '.join(PRESET_TYPES)}; not a local folder with a "
            f"config.json; hub: {first_line(e)})"
        ) from e
    image_token_id(config)  # raises for an unsupported family or a config without an image token
    family = family_of(config)
    key = name
    if local.is_dir():
        recorded = str(getattr(config, "_name_or_path", "") or "")
        base = (
            recorded if looks_like_hub_id(recorded) and not Path(recorded).exists() else local.resolve().name
        )
        key = f"{base}@{hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:8]}"
    return ModelCheck(key=key, model_type=config.model_type, image_strings=family.image_strings)


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
