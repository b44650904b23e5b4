"""A real MLflow registry in a temporary folder with packaged raw-row models of the flights example, and a
server app on it.

Versions are registered the way training logs them (the model-from-code pyfunc of `retrain/model_package.py`
with its booster and encoding, the same signature and metadata), but fitted directly with LightGBM in about
a second each, so a module gets several distinct versions without running the training flow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

import retrain.model_package
from retrain.config import ModelConfig, load_model_config
from retrain.contract import read_contract
from retrain.model_package import BOOSTER_ARTIFACT, ENCODING_ARTIFACT, Residual, build_encoding, encode_rows
from retrain.settings import Settings
from tests.conftest import write_model_config

MODEL = "flights-delay"


@dataclass
class Registry:
    """The registry of one test module: its folder, model config and a way to add versions."""

    home: Path
    config: ModelConfig
    rows: pd.DataFrame
    register: Callable[[int], str]

    @property
    def client(self) -> MlflowClient:
        return MlflowClient()

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"home": self.home, "alias_poll_seconds": 3600, "log_flush_seconds": 0.05}
        return Settings(**{**values, **overrides})

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(MODEL, alias, version)

    def raw_rows(self, count: int, offset: int = 0) -> list[dict[str, Any]]:
        """Rows as a client sends them: the table's columns through `to_json(orient="records")`."""
        import json

        columns = [*self.config.features.all, *self.config.source.key]
        frame = self.rows[list(dict.fromkeys(columns))].iloc[offset: offset + count]
        return json.loads(frame.to_json(orient="records"))

    def feature_rows(self, count: int, offset: int = 0) -> list[dict[str, Any]]:
        import json

        frame = self.rows[self.config.features.all].iloc[offset: offset + count]
        return json.loads(frame.to_json(orient="records"))


def register_version(config: ModelConfig, frame: pd.DataFrame, rounds: int, calendar: tuple[str, ...] = (),
                     residual: Residual | None = None) -> str:
    """Fit a small booster on `frame` and register it as the next version of the model; returns the version.

    With `calendar`, the model derives those calendar features (US holidays) from the timestamp column; with
    `residual`, it adds that naive value back to the booster's prediction."""
    encoding = build_encoding(frame, config.features.numeric, config.features.categorical,
                              timestamp=config.source.timestamp, calendar=calendar, holidays="US")
    encoding = replace(encoding, residual=residual)
    train = lgb.Dataset(encode_rows(frame, encoding), frame[config.target.column], params={"verbosity": -1})
    booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1, "seed": 1}, train,
                        num_boost_round=rounds)
    contract = read_contract(config.contract_path)
    kinds = {name: contract.columns[name].type.value for name in encoding.inputs}
    types = {"float": "double", "string": "string"}
    from mlflow.types.schema import AnyType

    signature = ModelSignature(
        inputs=Schema([ColSpec(types.get(kinds[name], AnyType()), name, required=True) for name in encoding.inputs]),
        outputs=Schema([ColSpec("double")]),
    )
    with tempfile.TemporaryDirectory() as folder, mlflow.start_run():
        booster_path, encoding_path = Path(folder) / "booster.txt", Path(folder) / "encoding.json"
        booster.save_model(str(booster_path))
        encoding_path.write_text(encoding.to_json(), encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=retrain.model_package.__file__,
            artifacts={BOOSTER_ARTIFACT: str(booster_path), ENCODING_ARTIFACT: str(encoding_path)},
            signature=signature,
            input_example=frame[list(encoding.inputs)].head(5),
            metadata={"retrain": {"model": config.name, "features": kinds}},
            registered_model_name=config.name,
            pip_requirements=["lightgbm", "pandas", "numpy", *(["holidays"] if calendar else [])],
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, flights_small: pd.DataFrame) -> Iterator[Registry]:
    """A registry with version 1 of the flights model as champion; `register(rounds)` adds versions."""
    home = tmp_path_factory.mktemp("serving") / "home"
    home.mkdir()
    config = load_model_config(write_model_config(home.parent))
    rows = flights_small.iloc[:4000].reset_index(drop=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAIN_HOME", str(home))
        for name in ("RETRAIN_WAREHOUSE_URL", "RETRAIN_WAREHOUSE_SCHEMA", "RETRAIN_MLFLOW_TRACKING_URI",
                     "RETRAIN_ADMIN_TOKEN", "RETRAIN_CANARY_SHARE"):
            patch.delenv(name, raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        mlflow.set_experiment(experiment_name="serving-tests")
        state = Registry(home, config, rows, lambda rounds: register_version(config, rows, rounds))
        state.set_alias("champion", state.register(20))
        yield state
