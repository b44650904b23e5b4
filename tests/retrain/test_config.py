"""Model configs and settings: valid examples load, mistakes are named by file and field."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from retrain.config import TaskType, load_model_config
from retrain.errors import ConfigError
from retrain.settings import Settings, get_settings, load_settings
from tests.conftest import EXAMPLE_CONFIG, REPO


@pytest.mark.parametrize("name", ["flights.yaml", "flights_delayed.yaml"])
def test_example_configs_load(name: str) -> None:
    config = load_model_config(REPO / "examples" / name)
    assert config.contract_path == (REPO / "examples" / "flights.contract.yaml").resolve()
    assert config.source.clean == "flights_clean"


def test_binary_example_is_classification_on_the_same_column() -> None:
    config = load_model_config(REPO / "examples" / "flights_delayed.yaml")
    assert config.target.task is TaskType.BINARY and config.target.positive_above == 15
    assert not config.lower_is_better


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": "auc"}, "metric 'auc' does not fit task 'regression'"),
        ({"target": {"column": "arr_delay", "task": "binary"}}, "positive_above is required"),
        ({"training_window": {"start": "2013-02-01", "end": "2013-01-01"}}, "must be after its start"),
        ({"training_window": {"lookback": "60d", "start": "2013-01-01"}}, "either lookback .* not both"),
        ({"training_window": {"start": "2013-01-01"}}, "or both start and end"),
        ({"training_window": {"lookback": "two months"}}, "not a duration"),
        ({"gates": {"baseline_margin": -1}}, r"gates\.baseline_margin"),
        ({"features": {"numeric": ["arr_delay"]}}, "must not include the target"),
        ({"tuning": {"trials": 0}}, r"tuning\.trials"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path: Path, change: dict, message: str) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message) as raised:
        load_model_config(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("window", "as_of", "expected"),
    [
        ({"lookback": "60d"}, datetime(2013, 4, 1), (datetime(2013, 1, 31), datetime(2013, 4, 1))),
        ({"lookback": "36h"}, datetime(2013, 4, 1, 12), (datetime(2013, 3, 31), datetime(2013, 4, 1, 12))),
        ({"start": "2013-01-01", "end": "2013-03-01T00:00+05:00"}, datetime(2013, 6, 1),
         (datetime(2013, 1, 1), datetime(2013, 2, 28, 19))),
    ],
    ids=["days", "hours", "fixed-dates-ignore-as-of"],
)
def test_training_window_ends_at_as_of_or_stays_fixed(
    tmp_path: Path, window: dict, as_of: datetime, expected: tuple[datetime, datetime]
) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["training_window"] = window
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(raw))
    resolved = load_model_config(path).training_window.ending_at(as_of)
    assert (resolved.start, resolved.end) == expected


def test_example_configs_use_a_lookback_and_the_baseline_gate() -> None:
    for name in ("flights.yaml", "flights_delayed.yaml"):
        config = load_model_config(REPO / "examples" / name)
        assert config.training_window.lookback == timedelta(days=60)
        assert config.gates.baseline_margin is not None


def test_settings_digest_follows_what_changes_the_model_or_verdict() -> None:
    config = load_model_config(EXAMPLE_CONFIG)
    digest = config.settings_digest()
    assert digest == load_model_config(EXAMPLE_CONFIG).settings_digest() and len(digest) == 8
    assert config.with_overrides(trials=3).settings_digest() != digest
    assert config.with_overrides(threshold=1.0).settings_digest() != digest
    assert config.with_overrides(timeout_seconds=5).settings_digest() == digest  # a resource limit


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_config(tmp_path / "nope.yaml")


def test_overrides_replace_only_what_is_given() -> None:
    config = load_model_config(EXAMPLE_CONFIG)
    changed = config.with_overrides(trials=3, threshold=1.5)
    assert (changed.tuning.trials, changed.gates.threshold) == (3, 1.5)
    assert changed.tuning.timeout_seconds == config.tuning.timeout_seconds


def test_settings_default_under_home_and_env_wins_over_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "retrain.yaml").write_text("home: from-yaml\nwarehouse_schema: yaml_schema\n")
    monkeypatch.delenv("RETRAIN_HOME", raising=False)
    monkeypatch.delenv("RETRAIN_WAREHOUSE_SCHEMA", raising=False)
    assert Settings().resolved_home == tmp_path / "from-yaml"
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "from-env"))
    settings = Settings()
    assert settings.resolved_home == tmp_path / "from-env" and settings.warehouse_schema == "yaml_schema"
    assert settings.resolved_warehouse_url() == f"sqlite:///{tmp_path / 'from-env' / 'warehouse.db'}"
    assert settings.resolved_optuna_storage().endswith("from-env/optuna.db")
    get_settings.cache_clear()


def test_passwords_never_reach_the_description(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_WAREHOUSE_URL", "postgresql+psycopg://bob:s3cret@db:5432/wh")
    monkeypatch.setenv("RETRAIN_OPTUNA_STORAGE", "postgresql+psycopg://bob:s3cret@db:5432/optuna")
    settings = Settings()
    assert "s3cret" not in str(settings.describe()) and "s3cret" not in repr(settings)


def test_errors_survive_pickling_with_their_fields() -> None:
    import pickle

    from retrain.errors import DataContractError

    contract = pickle.loads(pickle.dumps(DataContractError("max_bad_share", 0.4, 0.05, "fix the source")))
    assert (contract.rule, contract.observed, contract.limit, contract.detail) == ("max_bad_share", 0.4, 0.05,
                                                                                  "fix the source")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("warehouse_ur: sqlite:///x.db\n", r"unknown key 'warehouse_ur' .*did you mean 'warehouse_url'"),
        ("surprise: 1\n", r"unknown key 'surprise' .*known keys: \["),
        ("home: [1, 2\n", "is not valid YAML"),
        ("- home\n- x\n", "must be a mapping of settings"),
        ("store_timeout_seconds: -1\n", r"setting 'store_timeout_seconds' \(RETRAIN_STORE_TIMEOUT_SECONDS or"),
    ],
)
def test_bad_settings_file_is_refused_naming_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "retrain.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings()
    assert raised.value.exit_code == 2 and raised.value.__cause__ is None
    if "unknown key" in message:
        assert str(tmp_path / "retrain.yaml") in str(raised.value)


def test_a_bad_value_is_named_without_quoting_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRAIN_STORE_TIMEOUT_SECONDS", "postgresql://bob:s3cret@db/x")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "store_timeout_seconds" in str(raised.value) and "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("tracking", "artifacts", "expected"),
    [
        ("http://user:pw@mlflow:5000", None, None),  # the tracking server decides
        ("https://mlflow.example.com", None, None),
        ("http://mlflow:5000", "s3://bucket/mlflow", "s3://bucket/mlflow"),  # the settings win when given
        (None, None, "file:///tmp/retrain-home/mlartifacts"),  # a local store: our folder
        ("sqlite:////tmp/elsewhere/mlflow.db", None, "file:///tmp/retrain-home/mlartifacts"),
    ],
)
def test_artifact_location_follows_the_tracking_store(
    monkeypatch: pytest.MonkeyPatch, tracking: str | None, artifacts: str | None, expected: str | None
) -> None:
    monkeypatch.setenv("RETRAIN_HOME", "/tmp/retrain-home")
    for name, value in (("RETRAIN_MLFLOW_TRACKING_URI", tracking), ("RETRAIN_MLFLOW_ARTIFACT_LOCATION", artifacts)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Settings().resolved_artifact_location() == expected


def test_known_secrets_cover_every_url_and_mlflow_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_WAREHOUSE_URL", "postgresql+psycopg://bob:wh-secret@db/wh")
    monkeypatch.setenv("RETRAIN_MLFLOW_TRACKING_URI", "http://alice:ml%2Fsecret@mlflow:5000")
    monkeypatch.setenv("RETRAIN_OPTUNA_STORAGE", "postgresql+psycopg://bob:opt-secret@db/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "token-secret")
    secrets = Settings().known_secrets()
    assert {"wh-secret", "ml/secret", "ml%2Fsecret", "opt-secret", "token-secret"} <= set(secrets)


def test_a_one_column_key_may_be_written_as_a_string(tmp_path: Path) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["source"]["key"] = "ride_id"
    path = tmp_path / "rides.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_model_config(path).source.key == ["ride_id"]
