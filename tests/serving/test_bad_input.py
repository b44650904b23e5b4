"""Never a 500 for bad input: every case of issue 20's list and more, against `retrain serve` as a real process.

Each body is sent as raw bytes (so NaN, 1e999, lone surrogates and broken JSON reach the server as a client could
send them); each must get a 4xx whose JSON names the record and field, and the server's log must hold no
traceback afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import Registry
from tests.serving.test_journal import free_port, serving

HUGE = "9" * 400


def record(registry: Registry, **values: Any) -> dict[str, Any]:
    """A valid raw row (features and key) with some values replaced."""
    return {**registry.raw_rows(1, offset=700)[0], **values}


def raw(text: str) -> str:
    """A JSON body with a 400-digit integer where `HUGE_NUMBER` stands (json.dumps cannot write one unquoted)."""
    return text.replace('"HUGE_NUMBER"', HUGE)


def features(registry: Registry, **values: Any) -> dict[str, Any]:
    return {name: value for name, value in record(registry, **values).items()
            if name in registry.config.features.all}


# (endpoint, body builder, content type, field the answer must name)
CASES: dict[str, tuple[str, Any, str, str]] = {
    # issue 20's list: the inputs that answered 500
    "400-digit integer in /predict": (
        "/predict", lambda r: raw(json.dumps({"records": [record(r, distance="HUGE_NUMBER")]})), "json", "distance"),
    "400-digit integer in /invocations": (
        "/invocations", lambda r: raw(json.dumps({"dataframe_records": [features(r, distance="HUGE_NUMBER")]})),
        "json", "distance"),
    "400-digit integer in /invocations dataframe_split": (
        "/invocations", lambda r: raw(json.dumps({"dataframe_split": {
            "columns": list(features(r)), "data": [["HUGE_NUMBER" if n == "temp" else v
                                                    for n, v in features(r).items()]]}})), "json", "temp"),
    "400-digit integer in /feedback": (
        "/feedback", lambda r: raw(json.dumps({"labels": [{"request_id": "x", "actual": "HUGE_NUMBER"}]})), "json",
        "actual"),
    "epoch 1e20 in the timestamp": (
        "/predict", lambda r: json.dumps({"records": [record(r, time_hour=1e20)]}), "json", "time_hour"),
    "epoch -1e15 in the timestamp": (
        "/predict", lambda r: json.dumps({"records": [record(r, time_hour=-1e15)]}), "json", "time_hour"),
    "0001-01-01+01:00 in the timestamp": (
        "/predict", lambda r: json.dumps({"records": [record(r, time_hour="0001-01-01+01:00")]}), "json",
        "time_hour"),
    "9999-12-31-01:00 in the timestamp": (
        "/predict", lambda r: json.dumps({"records": [record(r, time_hour="9999-12-31-01:00")]}), "json",
        "time_hour"),
    "epoch 1e20 in a feedback key": (
        "/feedback", lambda r: json.dumps({"labels": [{"actual": 1, "key": {**key_of(r), "time_hour": 1e20}}]}),
        "json", "key.time_hour"),
    "0001-01-01+01:00 in a feedback key": (
        "/feedback", lambda r: json.dumps({"labels": [{"actual": 1, "key": {**key_of(r),
                                                                             "time_hour": "0001-01-01+01:00"}}]}),
        "json", "key.time_hour"),
    # ten more of our own
    "NaN literal": ("/predict", lambda r: json.dumps({"records": [record(r, temp=float("nan"))]}), "json", "temp"),
    "1e999 (infinity once parsed)": (
        "/predict", lambda r: json.dumps({"records": [record(r, temp=1.5)]}).replace("1.5", "1e999"), "json",
        "temp"),
    "integer beyond 64 bits in an integer key": (
        "/predict", lambda r: json.dumps({"records": [record(r, flight=2**63)]}), "json", "flight"),
    "NUL in a request id": (
        "/predict", lambda r: json.dumps({"records": [record(r)], "request_id": "a\u0000b"}), "json", "request_id"),
    "lone surrogate in a feedback request id": (
        "/feedback", lambda r: '{"labels": [{"request_id": "\\ud800", "actual": 1}]}', "json", "request_id"),
    "NUL in a feedback request id": (
        "/feedback", lambda r: json.dumps({"labels": [{"request_id": "x\u0000", "actual": 1}]}), "json",
        "request_id"),
    "NUL in the feedback source": (
        "/feedback", lambda r: json.dumps({"labels": [{"request_id": "x", "actual": 1}], "source": "a\u0000"}),
        "json", "source"),
    "a date that does not exist": (
        "/predict", lambda r: json.dumps({"records": [record(r, time_hour="2013-02-30T00:00")]}), "json",
        "time_hour"),
    "broken JSON": ("/predict", lambda r: '{"records": [', "json", "(body)"),
    "an array where MLflow wants an object": ("/invocations", lambda r: "[1, 2, 3]", "json", ""),
    "a nested object as a value": (
        "/predict", lambda r: json.dumps({"records": [record(r, carrier={"a": [1, {"b": 2}]})]}), "json", "carrier"),
}


def key_of(registry: Registry) -> dict[str, Any]:
    row = record(registry)
    return {name: row[name] for name in registry.config.source.key}


@pytest.fixture(scope="module")
def live(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port, log = free_port(), tmp_path_factory.mktemp("bad-input") / "serve.log"
    with serving(registry, port, log):
        yield f"http://127.0.0.1:{port}", log


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_4xx_naming_the_field_and_never_a_traceback(
    registry: Registry, live: tuple[str, Path], name: str
) -> None:
    url, log = live
    path, body, kind, field = CASES[name]
    content = body(registry).encode("utf-8", "surrogatepass")
    response = httpx.post(f"{url}{path}", content=content, headers={"content-type": f"application/{kind}"})

    assert 400 <= response.status_code < 500, response.text
    answer = response.json()
    text = json.dumps(answer)
    assert field in text, answer
    assert "Traceback" not in log.read_text()


def test_valid_input_still_answers(registry: Registry, live: tuple[str, Path]) -> None:
    url, log = live
    response = httpx.post(f"{url}/predict", json={"records": [record(registry)]})
    assert response.status_code == 200 and response.json()["predictions"][0]["version"] == "1"
    assert " 500 " not in log.read_text()
