"""Infrastructure settings: where the warehouse, MLflow, Optuna and reports live.

Precedence is environment (`RETRAIN_*`) over `retrain.yaml` in the working directory over
embedded defaults, which put everything under one folder (`.retrain/`, or `RETRAIN_HOME`) so a
demo or a test never writes into the user's home or into another test's files.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from retrain.errors import ConfigError
from retrain.redaction import redact_url, secret_values

__all__ = ["Settings", "get_settings", "load_settings", "redact_url"]

# Where MLflow keeps a user's credentials when they are not in the tracking URI: masked like any password.
MLFLOW_SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class Settings(BaseSettings):
    """Infrastructure and secrets, defined once; model knobs live in the model config instead."""

    model_config = SettingsConfigDict(
        env_prefix="RETRAIN_",
        yaml_file=os.environ.get("RETRAIN_SETTINGS_FILE", "retrain.yaml"),
        # A misspelt key (`warehouse_ur:`) must not fall back silently to the embedded SQLite.
        extra="forbid",
    )

    home: Path = Field(default=Path(".retrain"), description="Folder for every embedded store.")
    warehouse_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; defaults to a SQLite file under home."
    )
    warehouse_schema: str | None = Field(
        default=None, description="Schema for every table we read and write (PostgreSQL)."
    )
    mlflow_tracking_uri: SecretStr | None = Field(
        default=None, description="MLflow tracking URI; defaults to a SQLite file under home."
    )
    mlflow_artifact_location: str | None = Field(
        default=None,
        description="Artifact root of new experiments; default: the tracking server decides, or a folder "
        "under home for a local store.",
    )
    optuna_storage: SecretStr | None = Field(
        default=None, description="Optuna RDB storage URL; defaults to a SQLite file under home."
    )
    store_timeout_seconds: float = Field(
        default=10, gt=0, description="How long the start-of-run check waits for each store to answer."
    )
    actor: str = Field(default_factory=lambda: os.environ.get("USER", "retrain"))
    lock_wait_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a run waits for another run of the same source or model to finish before it "
        "gives up as busy (exit 4).",
    )

    # --- the prediction server (`retrain serve`) ---
    serve_host: str = Field(
        default="127.0.0.1", description="Address the prediction server binds; 0.0.0.0 exposes it to the network."
    )
    serve_port: int = Field(default=8000, ge=1, le=65535, description="Port of the prediction server.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the server's state-changing endpoints (/reload); none turns them off.",
    )
    canary_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of traffic for the canary, overriding the release state (the registered model's "
        "`retrain.canary_share` tag).",
    )
    alias_poll_seconds: float = Field(
        default=10.0, gt=0, description="How often the server looks for moved aliases (and a changed share)."
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body the server reads.")
    serve_inline_records: int = Field(
        default=64, ge=0, description="Requests of up to this many records are predicted on the server's event "
        "loop, larger ones in its thread pool (benchmarks/serving.py measures both sides).",
    )
    log_batch_rows: int = Field(default=500, ge=1, description="Predictions written to the log per insert.")
    journal_folder: Path | None = Field(
        default=None,
        description="Where the server journals every answered prediction before answering (one folder per model); "
        "default `journal/` under home. Local disk of the serving machine.",
    )
    journal_fsync: Literal["always", "interval", "never"] = Field(
        default="interval",
        description="When the journal is forced to disk (what survives a machine crash; a killed process loses "
        "nothing either way): before every answer, every `journal_fsync_seconds`, or when the OS decides.",
    )
    journal_fsync_seconds: float = Field(
        default=1.0, gt=0, description="How often the journal is forced to disk under `journal_fsync: interval`."
    )
    log_flush_seconds: float = Field(
        default=1.0, gt=0, description="Longest a prediction waits in the queue before a partial batch is written."
    )
    reports_folder: Path | None = Field(
        default=None, description="Where monitoring writes its HTML reports; default `reports/` under home."
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Where people open the MLflow UI, for the links Retrain writes into Prefect artifacts; default: "
        "the tracking server itself, or http://127.0.0.1:5000 (what `retrain ui` starts) for a local store.",
    )
    evidently_workspace: Path | None = Field(
        default=None,
        description="The Evidently workspace monitoring writes (a project per model, a snapshot per run, a dashboard; "
        "`evidently ui --workspace` shows it); default `evidently/` under home.",
    )
    notification_block: str | None = Field(
        default=None,
        description="Name of a Prefect notification block (e.g. a Slack webhook) that failed runs alert through; "
        "none: failures are only recorded in the ledger.",
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

    def resolved_artifact_location(self) -> str | None:
        """Where new experiments keep their artifacts; None lets the tracking server decide.

        A tracking server (`http(s)://`) serves artifacts to every machine from its own artifact root
        (`--artifacts-destination` / `--default-artifact-root`); a folder on the training machine would
        make its models unloadable anywhere else. Only a local store gets our folder under home.
        """
        if self.mlflow_artifact_location:
            return self.mlflow_artifact_location
        if self.resolved_tracking_uri().lower().startswith(("http://", "https://", "databricks")):
            return None
        return (self.resolved_home / "mlartifacts").as_uri()

    def resolved_optuna_storage(self) -> str:
        if self.optuna_storage is not None:
            return self.optuna_storage.get_secret_value()
        return f"sqlite:///{self.resolved_home / 'optuna.db'}"

    @property
    def journal_dir(self) -> Path:
        if self.journal_folder is not None:
            return self.journal_folder.expanduser().resolve()
        return self.resolved_home / "journal"

    @property
    def reports_dir(self) -> Path:
        if self.reports_folder is not None:
            return self.reports_folder.expanduser().resolve()
        return self.resolved_home / "reports"

    def resolved_mlflow_ui_url(self) -> str:
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        uri = self.resolved_tracking_uri()
        if uri.lower().startswith(("http://", "https://")):
            return redact_url(uri).rstrip("/")
        return "http://127.0.0.1:5000"

    @property
    def evidently_workspace_dir(self) -> Path:
        if self.evidently_workspace is not None:
            return self.evidently_workspace.expanduser().resolve()
        return self.resolved_home / "evidently"

    def describe(self) -> dict[str, str]:
        """Where things live, with passwords hidden: safe to print or log."""
        return {
            "home": str(self.resolved_home),
            "warehouse": redact_url(self.resolved_warehouse_url()),
            "warehouse_schema": self.warehouse_schema or "",
            "mlflow": redact_url(self.resolved_tracking_uri()),
            "optuna": redact_url(self.resolved_optuna_storage()),
        }

    def known_secrets(self) -> tuple[str, ...]:
        """Every secret value this process knows of, for `retrain.redaction.redact_text` to mask."""
        urls = (self.resolved_warehouse_url(), self.resolved_tracking_uri(), self.resolved_optuna_storage())
        token = self.admin_token.get_secret_value() if self.admin_token is not None else None
        extra = [*(os.environ.get(name) for name in MLFLOW_SECRET_VARIABLES), token]
        return secret_values(urls, extra=extra)


def settings_file() -> Path:
    """The `retrain.yaml` this process reads (relative to the working directory)."""
    return Path(str(Settings.model_config.get("yaml_file") or "retrain.yaml"))


def load_settings() -> Settings:
    """Read the settings; a malformed or misspelt `retrain.yaml` is a ConfigError naming file and key.

    Raises:
        ConfigError: the file is not YAML, not a mapping, names a key Retrain does not know (with the
            closest known keys), or a value (from the file or a `RETRAIN_*` variable) is invalid.
    """
    path = settings_file()
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"settings file {path.resolve()} is not valid YAML: {error}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(
                f"settings file {path.resolve()} must be a mapping of settings (key: value), got {type(raw).__name__}"
            )
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigError(describe_settings_error(error, path)) from None


def describe_settings_error(error: ValidationError, path: Path) -> str:
    """One sentence per problem, without the offending values (they may be secrets)."""
    known = sorted(Settings.model_fields)
    problems = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(name) for name in close)}?" if close else f"known keys: {known}"
            problems.append(f"unknown key '{key}' in {path.resolve()} ({hint})")
        else:
            variable = f"RETRAIN_{key.upper()}"
            problems.append(f"setting '{key}' ({variable} or {path}): {problem['msg']}")
    return "invalid settings: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once; tests call `get_settings.cache_clear()` after env changes."""
    settings = load_settings()
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    return settings
