"""Settings of the sweep service: one typed object, read from the environment.

| variable | default | what |
|---|---|---|
| ``VARSWEEP_DATABASE_URL`` | ``sqlite:///varsweep.db`` (working folder) | best-settings store and, by default, the Optuna study |
| ``VARSWEEP_OPTUNA_URL`` | the database URL | moves the Optuna study to another database |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///mlruns.db`` (working folder) | MLflow tracking (a server URL in production) |
| ``RAY_ADDRESS`` | none: start a local Ray | the Ray cluster to join |
| ``VARSWEEP_MLFLOW_TIMEOUT`` | ``5`` | seconds per MLflow HTTP request before the sweep spools and goes on |
| ``VARSWEEP_CONNECT_TIMEOUT`` | ``15`` | seconds to reach the database at start before giving up |
| ``VARSWEEP_OUTAGE_TIMEOUT`` | ``600`` | seconds a running sweep waits for its database to come back |
| ``VARSWEEP_PLACEMENT_TIMEOUT`` | ``600`` | seconds the workers may wait for resources (an autoscaler adding GPUs) |
| ``VARSWEEP_HEARTBEAT_SECONDS`` | ``10`` | how often a running sweep renews its lease on the study |
| ``VARSWEEP_HEARTBEAT_GRACE`` | ``60`` | a sweep whose lease is older than this is dead: its trials are queued again |
| ``VARSWEEP_MAX_IMAGE_PIXELS`` | ``50000000`` | larger images are refused (decompression bombs) |

Passwords have no default and never reach a log line, an MLflow param or a tag: use :func:`redact_url`.
"""

from __future__ import annotations

import re

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from var_core import errors

__all__ = ["Settings", "redact_url", "normalise_database_url"]


def normalise_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` -> ``postgresql+psycopg://`` (psycopg 3; psycopg2 is not needed)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# a URL's userinfo (scheme://user:secret@host), and the libpq keyword and query forms (password=secret, in a query
# string, a "key=value key=value" connection string, PGPASSWORD=..., sslpassword=...)
_USERINFO = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)", re.IGNORECASE)
_KEYWORD = re.compile(
    r"(?P<head>(?:password|passwd|pwd)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^&;\s'\\]+)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """Replace every password in ``text`` with ``***``: URL userinfo, ``password=`` query parameters and libpq
    keyword strings."""
    text = _USERINFO.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _KEYWORD.sub(lambda m: f"{m['head']}***", text)


def first_line(error: BaseException) -> str:
    """An error in one line (:func:`var_core.errors.first_line`) with every password hidden."""
    return redact_url(errors.first_line(error))


class Settings(BaseSettings):
    """The service's settings (see the module docstring for the variables)."""

    model_config = SettingsConfigDict(env_prefix="VARSWEEP_", env_ignore_empty=True, extra="ignore")

    database_url: str = Field(default="sqlite:///varsweep.db", repr=False)
    optuna_url: str | None = Field(default=None, repr=False)
    mlflow_tracking_uri: str = Field(
        default="sqlite:///mlruns.db",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "VARSWEEP_MLFLOW_TRACKING_URI"),
        repr=False,
    )
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("RAY_ADDRESS"))
    mlflow_timeout: float = 5.0
    connect_timeout: float = 15.0
    outage_timeout: float = 600.0
    placement_timeout: float = 600.0
    heartbeat_seconds: float = 10.0
    heartbeat_grace: float = 60.0
    max_image_pixels: int = 50_000_000

    @field_validator("database_url", "optuna_url")
    @classmethod
    def _normalise(cls, value: str | None) -> str | None:
        return None if value is None else normalise_database_url(value)

    @property
    def study_url(self) -> str:
        return self.optuna_url or self.database_url

    def describe(self) -> dict[str, str]:
        """The settings with passwords redacted, for logs and MLflow tags."""
        return {
            "database": redact_url(self.database_url),
            "optuna": redact_url(self.study_url),
            "mlflow": redact_url(self.mlflow_tracking_uri),
            "ray": redact_url(self.ray_address or "local"),
        }
