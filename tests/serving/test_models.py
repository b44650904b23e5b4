"""Loading by version: the direct encoding gives exactly the model's own predictions, whatever the values."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

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
