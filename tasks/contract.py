"""The data contract: what a batch of a model's source rows must look like before it may be trained on.

A contract is a YAML file beside the model config, first written by `retrain contract infer` from the
data as it is, then edited by hand. It says, per column, the type, whether nulls are allowed and a
range or an allowed set; and for the batch, the row-count band, the largest share of bad rows that
still lets the good ones through, and how fresh the newest row must be. `tasks.validation` compiles it
to a pandera schema.

Inferring ranges: the observed `[min, max]` is widened by `RANGE_MARGIN` (a quarter of the observed
span) on each side, so next month's ordinary values are not quarantined for being slightly outside
what one sample happened to hold. A column that never went below zero keeps zero as its floor
(durations, distances and counts do not turn negative because a margin says so); a constant column
is widened by 1% of its value, at least 1; integer bounds are rounded outwards. Calendar and clock fields
(month 1-12, minute 0-59) are exactly what a human should then tighten by hand. Whole-number floats
(pandas stores an integer column with NULLs as float) are inferred as integer.

Two kinds of column get no range, because new rows lie beyond any range seen: key columns (a `ride_id`
that reached 21,723 today is 25,000 next month; a string key whose values are all distinct gets no allowed
set either), and numbers
that grow with time (`growing: true`: at least `GROWING_MIN_DISTINCT` distinct values whose rank order
follows the timestamp's, Spearman >= `GROWING_MIN_CORRELATION`). The contract file says so beside them.
Datetime columns say whether a value with a UTC offset is converted to UTC (`offsets: convert`, inferred)
or quarantined (`offsets: refuse`).

Inferring batch rules: `min_rows` is 1, so an empty batch (nothing arrived) is refused; `max_rows` is
twice the rows inferred from, so the first batch, the whole table, passes while a doubled load does
not. Freshness (`max_age_hours`) is left off: the source's cadence cannot be read from one snapshot,
and historical data such as the 2013 example would always be stale. Set it by hand for a live source.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.clock import parse_timestamps
from retrain.config import ModelConfig
from retrain.errors import ConfigError
from tasks.warehouse import TableDescription, Warehouse, describe_table, has_table, list_tables

logger = logging.getLogger(__name__)

RANGE_MARGIN = 0.25  # share of the observed span added below the minimum and above the maximum
CONSTANT_MARGIN = 0.01  # share of the value (at least 1) added on each side when a column held a single value
MAX_ALLOWED_VALUES = 200  # a string column with at most this many distinct values gets an allowed set
LENGTH_HEADROOM = 2  # an open string column may be this many times longer than the longest seen
MIN_MAX_LENGTH = 16
ROW_BAND_HEADROOM = 2  # a batch may hold this many times the rows the contract was inferred from
GROWING_MIN_DISTINCT = 50  # fewer distinct values (a year, a month number) are a range, not a growing series
GROWING_MIN_CORRELATION = 0.95  # Spearman rank correlation with the timestamp
KEY_DUPLICATE_LIMIT = 0.01  # a configured key shared by more of the sampled rows than this is not a key

HEADER = """\
# Data contract for model '{model}', read by `retrain ingest` and by training before it trains.
# Written by `retrain contract infer`; edit it by hand: `infer` never overwrites it without --force.
# columns.<name>: type (integer|float|string|datetime), nullable, min/max (numbers), allowed (set),
#   max_length (strings), decimal_comma (accept "12,5" as 12.5 in a numeric column),
#   growing (numbers that grow with time, such as an ID: no max), offsets (datetime: convert a value with a
#   UTC offset to UTC, or refuse it). Key columns and growing columns get no range from `infer`.
# batch: min_rows/max_rows (row-count band), max_bad_share (above it the whole batch is refused),
#   max_age_hours (newest timestamp no older than this before the run's as_of; null = no check),
#   future_tolerance_minutes (rows dated after as_of + this have not arrived yet: an ingest leaves them for a
#   later batch; a requested --end beyond it quarantines them as future),
#   unknown_columns (report: ingest and list them; refuse: fail the batch).
"""


class ColumnType(StrEnum):
    INTEGER = "integer"
    FLOAT = "float"
    STRING = "string"
    DATETIME = "datetime"


class UnknownColumns(StrEnum):
    REPORT = "report"
    REFUSE = "refuse"


class TimestampOffsets(StrEnum):
    """What a datetime value written with a UTC offset (`2013-01-01T05:00+05:00`) becomes."""

    CONVERT = "convert"  # the instant, in UTC; values without an offset are taken as UTC already
    REFUSE = "refuse"  # quarantined as `offset:<column>`


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnRule(_Frozen):
    """What every value of one column must satisfy; a row breaking any rule is quarantined."""

    type: ColumnType
    nullable: bool = True
    min: int | float | None = Field(default=None, description="Smallest allowed value (numbers).")
    max: int | float | None = Field(default=None, description="Largest allowed value (numbers).")
    allowed: list[str] | None = Field(default=None, description="The only values a string column may hold.")
    max_length: int | None = Field(default=None, ge=1, description="Longest allowed string.")
    decimal_comma: bool = Field(default=False, description="Read '12,5' as 12.5; only where the data means it.")
    growing: bool = Field(
        default=False, description="Numbers that grow with time (an ID, a counter): no max, new rows lie beyond it."
    )
    offsets: TimestampOffsets | None = Field(
        default=None, description="Datetime columns: convert values with a UTC offset to UTC (default) or refuse them."
    )

    @model_validator(mode="after")
    def _fits_type(self) -> ColumnRule:
        numeric = self.type in (ColumnType.INTEGER, ColumnType.FLOAT)
        if self.growing and not numeric:
            raise ValueError(f"growing applies to integer and float columns, not {self.type}")
        if self.growing and self.max is not None:
            raise ValueError("a growing column has no max: its new values lie beyond any max")
        if self.offsets is not None and self.type is not ColumnType.DATETIME:
            raise ValueError(f"offsets applies to datetime columns, not {self.type}")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max apply to integer and float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if (self.allowed is not None or self.max_length is not None) and self.type is not ColumnType.STRING:
            raise ValueError(f"allowed/max_length apply to string columns, not {self.type}")
        if self.decimal_comma and not numeric:
            raise ValueError(f"decimal_comma applies to integer and float columns, not {self.type}")
        return self


class BatchRules(_Frozen):
    """Rules on a batch as a whole: breaking one refuses the batch, so nothing of it reaches training."""

    min_rows: int = Field(default=1, ge=0, description="Fewer rows means the source stopped delivering.")
    max_rows: int | None = Field(default=None, ge=1, description="More rows suggests a duplicated load.")
    max_bad_share: float = Field(default=0.05, ge=0, le=1)
    max_age_hours: float | None = Field(default=None, gt=0)
    future_tolerance_minutes: float = Field(default=60.0, ge=0)
    unknown_columns: UnknownColumns = UnknownColumns.REPORT

    @model_validator(mode="after")
    def _band(self) -> BatchRules:
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"max_rows {self.max_rows} is below min_rows {self.min_rows}")
        return self


class Contract(_Frozen):
    """A model's data contract: column rules, the key that identifies a row, and the batch rules."""

    model: str
    timestamp: str
    key: list[str] = Field(default_factory=list)
    columns: dict[str, ColumnRule]
    batch: BatchRules = BatchRules()

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        rule = self.columns.get(self.timestamp)
        if rule is None or rule.type is not ColumnType.DATETIME:
            raise ValueError(f"the timestamp column '{self.timestamp}' must be listed with type datetime")
        unknown = [name for name in self.key if name not in self.columns]
        if unknown:
            raise ValueError(f"key column(s) {unknown} are not listed under columns")
        nullable = [name for name in [self.timestamp, *self.key] if self.columns[name].nullable]
        if nullable:
            raise ValueError(f"timestamp and key column(s) {nullable} must have nullable: false")
        return self


