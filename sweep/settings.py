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

Passwords have no default and never reach a log line, an MLflow param or a tag: use :func:`redact_url`.
"""

from __future__ import annotations

import re

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "redact_url", "normalise_database_url"]


def normalise_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` -> ``postgresql+psycopg://`` (psycopg 3; psycopg2 is not needed)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


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
