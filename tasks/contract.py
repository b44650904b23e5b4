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

Inferring batch rules: `min_rows` is 1, so an empty batch (nothing arrived) is refused; `max_rows` is
twice the rows inferred from, so the first batch, the whole table, passes while a doubled load does
not. Freshness (`max_age_hours`) is left off: the source's cadence cannot be read from one snapshot,
and historical data such as the 2013 example would always be stale. Set it by hand for a live source.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.config import ModelConfig
from retrain.errors import ConfigError

logger = logging.getLogger(__name__)

RANGE_MARGIN = 0.25  # share of the observed span added below the minimum and above the maximum
CONSTANT_MARGIN = 0.01  # share of the value (at least 1) added on each side when a column held a single value
MAX_ALLOWED_VALUES = 200  # a string column with at most this many distinct values gets an allowed set
LENGTH_HEADROOM = 2  # an open string column may be this many times longer than the longest seen
MIN_MAX_LENGTH = 16
ROW_BAND_HEADROOM = 2  # a batch may hold this many times the rows the contract was inferred from

HEADER = """\
# Data contract for model '{model}', read by `retrain ingest` and by training before it trains.
# Written by `retrain contract infer`; edit it by hand: `infer` never overwrites it without --force.
# columns.<name>: type (integer|float|string|datetime), nullable, min/max (numbers), allowed (set),
#   max_length (strings), decimal_comma (accept "12,5" as 12.5 in a numeric column).
# batch: min_rows/max_rows (row-count band), max_bad_share (above it the whole batch is refused),
#   max_age_hours (newest timestamp no older than this before the reference time; null = no check),
#   future_tolerance_minutes (timestamps later than now + this are quarantined),
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

    @model_validator(mode="after")
    def _fits_type(self) -> ColumnRule:
        numeric = self.type in (ColumnType.INTEGER, ColumnType.FLOAT)
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
    columns = {
        str(name): infer_column_rule(frame[name], force_datetime=name == config.source.timestamp)
        for name in frame.columns
    }
    for name in required:
        columns[name] = columns[name].model_copy(update={"nullable": False})
    rows = len(frame)
    batch = BatchRules(min_rows=1, max_rows=max(ROW_BAND_HEADROOM * rows, 1))
    return Contract(
        model=config.name, timestamp=config.source.timestamp, key=list(config.source.key), columns=columns, batch=batch
    )


def infer_column_rule(values: pd.Series, force_datetime: bool = False) -> ColumnRule:
    """The rule for one column: its type from the values, nulls allowed if any were seen, bounds widened."""
    nullable = bool(values.isna().any())
    present = values.dropna()
    if force_datetime or pd.api.types.is_datetime64_any_dtype(values):
        return ColumnRule(type=ColumnType.DATETIME, nullable=nullable)
    if pd.api.types.is_bool_dtype(values):
        return ColumnRule(type=ColumnType.STRING, nullable=nullable, allowed=["False", "True"])
    if not pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(present, errors="coerce")
        if len(present) and numbers.notna().all():
            present = numbers
        else:
            return _string_rule(present.astype(str), nullable)
    integral = bool((present % 1 == 0).all()) if len(present) else False
    column_type = ColumnType.INTEGER if integral else ColumnType.FLOAT
    if not len(present):
        return ColumnRule(type=ColumnType.FLOAT, nullable=True)
    low, high = widen_range(float(present.min()), float(present.max()), integral)
    return ColumnRule(type=column_type, nullable=nullable, min=low, max=high)


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


def _string_rule(present: pd.Series, nullable: bool) -> ColumnRule:
    distinct = present.unique()
    if 0 < len(distinct) <= MAX_ALLOWED_VALUES:
        return ColumnRule(type=ColumnType.STRING, nullable=nullable, allowed=sorted(str(v) for v in distinct))
    longest = int(present.str.len().max()) if len(present) else 0
    return ColumnRule(
        type=ColumnType.STRING, nullable=nullable, max_length=max(LENGTH_HEADROOM * longest, MIN_MAX_LENGTH)
    )


def contract_to_yaml(contract: Contract) -> str:
    """The contract as YAML with an explanatory header; columns one per line so hand edits diff well."""
    header = HEADER.format(model=contract.model)
    body = contract.model_dump(mode="json", exclude_defaults=False)
    columns = body.pop("columns")
    batch = body.pop("batch")
    lines = [header.rstrip("\n"), yaml.safe_dump(body, sort_keys=False, allow_unicode=True).rstrip("\n"), "columns:"]
    for name, rule in columns.items():
        compact = {k: v for k, v in rule.items() if v is not None and not (k == "decimal_comma" and v is False)}
        flow = yaml.safe_dump(compact, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000)
        lines.append(f"  {yaml.safe_dump(name, default_style=None).splitlines()[0]}: {flow.strip()}")
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
