"""The one exception root of varsweep.

Every error varsweep raises on purpose derives from :class:`VarsweepError`; subclasses also inherit the builtin
they stand in for, so ``except ValueError`` around a bad configuration keeps working.
"""

from __future__ import annotations

__all__ = [
    "VarsweepError",
    "ConfigError",
    "UnsupportedModelError",
    "UnsupportedInputError",
    "SinkDimsError",
    "SinkDimsAssumedWarning",
    "first_line",
]


class VarsweepError(Exception):
    """Root of every error varsweep raises on purpose."""


class ConfigError(VarsweepError, ValueError):
    """A setting is out of range or inconsistent."""


class UnsupportedModelError(VarsweepError, ValueError):
    """The model lacks something VAR needs (family, image token id, decoder layers)."""


class UnsupportedInputError(VarsweepError, ValueError):
    """A call has a shape VAR does not support (several images in one prompt, a static KV cache)."""


class SinkDimsError(VarsweepError, LookupError):
    """No sink dimensions are known for a model, and none were given."""


class SinkDimsAssumedWarning(VarsweepError, UserWarning):
    """Sink dimensions were taken from a base LLM the model only resembles in shape: unverified for this model."""


def first_line(error: BaseException) -> str:
    """An error in one line, for an ``error:`` line or a wrapping error's message: the first line of its message,
    or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
