"""var_core: Visual Attention Redistribution (Kang et al., ICLR 2025) for Hugging Face LMMs.

Pure torch + transformers; docs/method.md gives the method, exactly. Names load lazily: importing ``VARConfig``,
the errors or ``VARStats`` costs no torch, so command-line help, error classes and thin trial processes stay light;
``patch`` and the tensor functions import torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["CONVENTIONS", "TASK_GROUP_RHO", "Convention", "VARConfig", "paper_defaults"], "config"),
    **dict.fromkeys(
        [
            "ConfigError",
            "SinkDimsAssumedWarning",
            "SinkDimsError",
            "UnsupportedInputError",
            "UnsupportedModelError",
            "VarsweepError",
        ],
        "errors",
    ),
    **dict.fromkeys(["FAMILIES", "Family", "family_of"], "families"),
    **dict.fromkeys(["redistribute", "sink_components", "sink_mask", "sink_scores"], "ops"),
    **dict.fromkeys(["VARHandle", "patch"], "patch"),
    **dict.fromkeys(["CallOptions", "SharedPrefix", "VARRun", "VARState"], "state"),
    **dict.fromkeys(
        [
            "BASE_LLM_BY_MODEL",
            "SINK_DIMS",
            "SinkDims",
            "SinkDimsDiscovery",
            "discover_sink_dims",
            "find_sink_dims",
            "record_sink_dims",
        ],
        "sink_dims",
    ),
    "VARStats": "stats",
}

__all__ = [
    "BASE_LLM_BY_MODEL",
    "CONVENTIONS",
    "CallOptions",
    "ConfigError",
    "Convention",
    "FAMILIES",
    "Family",
    "SINK_DIMS",
    "SharedPrefix",
    "SinkDims",
    "SinkDimsAssumedWarning",
    "SinkDimsDiscovery",
    "SinkDimsError",
    "TASK_GROUP_RHO",
    "UnsupportedInputError",
    "UnsupportedModelError",
    "VARConfig",
    "VARHandle",
    "VARRun",
    "VARState",
    "VARStats",
    "VarsweepError",
    "discover_sink_dims",
    "family_of",
    "find_sink_dims",
    "paper_defaults",
    "patch",
    "record_sink_dims",
    "redistribute",
    "sink_components",
    "sink_mask",
    "sink_scores",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'var_core' has no attribute {name!r}")
    loaded = importlib.import_module(f"var_core.{module}")
    # bind every name of that module (later lookups skip this function); this also rebinds ``patch``, which the
    # import of the submodule var_core.patch has just bound to the module
    globals().update({n: getattr(loaded, n) for n, m in _EXPORTS.items() if m == module})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from var_core.config import CONVENTIONS, TASK_GROUP_RHO, Convention, VARConfig, paper_defaults
    from var_core.errors import (
        ConfigError,
        SinkDimsAssumedWarning,
        SinkDimsError,
        UnsupportedInputError,
        UnsupportedModelError,
        VarsweepError,
    )
    from var_core.families import FAMILIES, Family, family_of
    from var_core.ops import redistribute, sink_components, sink_mask, sink_scores
    from var_core.patch import VARHandle, patch
    from var_core.sink_dims import (
        BASE_LLM_BY_MODEL,
        SINK_DIMS,
        SinkDims,
        SinkDimsDiscovery,
        discover_sink_dims,
        find_sink_dims,
        record_sink_dims,
    )
    from var_core.state import CallOptions, SharedPrefix, VARRun, VARState
    from var_core.stats import VARStats