def infer_contract(frame: pd.DataFrame, config: ModelConfig) -> Contract:
    """A first contract that the given rows satisfy, with ranges widened so ordinary new rows do too.

    Args:
        frame: Rows as the source holds them, typically the whole table at the start.
        config: The model config, which names the timestamp and key columns.

    Raises:
        ConfigError: the timestamp or a key column is not in the frame.
    """
    required = [config.source.timestamp, *config.source.key]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise ConfigError(
            f"columns {missing} named in the model config are not in the data; it has {list(frame.columns)}"
        )
    times = parse_timestamps(frame[config.source.timestamp]).values
    columns = {
        str(name): infer_column_rule(
            frame[name], force_datetime=name == config.source.timestamp, key=name in config.source.key, times=times
        )
        for name in frame.columns
    }
    for name in required:
        columns[name] = columns[name].model_copy(update={"nullable": False})
    rows = len(frame)
    batch = BatchRules(min_rows=1, max_rows=max(ROW_BAND_HEADROOM * rows, 1))
    return Contract(
        model=config.name, timestamp=config.source.timestamp, key=list(config.source.key), columns=columns, batch=batch
    )


def infer_column_rule(
    values: pd.Series, force_datetime: bool = False, key: bool = False, times: pd.Series | None = None
) -> ColumnRule:
    """The rule for one column: its type from the values, nulls allowed if any were seen, bounds widened.

    Args:
        values: The column as stored.
        force_datetime: The column is the timestamp, whatever its values look like.
        key: The column is part of the key: no range and no allowed set, since new rows bring new keys.
        times: The rows' timestamps (parsed), to recognise numbers that grow with time; None: no such check.
    """
    nullable = bool(values.isna().any())
    present = values.dropna()
    if force_datetime or pd.api.types.is_datetime64_any_dtype(values):
        return ColumnRule(type=ColumnType.DATETIME, nullable=nullable, offsets=TimestampOffsets.CONVERT)
    if pd.api.types.is_bool_dtype(values):
        return ColumnRule(type=ColumnType.STRING, nullable=nullable, allowed=["False", "True"])
    if not pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(present, errors="coerce")
        if len(present) and numbers.notna().all():
            present = numbers
        else:
            return _string_rule(present.astype(str), nullable, key)
    return _number_rule(present, nullable, key, times)


