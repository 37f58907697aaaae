"""VARConfig: the hyper-parameters of Visual Attention Redistribution, validated at construction.

Two conventions share one config (docs/method.md sections 4 and 6):

* ``"paper"``: ``p`` is the fraction of sink attention moved (sinks keep ``1 - p``); a head is selected when the
  visual non-sink share ``r >= rho``; a token is a sink when ``phi >= tau`` with an exact RMS.
* ``"official"``: the released code's behaviour: sinks keep ``p``; a head is selected when the visual *sink*
  share ``1 - r <= rho``; ``phi > tau`` with ``RMS = sqrt(mean(x^2) + 1e-6)``; layers without a visual sink are
  skipped; the last layer is modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from var_core.errors import ConfigError

__all__ = ["VARConfig", "Convention", "CONVENTIONS", "TASK_GROUP_RHO", "paper_defaults"]

Convention = Literal["paper", "official"]
CONVENTIONS: tuple[str, ...] = ("paper", "official")

# The release's shipped setting, per convention (docs/method.md section 6): paper p 0.4 == official p 0.6.
_DEFAULT_P = {"paper": 0.4, "official": 0.6}
_DEFAULT_EXCEPT_LAST = {"paper": True, "official": False}
# summ, the minimum visual mass of a row VAR may rewrite: the paper's value, and a sweep's unless it searches summ
DEFAULT_SUMM = 0.2

# rho by task group, in the paper convention (docs/method.md section 2).
TASK_GROUP_RHO: dict[str, float] = {"general": 0.8, "hallucination": 0.5, "vision-centric": 0.9}


@dataclass(frozen=True)
class VARConfig:
    """Hyper-parameters of VAR. ``p=None`` and ``except_last_layer=None`` resolve by convention."""

    tau: float = field(default=20.0, metadata={"help": "sink threshold on phi (docs/method.md sec. 1); > 0"})
    rho: float = field(
        default=0.5, metadata={"help": "head-selection threshold (docs/method.md sec. 2); in [0, 1]"}
    )
    p: float | None = field(
        default=None, metadata={"help": "paper: fraction of sink attention moved; official: fraction kept"}
    )
    summ: float = field(
        default=DEFAULT_SUMM, metadata={"help": "minimum visual attention mass of a row; in [0, 1]"}
    )
    first_layer: int = field(default=2, metadata={"help": "first decoder layer VAR may modify; >= 0"})
    except_last_layer: bool | None = field(
        default=None, metadata={"help": "leave the last decoder layer alone"}
    )
    convention: Convention = field(
        default="paper", metadata={"help": "'paper' or 'official' (docs/method.md sec. 4)"}
    )

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"convention={self.convention!r} is not one of {', '.join(CONVENTIONS)}")
        if self.p is None:
            object.__setattr__(self, "p", _DEFAULT_P[self.convention])
        if self.except_last_layer is None:
            object.__setattr__(self, "except_last_layer", _DEFAULT_EXCEPT_LAST[self.convention])
        _check_real("tau", self.tau)
        if not self.tau > 0:
            raise ConfigError(f"tau={self.tau!r} is out of range: tau must be > 0")
        for name in ("rho", "p", "summ"):
            value = getattr(self, name)
            _check_real(name, value)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value!r} is out of range: {name} must be in [0, 1]")
        if (
            isinstance(self.first_layer, bool)
            or not isinstance(self.first_layer, int)
            or self.first_layer < 0
        ):
            raise ConfigError(
                f"first_layer={self.first_layer!r} is out of range: first_layer must be an int >= 0"
            )
        if not isinstance(self.except_last_layer, bool):
            raise ConfigError(f"except_last_layer={self.except_last_layer!r} must be a bool")

    @property
    def kept_fraction(self) -> float:
        """Fraction of its attention a sink keeps in a selected row (paper: 1 - p; official: p)."""
        p = float(self.p)  # type: ignore[arg-type]  # resolved in __post_init__
        return 1.0 - p if self.convention == "paper" else p


def paper_defaults(task_group: str, convention: Convention = "paper") -> VARConfig:
    """The paper's defaults for a task group, in ``convention`` (docs/method.md section 6).

    tau 20, summ 0.2, p by the convention's shipped value, and the group's rho converted to the convention
    (official rho = 1 - paper rho).
    """
    if task_group not in TASK_GROUP_RHO:
        raise ConfigError(f"task group {task_group!r} is not one of {', '.join(TASK_GROUP_RHO)}")
    paper_rho = TASK_GROUP_RHO[task_group]
    rho = paper_rho if convention == "paper" else round(1.0 - paper_rho, 10)
    return VARConfig(tau=20.0, rho=rho, summ=DEFAULT_SUMM, convention=convention)


def _check_real(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
