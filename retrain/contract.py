"""The data contract, as a model: what a batch of a source's rows must look like before it may be trained on.

A contract is a YAML file beside the model config, first written by `retrain contract infer` (inference is a
task: `tasks.contract`) from the data as it is, then edited by hand. It says, per column, the type, whether
nulls are allowed and a range or an allowed set; and for the batch, the row-count band, the largest share of
bad rows that still lets the good ones through, and how fresh the newest row must be. `tasks.validation`
compiles it to a pandera schema; ingest, training, serving and monitoring all read it through this module.

Also here: the check of a model config against its source table and contract, which every command runs
before any work.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.config import ModelConfig
from retrain.errors import ConfigError
from retrain.warehouse import TableDescription, Warehouse, describe_table, has_table, list_tables

logger = logging.getLogger(__name__)

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
#   unknown_columns (report: ingest and list them; refuse: fail the batch),
#   late_window_hours (how far before the watermark an ingest looks for rows no batch has read: late rows;
#   0 = never), late_rows (report: count them in the ingest's outcome; ingest: an open-ended ingest lands them
#   first, as a batch of their own).
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


class LateRows(StrEnum):
    """What an open-ended ingest does with late rows: rows dated before the watermark that no batch has read."""

    REPORT = "report"  # counted in the outcome (`late`) and the batch ledger; replay their range to land them
    INGEST = "ingest"  # landed first, as a batch of their own, then the new rows as usual


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
    hard: bool = Field(
        default=True,
        description="min/max quarantine a row outside them (true), or only count it and let it through (false: a "
        "soft range, reported by ingest and seen by drift). `contract infer` writes feature ranges soft, since a "
        "record day is real data; the target's stay hard.",
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
    late_window_hours: float = Field(
        default=168.0, ge=0, description="How far before the watermark an ingest looks for late rows (0: never). "
        "Every ingest reads and checks the source rows of this window, so a large hourly table may want less.",
    )
    late_rows: LateRows = LateRows.REPORT

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
            and not (k == "hard" and (v is True or (rule["min"] is None and rule["max"] is None)))
        }
        flow = yaml.safe_dump(compact, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000)
        line = f"  {yaml.safe_dump(name, default_style=None).splitlines()[0]}: {flow.strip()}"
        if name in contract.key and rule["min"] is None and rule["max"] is None and rule["allowed"] is None:
            line += "  # key: no range, new rows bring new keys"
        elif rule["growing"]:
            line += "  # grows with time: no max, new rows lie beyond any seen"
        elif "hard" in compact:
            line += "  # soft range: a value outside is counted and kept (hard: true quarantines it)"
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
        table: The source table as `retrain.warehouse.describe_table` saw it.
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

