"""Infrastructure settings: where the warehouse, MLflow, Optuna and reports live.

Precedence is environment (`RETRAIN_*`) over `retrain.yaml` in the working directory over
embedded defaults, which put everything under one folder (`.retrain/`, or `RETRAIN_HOME`) so a
demo or a test never writes into the user's home or into another test's files.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url


class Settings(BaseSettings):
    """Infrastructure and secrets, defined once; model knobs live in the model config instead."""

    model_config = SettingsConfigDict(
        env_prefix="RETRAIN_",
        yaml_file=os.environ.get("RETRAIN_SETTINGS_FILE", "retrain.yaml"),
        extra="ignore",
    )

    home: Path = Field(default=Path(".retrain"), description="Folder for every embedded store.")
    warehouse_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; defaults to a SQLite file under home."
    )
    warehouse_schema: str | None = Field(
        default=None, description="Schema for every table we read and write (PostgreSQL)."
    )
    mlflow_tracking_uri: SecretStr | None = None
    mlflow_artifact_location: str | None = None
    optuna_storage: SecretStr | None = None
    actor: str = Field(default_factory=lambda: os.environ.get("USER", "retrain"))
    lock_wait_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a run waits for another run of the same source or model to finish before it "
        "gives up as busy (exit 4).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls), file_secret_settings)

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    def resolved_warehouse_url(self) -> str:
        if self.warehouse_url is not None:
            return self.warehouse_url.get_secret_value()
        return f"sqlite:///{self.resolved_home / 'warehouse.db'}"

    def resolved_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri is not None:
            return self.mlflow_tracking_uri.get_secret_value()
        return f"sqlite:///{self.resolved_home / 'mlflow.db'}"

    def resolved_artifact_location(self) -> str:
        return self.mlflow_artifact_location or (self.resolved_home / "mlartifacts").as_uri()

    def resolved_optuna_storage(self) -> str:
        if self.optuna_storage is not None:
            return self.optuna_storage.get_secret_value()
        return f"sqlite:///{self.resolved_home / 'optuna.db'}"

    @property
    def reports_dir(self) -> Path:
        return self.resolved_home / "reports"

    def describe(self) -> dict[str, str]:
        """Where things live, with passwords hidden: safe to print or log."""
        return {
            "home": str(self.resolved_home),
            "warehouse": redact_url(self.resolved_warehouse_url()),
            "warehouse_schema": self.warehouse_schema or "",
            "mlflow": redact_url(self.resolved_tracking_uri()),
            "optuna": redact_url(self.resolved_optuna_storage()),
        }


def redact_url(url: str) -> str:
    """Hide the password of a database URL; anything that is not one passes through unchanged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (e.g. http://), nothing to hide
        return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once; tests call `get_settings.cache_clear()` after env changes."""
    settings = Settings()
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    return settings