def _number_rule(present: pd.Series, nullable: bool, key: bool, times: pd.Series | None) -> ColumnRule:
    if not len(present):
        return ColumnRule(type=ColumnType.FLOAT, nullable=True)
    integral = bool((present % 1 == 0).all())
    column_type = ColumnType.INTEGER if integral else ColumnType.FLOAT
    if key:
        return ColumnRule(type=column_type, nullable=nullable)
    if times is not None and grows_with_time(present, times):
        return ColumnRule(type=column_type, nullable=nullable, growing=True)
    low, high = widen_range(float(present.min()), float(present.max()), integral)
    return ColumnRule(type=column_type, nullable=nullable, min=low, max=high)


def grows_with_time(numbers: pd.Series, times: pd.Series) -> bool:
    """Whether numbers rise with the timestamp (an ID, a counter): many distinct values in the time's rank order.

    Args:
        numbers: Non-null numbers, indexed like `times`.
        times: The timestamp of every row (NaT where unparseable).
    """
    paired = pd.DataFrame({"number": numbers.astype("float64"), "time": times.reindex(numbers.index)}).dropna()
    if paired["number"].nunique() < GROWING_MIN_DISTINCT or paired["time"].nunique() < 2:
        return False
    correlation = paired["number"].rank().corr(paired["time"].rank())
    return bool(correlation >= GROWING_MIN_CORRELATION)


def widen_range(low: float, high: float, integral: bool) -> tuple[int | float, int | float]:
    """The observed range with the margins described in the module docstring."""
    span = high - low
    margin = span * RANGE_MARGIN if span > 0 else max(abs(low) * CONSTANT_MARGIN, 1.0)
    wide_low = low - margin
    if low >= 0:
        wide_low = max(wide_low, 0.0)
    wide_high = high + margin
    if integral:
        return math.floor(wide_low), math.ceil(wide_high)
    return _round_outwards(wide_low, math.floor), _round_outwards(wide_high, math.ceil)


def _round_outwards(value: float, direction: Callable[[float], int]) -> float:
    # Four significant digits keep the YAML readable while never narrowing the range.
    if value == 0:
        return 0.0
    digits = 3 - math.floor(math.log10(abs(value)))
    scale = 10.0**digits
    return round(direction(value * scale) / scale, max(digits, 0))


def _string_rule(present: pd.Series, nullable: bool, key: bool = False) -> ColumnRule:
    distinct = present.unique()
    # A key column whose every value is distinct is an identifier: new rows bring new values. One that
    # repeats (a carrier within a composite key) is a category like any other.
    identifier = key and len(distinct) == len(present)
    if not identifier and 0 < len(distinct) <= MAX_ALLOWED_VALUES:
        return ColumnRule(type=ColumnType.STRING, nullable=nullable, allowed=sorted(str(v) for v in distinct))
    longest = int(present.str.len().max()) if len(present) else 0
    return ColumnRule(
        type=ColumnType.STRING, nullable=nullable, max_length=max(LENGTH_HEADROOM * longest, MIN_MAX_LENGTH)
    )


