"""var_core: Visual Attention Redistribution (Kang et al., ICLR 2025) for Hugging Face LMMs.

Pure torch + transformers. See ../shared/VAR.md for the method, exactly.
"""

from var_core.config import CONVENTIONS, TASK_GROUP_RHO, Convention, VARConfig, paper_defaults
from var_core.errors import ConfigError, SinkDimsError, UnsupportedModelError, VarsweepError
from var_core.families import FAMILIES, Family, family_of
from var_core.ops import redistribute, sink_components, sink_mask, sink_scores
from var_core.patch import SharedPrefix, VARHandle, VARState, patch
from var_core.sink_dims import (
    BASE_LLM_BY_MODEL,
    SINK_DIMS,
    SinkDimsDiscovery,
    discover_sink_dims,
    resolve_sink_dims,
)
from var_core.stats import VARStats

__all__ = [
    "BASE_LLM_BY_MODEL",
    "CONVENTIONS",
    "Convention",
    "ConfigError",
    "FAMILIES",
    "Family",
    "SINK_DIMS",
    "SinkDimsDiscovery",
    "SinkDimsError",
    "TASK_GROUP_RHO",
    "UnsupportedModelError",
    "VARConfig",
    "SharedPrefix",
    "VARHandle",
    "VARState",
    "VARStats",
    "VarsweepError",
    "discover_sink_dims",
    "family_of",
    "paper_defaults",
    "patch",
    "redistribute",
    "resolve_sink_dims",
    "sink_components",
    "sink_mask",
    "sink_scores",
]
