"""The data contract as a model: reading it, and the check of a model config against its table and contract."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from retrain.config import ModelConfig, load_model_config
from retrain.contract import check_config_against_table, read_contract
from retrain.errors import ConfigError
from retrain.warehouse import TableDescription
from tests.conftest import EXAMPLE_CONFIG, EXAMPLE_CONTRACT

pytestmark = pytest.mark.data


def test_a_missing_contract_says_how_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retrain contract infer"):
        read_contract(tmp_path / "absent.contract.yaml")



# ------------------------------------------------------------------- the model config against its table

FLIGHTS_TABLE = TableDescription(
    name="flights",
    columns={"time_hour": "datetime", "carrier": "string", "flight": "integer", "origin": "string",
             "dest": "string", "distance": "integer", "arr_delay": "float", "temp": "float", "hour": "integer",
             "sched_dep_time": "integer", "sched_arr_time": "integer", "minute": "integer", "dewp": "float",
             "humid": "float", "wind_dir": "float", "wind_speed": "float", "wind_gust": "float", "precip": "float",
             "pressure": "float", "visib": "float"},
    types={"time_hour": "TIMESTAMP", "distance": "BIGINT"},
    sampled_rows=1000,
)


def config_with(**changes: object) -> ModelConfig:
    base = load_model_config(EXAMPLE_CONFIG)
    return base.model_copy(update={k: getattr(base, k).model_copy(update=v) for k, v in changes.items()})


def test_the_example_config_fits_its_table_and_contract() -> None:
    check_config_against_table(load_model_config(EXAMPLE_CONFIG), FLIGHTS_TABLE, read_contract(EXAMPLE_CONTRACT))


@pytest.mark.parametrize(
    ("config", "table", "message"),
    [
        (config_with(features={"numeric": ["sched_dep_time", "hour", "distanse"]}), FLIGHTS_TABLE,
         "features.numeric[2] 'distanse' is not a column of table 'flights' (did you mean 'distance'?)"),
        (config_with(target={"column": "arr_dealy"}), FLIGHTS_TABLE,
         "target.column 'arr_dealy' is not a column of table 'flights' (did you mean 'arr_delay'?)"),
        (config_with(features={"categorical": ["Carrier"]}), FLIGHTS_TABLE,
         "features.categorical[0] 'Carrier' is not a column of table 'flights' (did you mean 'carrier'?)"),
        (config_with(features={"numeric": ["time_hour"]}), FLIGHTS_TABLE,
         "features.numeric[0] 'time_hour' is TIMESTAMP in table 'flights'; it must be a numeric column"),
        (config_with(source={"timestamp": "distance"}), FLIGHTS_TABLE,
         "source.timestamp 'distance' is BIGINT in table 'flights'; it must be a date/time column or ISO 8601 text"),
        (config_with(features={"categorical": ["carrier", "distance"]}), FLIGHTS_TABLE,
         "features.categorical[1] 'distance' is already features.numeric[2]"),
        (config_with(source={"key": ["carrier"]}), replace(FLIGHTS_TABLE, key_duplicates=990),
         "source.key ['carrier'] is not a key: 990 of 1,000 sampled rows (99.0%) share their key"),
    ],
)
def test_a_config_that_does_not_fit_its_table_names_the_file_and_field(
    config: ModelConfig, table: TableDescription, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        check_config_against_table(config, table)
    assert str(EXAMPLE_CONFIG) in str(raised.value) and message in str(raised.value)
    assert "The table has: time_hour, carrier" in str(raised.value)


def test_a_config_must_fit_its_contract() -> None:
    contract = read_contract(EXAMPLE_CONTRACT)
    narrow = contract.model_copy(update={"columns": {k: v for k, v in contract.columns.items() if k != "temp"}})
    config = config_with(features={"numeric": ["distance", "temp", "carrier"], "categorical": ["origin"]})

    with pytest.raises(ConfigError) as raised:
        check_config_against_table(config, FLIGHTS_TABLE, narrow)
    message = str(raised.value)
    assert "features.numeric[1] 'temp' is not a column of the data contract" in message
    assert "features.numeric[2] 'carrier' is a string column in the data contract" in message
    assert "list it under features.categorical" in message
