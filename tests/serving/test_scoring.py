"""MLflow's scoring protocol to the letter: the request shapes of MLflow's own scoring-server tests against
`retrain serve` and `mlflow models serve -m models:/NAME/1 --env-manager local` on the same version, as real
processes; plus the parsing of bodies on its own."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.scoring_protocol import Answer, ask, differs, mlflow_server, scoring_cases
from serving.records import InvalidRecords
from serving.scoring import UnsupportedMediaType, keep_model_columns, media_type, scoring_records
from tests.serving.conftest import MODEL, Registry
from tests.serving.test_journal import free_port, serving

KINDS = {"distance": "integer", "temp": "float", "carrier": "string"}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [("application/json", "application/json"), ("application/json; charset=UTF-8", "application/json"),
     ("text/csv;charset=utf-8", "text/csv"), ("application/vnd.apache.parquet", "application/vnd.apache.parquet")],
)
def test_the_content_types_mlflow_takes(content_type: str, expected: str) -> None:
    assert media_type(content_type) == expected


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/json; charset=latin-1",
                                          "application/json; something=something"])
def test_the_content_types_mlflow_refuses_are_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        media_type(content_type)


def test_every_input_format_gives_the_same_records() -> None:
    records = [{"distance": 1400, "temp": 39.5, "carrier": "UA"}, {"distance": 200, "temp": None, "carrier": "B6"}]
    bodies = [
        ({"dataframe_records": records}, "application/json"),
        ({"dataframe_split": {"columns": ["distance", "temp", "carrier"], "index": [0, 1],
                              "data": [[1400, 39.5, "UA"], [200, None, "B6"]]}}, "application/json"),
        ({"instances": records}, "application/json"),
        ({"inputs": {"distance": [1400, 200], "temp": [39.5, None], "carrier": ["UA", "B6"]}}, "application/json"),
        ({"inputs": records, "params": {"ignored": 1}}, "application/json"),
    ]
    for body, kind in bodies:
        assert scoring_records(json.dumps(body).encode(), kind, KINDS) == records
    csv = b"distance,temp,carrier\n1400,39.5,UA\n200,,B6\n"
    assert scoring_records(csv, "text/csv", KINDS) == records


def test_a_csv_cell_is_read_as_the_kind_its_column_takes() -> None:
    csv = b"distance,temp,carrier,gate\n0017,warm,0042,B12\n"
    assert scoring_records(csv, "text/csv", KINDS) == [{"distance": 17, "temp": "warm", "carrier": "0042",
                                                        "gate": "B12"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"this is,,,, not valid json", "Failed to parse input from JSON"), (b"[1]", "Received a list"),
     (b'{"not": "a frame"}', "exactly one of the input fields"),
     (b'{"dataframe_split": [{"a": 1}]}', "must be a dictionary. Got list"),
     (b'{"dataframe_records": {"columns": []}}', "must be a list of records. Got dictionary"),
     (b'{"dataframe_split": {"index": [1, 2], "data": [[1], [2], [3]]}}', "not a valid dataframe representation"),
     (b'{"instances": [[1, 2], [3, 4]]}', "takes named columns")],
)
def test_bodies_mlflow_refuses_are_bad_requests_naming_why(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRecords, match=message):
        scoring_records(body, "application/json", KINDS)


def test_columns_the_model_does_not_take_are_left_out_and_named() -> None:
    kept = keep_model_columns([{"distance": 1, "gate": "B12", "temp": float("nan")}], frozenset({"distance", "temp"}))
    assert kept.records == [{"distance": 1, "temp": None}] and kept.ignored == ("gate",)


# ------------------------------------------------------------------------------ both servers, real processes


@pytest.fixture(scope="module")
def servers(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder = tmp_path_factory.mktemp("protocol")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    port = free_port()
    with serving(registry, port, folder / "retrain.log"), mlflow_server(
        f"sqlite:///{registry.home / 'mlflow.db'}", f"models:/{MODEL}/1", environment, folder / "mlflow.log"
    ) as theirs:
        yield f"http://127.0.0.1:{port}", theirs


def cases(registry: Registry) -> dict[str, object]:
    return scoring_cases(registry.raw_rows(5, offset=900), registry.config.features.all)


def test_every_request_shape_of_mlflows_tests_gets_the_same_answer_from_both_servers(
    registry: Registry, servers: tuple[str, str]
) -> None:
    ours, theirs = servers
    answers: dict[str, tuple[Answer, Answer]] = {
        name: (ask(ours, case), ask(theirs, case)) for name, case in cases(registry).items()  # type: ignore[arg-type]
    }
    different = {name: differs(mine, other) for name, (mine, other) in answers.items() if differs(mine, other)}
    # The one difference: MLflow cannot read CSV for a signature with `Any` columns; ours scores it.
    assert different == dict.fromkeys(["CSV", "CSV, charset=utf-8", "extra column in CSV"],
                                      "mlflow cannot read CSV for this signature; ours scores it"), different
    statuses = {mine.status for mine, _ in answers.values()}
    assert statuses == {200, 400, 415}
    assert {mine.error_code for mine, _ in answers.values() if mine.status == 400} == {
        "BAD_REQUEST", "INVALID_PARAMETER_VALUE"}


def test_a_csv_body_is_scored_and_extra_columns_are_named_in_a_header(
    registry: Registry, servers: tuple[str, str], tmp_path: Path
) -> None:
    import httpx

    ours, _ = servers
    frame = registry.rows[registry.config.features.all].head(3).assign(gate="B12")
    response = httpx.post(f"{ours}/invocations", content=frame.to_csv(index=False),
                          headers={"content-type": "text/csv"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 3
    assert response.headers["x-retrain-ignored-columns"] == "gate"
    assert httpx.get(f"{ours}/ping").status_code == httpx.get(f"{ours}/version").status_code == 200
