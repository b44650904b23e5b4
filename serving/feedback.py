"""Late labels: the actual outcome of a served prediction, by its request id or by the model's key.

A label by key is written with the key text that the prediction log holds (`prediction_key` over the key
columns in the model config's order, instants as naive UTC), so `read_labelled_predictions` joins it to
the prediction whatever form the client sent the key values in (ISO text or epoch milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from retrain.warehouse import prediction_key
from serving.records import (
    DATETIME,
    InputSpec,
    InvalidRecords,
    Problem,
    as_instant,
    finite_number,
    shown_value,
    text_problem,
    value_problem,
)

MAX_REQUEST_ID = 100  # the width of request_id in the prediction and label tables


def label_problems(index: int, label: Mapping[str, Any], spec: InputSpec) -> list[Problem]:
    """What is wrong with one label: no actual, or not exactly one of request_id and a complete key."""
    problems = []
    actual = label.get("actual")
    if not finite_number(actual):
        problems.append(Problem(index, "actual", f"expected a finite number, got {shown_value(actual)}"[:300]))
    if label.get("at") is not None and instant_problem(label["at"]):
        problems.append(Problem(index, "at", instant_problem(label["at"]) or ""))
    request_id, key = label.get("request_id"), label.get("key")
    if (request_id is None) == (key is None):
        problems.append(Problem(index, "request_id", "give either request_id or key (the model's key columns)"))
    elif request_id is not None:
        problem = request_id_problem(request_id)
        if problem:
            problems.append(Problem(index, "request_id", problem))
    elif key is not None:
        problems += key_problems(index, key, spec)
    return problems


def request_id_problem(request_id: Any) -> str | None:
    """Why a request id cannot be one (the prediction and label tables must store it as it is), or None."""
    if not (isinstance(request_id, str) and 0 < len(request_id) <= MAX_REQUEST_ID):
        return f"expected text of 1 to {MAX_REQUEST_ID} characters, got {shown_value(request_id)}"[:300]
    return text_problem(request_id)


def key_problems(index: int, key: Any, spec: InputSpec) -> list[Problem]:
    if not spec.key:
        return [Problem(index, "key", "this model's config names no key columns: label by request_id")]
    if not isinstance(key, dict):
        return [Problem(index, "key", f"expected an object of the key columns {list(spec.key)}")]
    problems = [Problem(index, f"key.{name}", "missing key column") for name in spec.key if key.get(name) is None]
    problems += [Problem(index, f"key.{name}", f"not a key column; the key is {list(spec.key)}")
                 for name in key if name not in spec.key]
    for name in spec.key:
        if key.get(name) is not None:
            problem = value_problem(key[name], spec.kinds[name])
            if problem:
                problems.append(Problem(index, f"key.{name}", problem))
    return problems


def instant_problem(value: Any) -> str | None:
    """Why `value` is not an instant (ISO 8601 text or epoch milliseconds), or None."""
    if isinstance(value, bool):
        return f"expected an ISO 8601 instant, got {value!r}"
    return value_problem(value, DATETIME)


def label_rows(
    labels: Sequence[Mapping[str, Any]], spec: InputSpec, model: str, at: datetime, source: str,
    event_at: Any = None,
) -> list[dict[str, Any]]:
    """Rows for the label table, every one stamped with its arrival time `at`, and matured (`event_at`, on the
    Retrain clock) at the label's own `at`, else `event_at` (the request's), else its arrival.

    Raises:
        InvalidRecords: no labels, or a label (or the request's `at`) with a problem (its index and field named).
    """
    if not labels:
        raise InvalidRecords([Problem(None, "labels", "no labels: send at least one")])
    if event_at is not None and instant_problem(event_at):
        raise InvalidRecords([Problem(None, "at", instant_problem(event_at) or "")])
    default_event = as_instant(event_at) if event_at is not None else at
    problems = [problem for index, label in enumerate(labels) for problem in label_problems(index, label, spec)]
    if problems:
        raise InvalidRecords(problems[:20])
    rows = []
    for label in labels:
        key = label.get("key")
        key_text = None
        if key is not None:
            values = [as_instant(key[name]) if spec.kinds[name] == DATETIME else key[name] for name in spec.key]
            key_text = prediction_key(values)
        matured = as_instant(label["at"]) if label.get("at") is not None else default_event
        rows.append({"model": model, "request_id": label.get("request_id"), "key": key_text,
                     "actual": float(label["actual"]), "labelled_at": at, "event_at": matured, "source": source})
    return rows
