"""Results as JSON: the one function that writes every result the CLI prints, a flow records and the ledger keeps.

A result's JSON shape is declared beside its fields, not in a hand-written builder: a dataclass becomes an object
of its fields, where a field's metadata may rename it (`json_field("source")`), leave it out (`json_field(None)`)
or write it through a function (`json_field(write=...)`), and the names in the class attribute `json_properties`
are added from the properties of those names. Instants are ISO text, durations the shortest text
`retrain.clock.parse_duration` reads back (`60d`), paths text, enums their value, numpy scalars Python numbers.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from retrain.clock import format_duration

NAME = "json"  # metadata key: the field's JSON name, or None to leave it out
WRITE = "json_write"  # metadata key: a function of the value that gives what is written

_KEEP = object()


def json_field(name: str | None | object = _KEEP, *, write: Callable[[Any], Any] | None = None,
               **field_options: Any) -> Any:
    """A dataclass field with its JSON shape: `name` renames it (None leaves it out), `write` converts its value.

    Args:
        name: The key it is written under; None: not written; omitted: the field's own name.
        write: Applied to the value before it is written (the result is made JSON-able in turn).
        field_options: `default`, `default_factory`, ... as for `dataclasses.field`.
    """
    metadata: dict[str, Any] = dict(field_options.pop("metadata", {}) or {})
    if name is not _KEEP:
        metadata[NAME] = name
    if write is not None:
        metadata[WRITE] = write
    return dataclasses.field(metadata=metadata, **field_options)


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON values (dict, list, str, int, float, bool, None); see the module docstring."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass(value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def _dataclass(value: Any) -> dict[str, Any]:
    written: dict[str, Any] = {}
    for field in dataclasses.fields(value):
        name = field.metadata.get(NAME, field.name)
        if name is None:
            continue
        item = getattr(value, field.name)
        write = field.metadata.get(WRITE)
        written[str(name)] = to_jsonable(write(item) if write is not None else item)
    for name in getattr(type(value), "json_properties", ()):
        written[name] = to_jsonable(getattr(value, name))
    return written