def contract_to_yaml(contract: Contract) -> str:
    """The contract as YAML with an explanatory header; columns one per line so hand edits diff well.

    Key and growing columns carry a comment saying why they have no range.
    """
    header = HEADER.format(model=contract.model)
    body = contract.model_dump(mode="json", exclude_defaults=False)
    columns = body.pop("columns")
    batch = body.pop("batch")
    lines = [header.rstrip("\n"), yaml.safe_dump(body, sort_keys=False, allow_unicode=True).rstrip("\n"), "columns:"]
    for name, rule in columns.items():
        compact = {
            k: v for k, v in rule.items()
            if v is not None and not (k in ("decimal_comma", "growing") and v is False)
        }
        flow = yaml.safe_dump(compact, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000)
        line = f"  {yaml.safe_dump(name, default_style=None).splitlines()[0]}: {flow.strip()}"
        if name in contract.key and rule["min"] is None and rule["max"] is None and rule["allowed"] is None:
            line += "  # key: no range, new rows bring new keys"
        elif rule["growing"]:
            line += "  # grows with time: no max, new rows lie beyond any seen"
        lines.append(line)
    lines.append(yaml.safe_dump({"batch": batch}, sort_keys=False).rstrip("\n"))
    return "\n".join(lines) + "\n"


def contract_from_yaml(text: str, source: str = "contract") -> Contract:
    """Parse and check a contract; every problem names the file and the field.

    Raises:
        ConfigError: the text is not YAML or breaks the contract's own rules.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"data contract {source} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"data contract {source} must be a mapping of fields, got {type(raw).__name__}")
    try:
        return Contract.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"data contract {source} is invalid: {problems}") from error


def read_contract(path: Path) -> Contract:
    """The contract stored at `path`.

    Raises:
        ConfigError: the file is missing (with the command that writes it) or invalid.
    """
    if not path.is_file():
        raise ConfigError(
            f"data contract {path} does not exist: write it with `retrain contract infer --config <model.yaml>`"
        )
    return contract_from_yaml(path.read_text(encoding="utf-8"), source=str(path))


def write_contract(contract: Contract, path: Path) -> Path:
    """Write the contract to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(contract_to_yaml(contract), encoding="utf-8")
    logger.info("wrote the data contract for %s to %s", contract.model, path)
    return path


# ----------------------------------------------------------------------- the model config against its table

# What each configured column must be in the source table. Text (and SQLite's untyped columns) may hold
# numbers or ISO 8601 timestamps, which validation reads; a date/time column cannot be a number.
_USABLE_KINDS: dict[str, tuple[frozenset[str], str]] = {
    "timestamp": (frozenset({"datetime", "string", "untyped"}), "a date/time column or ISO 8601 text"),
    "key": (frozenset({"integer", "float", "string", "datetime", "boolean", "untyped"}), "a column of plain values"),
    "target": (frozenset({"integer", "float", "boolean", "string", "untyped"}), "a numeric column"),
    "numeric": (frozenset({"integer", "float", "boolean", "string", "untyped"}), "a numeric column"),
    "categorical": (frozenset({"integer", "float", "boolean", "string", "untyped"}), "a column of categories"),
}
_NUMERIC_CONTRACT_TYPES = (ColumnType.INTEGER, ColumnType.FLOAT)


def configured_columns(config: ModelConfig) -> list[tuple[str, str, str]]:
    """Every column the config names, as (field, column, role): `("features.numeric[2]", "distance", "numeric")`."""
    source, features = config.source, config.features
    return [
        ("source.timestamp", source.timestamp, "timestamp"),
        *[(f"source.key[{i}]", name, "key") for i, name in enumerate(source.key)],
        ("target.column", config.target.column, "target"),
        *[(f"features.numeric[{i}]", name, "numeric") for i, name in enumerate(features.numeric)],
        *[(f"features.categorical[{i}]", name, "categorical") for i, name in enumerate(features.categorical)],
    ]


