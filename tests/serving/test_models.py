"""Loading by version: the direct encoding gives exactly the model's own predictions, whatever the values."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from retrain.model_package import encode_rows
from serving.models import load_version
from tests.serving.conftest import MODEL, Registry

pytestmark = pytest.mark.model



def test_served_predictions_equal_the_pyfunc_on_unusual_values(registry: Registry) -> None:
    model = load_version(MODEL, "1")
    base = registry.feature_rows(1)[0]
    records = [
        base,
        {**base, "carrier": "ZZ", "dest": None, "temp": None},  # unknown and missing values
        {**base, "distance": 1000, "wind_dir": 270.0},  # ints in a float column, a whole float in an int one
        {**base, "carrier": 7},  # a number in a text column: not the direct path's case, still the model's answer
        {**base, "carrier": 7.0},
    ]
    # the model's own code (MLflow's schema check would refuse a number in a text column of one row)
    own = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").unwrap_python_model()

    def expected(rows: list[dict[str, object]]) -> list[float]:
        frame = pd.DataFrame(rows, columns=list(model.features))
        return np.asarray(own.predict(None, frame), dtype="float64").tolist()

    assert model.predict(records).tolist() == expected(records)
    for record in records:
        assert model.predict([record]).tolist() == expected([record])


def test_calendar_features_served_directly_equal_the_pyfunc(registry: Registry) -> None:
    """A model with calendar features takes the timestamp as an input: the server's direct path (JSON records,
    the timestamp as epoch milliseconds or ISO text) gives exactly the pyfunc's predictions on the table's rows."""
    from serving.models import direct_predictor
    from tests.serving.conftest import register_version

    calendar = ("hour", "dayofweek", "dayofmonth", "month", "dayofyear", "is_weekend", "holiday")
    version = register_version(registry.config, registry.rows, 20, calendar=calendar)
    model = load_version(MODEL, version)
    assert "time_hour" in model.features and model.kinds["time_hour"] == "datetime"
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    own = pyfunc.unwrap_python_model()
    assert own.encoding.calendar == calendar and direct_predictor(own) is not None
    table_rows = registry.rows[list(model.features)].iloc[:300]  # Jan 1 (New Year's Day) to Jan 2 2013
    expected = np.asarray(pyfunc.predict(table_rows), dtype="float64")
    records = json_records(table_rows)  # as a client sends them: the timestamp in epoch milliseconds
    assert np.array_equal(model.predict(records), expected)
    as_text = [{**record, "time_hour": pd.Timestamp(record["time_hour"], unit="ms").isoformat()} for record in records]
    assert np.array_equal(model.predict(as_text), expected)
    assert own.booster.feature_name()[-len(calendar):] == [f"time_hour_{name}" for name in calendar]


def json_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    import json

    return json.loads(frame.to_json(orient="records"))


def test_a_residual_model_served_equals_its_pyfunc(registry: Registry) -> None:
    """A residual model adds the naive value it looks up by the row's time and series (carrier, flight, origin):
    the server takes the model's own predict for it, so served records give exactly the pyfunc's answer."""
    from retrain.model_package import build_residual
    from tests.serving.conftest import register_version

    rows = registry.rows
    cut = rows["time_hour"].iloc[3000]
    residual = build_residual(rows, rows["arr_delay"].to_numpy(), "time_hour", ["carrier", "flight", "origin"],
                              "seasonal", 86400.0, cut)
    version = register_version(registry.config, rows, 20, residual=residual)
    model = load_version(MODEL, version)
    assert {"time_hour", "flight"} <= set(model.features)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    later = rows[rows["time_hour"] >= cut][list(model.features)].head(200)
    expected = np.asarray(pyfunc.predict(later), dtype="float64")
    assert np.array_equal(model.predict(json_records(later)), expected)
    bare = pyfunc.unwrap_python_model().booster.predict(encode_rows(later, pyfunc.unwrap_python_model().encoding))
    assert not np.array_equal(bare, expected)  # the naive value is added
