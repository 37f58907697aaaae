"""Errors of the benchmark task layer; all derive from :class:`var_core.errors.VarsweepError`."""

from __future__ import annotations

from var_core.errors import VarsweepError

__all__ = ["DataError", "UnknownTaskError", "DuplicateTaskError", "ScoringError", "OptionTokenError"]


class DataError(VarsweepError, ValueError):
    """A benchmark file is missing, unreadable or malformed; the message names the file (and row)."""


class UnknownTaskError(VarsweepError, KeyError, ValueError):
    """No task is registered under a name; the message lists near names and all names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class DuplicateTaskError(VarsweepError, ValueError):
    """A task name is registered twice."""


class ScoringError(VarsweepError, ValueError):
    """Predictions do not match the task's examples (missing or unknown ids), or a scorer lacks an input."""


class OptionTokenError(VarsweepError, ValueError):
    """Options cannot be told apart by their first answer token."""