def _close_matches(name: str, candidates: Sequence[str]) -> str:
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not matches:
        lowered = {candidate.lower(): candidate for candidate in candidates}
        matches = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def check_config_against_table(config: ModelConfig, table: TableDescription, contract: Contract | None = None) -> None:
    """Refuse a model config that its source table (and its data contract) cannot serve, before any work.

    Every configured column must exist with a usable type; a column may be a feature only once and never
    the target; the key must be unique enough to be a key; and with a contract, every column must be one
    of its columns (the clean table holds nothing else), numeric ones numeric, and the contract's timestamp
    and key must be the config's.

    Args:
        config: The model config.
        table: The source table as `tasks.warehouse.describe_table` saw it.
        contract: The model's data contract, if it has one yet.

    Raises:
        ConfigError: naming the config file, each wrong field, and what the table (or contract) has instead.
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    for field, column, role in configured_columns(config):
        kind = table.columns.get(column)
        usable, wanted = _USABLE_KINDS[role]
        if kind is None:
            close = _close_matches(column, list(table.columns))
            problems.append(f"{field} '{column}' is not a column of table '{table.name}'{close}")
            continue
        if kind not in usable:
            declared = table.types.get(column, kind)
            problems.append(f"{field} '{column}' is {declared} in table '{table.name}'; it must be {wanted}")
        if role in ("numeric", "categorical", "target"):
            if column in seen and seen[column] != field:
                problems.append(f"{field} '{column}' is already {seen[column]}")
            seen.setdefault(column, field)
        if contract is not None:
            problems.extend(_contract_problems(field, column, role, contract, config))
    if contract is not None:
        if contract.timestamp != config.source.timestamp:
            problems.append(
                f"source.timestamp '{config.source.timestamp}' is not the timestamp '{contract.timestamp}' of the "
                f"data contract {config.contract_path}"
            )
        if list(contract.key) != list(config.source.key):
            problems.append(
                f"source.key {list(config.source.key)} is not the key {list(contract.key)} of the data contract "
                f"{config.contract_path}"
            )
    if table.sampled_rows and table.key_duplicates / table.sampled_rows > KEY_DUPLICATE_LIMIT:
        share = table.key_duplicates / table.sampled_rows
        problems.append(
            f"source.key {list(config.source.key)} is not a key: {table.key_duplicates:,} of {table.sampled_rows:,} "
            f"sampled rows ({share:.1%}) share their key with another row, and every such row would be quarantined; "
            "add the columns that tell rows apart"
        )
    if problems:
        where = config.config_path or f"of model '{config.name}'"
        raise ConfigError(
            f"model config {where} does not fit table '{table.name}': " + "; ".join(problems)
            + f". The table has: {', '.join(table.columns)}"
        )


def _contract_problems(field: str, column: str, role: str, contract: Contract, config: ModelConfig) -> list[str]:
    rule = contract.columns.get(column)
    if rule is None:
        return [
            f"{field} '{column}' is not a column of the data contract {config.contract_path}, so the clean table "
            "does not hold it: add it there (or infer the contract again with --force)"
        ]
    if role in ("numeric", "target") and rule.type not in _NUMERIC_CONTRACT_TYPES:
        hint = "; list it under features.categorical" if role == "numeric" else ""
        return [f"{field} '{column}' is a {rule.type} column in the data contract {config.contract_path}{hint}"]
    return []


def check_model_source(config: ModelConfig, warehouse: Warehouse, with_contract: bool = True) -> TableDescription:
    """Check the model config against its source table (and its contract): quick, and no Prefect needed.

    Args:
        config: The model config.
        warehouse: Where the source table lives.
        with_contract: Also check against the data contract beside the config (which must then exist).

    Raises:
        ConfigError: the source table does not exist, or `check_config_against_table` refuses the config.
    """
    if not has_table(warehouse, config.source.table):
        tables = list_tables(warehouse)
        raise ConfigError(
            f"model config {config.config_path or config.name}: source.table '{config.source.table}' does not "
            f"exist in the warehouse {warehouse.url}"
            + (f" (schema {warehouse.schema})" if warehouse.schema else "")
            + f"{_close_matches(config.source.table, tables)}; it has tables: {', '.join(tables) or 'none'}"
        )
    table = describe_table(warehouse, config.source.table, config.source.key)
    contract = read_contract(config.contract_path) if with_contract else None
    check_config_against_table(config, table, contract)
    return table
