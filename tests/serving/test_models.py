"""Loading by version: the direct encoding gives exactly the model's own predictions, whatever the values."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from serving.models import load_version
from tests.serving.conftest import MODEL, Registry


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
    frame = pd.DataFrame(records, columns=list(model.features))
    expected = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(frame), dtype="float64")
    assert model.predict(records).tolist() == expected.tolist()
    for record in records:
        one = pd.DataFrame([record], columns=list(model.features))
        assert model.predict([record]).tolist() == mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(one).tolist()
