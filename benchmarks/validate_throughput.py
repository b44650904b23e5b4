"""Validation throughput and ingest cost on 1M flights rows with 1% injected faults.

Builds 1,000,000 unique rows by tiling the real 2013 flights (each copy shifted by whole years, so keys
stay unique), injects faults into 1% of them (text in integer columns, out-of-range values, unknown
categories, nulls, unparseable timestamps, numbers with stray characters, and coercible text), and
measures in one run:
  1. pure validation (coercion, pandera row rules, batch rules) of the rows as the warehouse returns
     them (timestamps as SQLite text): rows/s, target >= 500k;
  2. ingest into a fresh SQLite file: validate, judge, then write clean rows, quarantine and the batch
     record in one transaction, exactly as the flow's tasks do;
  3. a bare chunked pandas `to_sql` of the same 1M rows into another fresh SQLite file;
and prints the ratio bare/ingest (target >= 0.8, i.e. validation and bookkeeping under a quarter of the
write). The clean table has its unique key index, as in production. Reading the source table (and choosing
the batch's rows on their parsed timestamps) is the same for any ingest and is reported apart.
Run: .venv/bin/python benchmarks/validate_throughput.py [--validation-only] [--before /path/to/older/checkout]
`--before` first measures step 1 with another checkout's code (same data, same interpreter, a fresh process),
so a before/after of the validation comes from one run.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# `--code DIR` (used by --before) validates with another checkout's modules; by default this checkout's.
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CODE))

from retrain.contract import Contract, read_contract  # noqa: E402
from retrain.warehouse import (  # noqa: E402
    WRITE_CHUNK_ROWS,
    clean_table,
    open_warehouse,
    quarantine_table,
    read_source_rows,
    record_batch,
)
from tasks.example_data import read_flights_example  # noqa: E402
from tasks.ingest import (  # noqa: E402
    BatchOutcome,
    BatchPlan,
    BatchRows,
    batch_record,
    outcome_of,
    quarantine_records,
    select_batch,
)
from tasks.validation import judge_batch, validate_batch  # noqa: E402

ROWS = 1_000_000
FAULT_SHARE = 0.01
SEED = 13
REPEATS = 3
WRITE_REPEATS = 2
CONTRACT = Path(__file__).resolve().parents[1] / "examples" / "flights.contract.yaml"
NOW = datetime(2026, 11, 25)


def million_rows() -> pd.DataFrame:
    """1M unique real rows: the 2013 table tiled, each copy a whole number of years later."""
    flights = read_flights_example()
    copies = []
    for copy in range(-(-ROWS // len(flights))):
        shifted = flights.copy()
        shifted["time_hour"] = shifted["time_hour"] + pd.DateOffset(years=copy)
        shifted["year"] = shifted["year"] + copy
        copies.append(shifted)
    return pd.concat(copies, ignore_index=True).iloc[:ROWS].reset_index(drop=True)


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows as the ingest reads them from SQLite: timestamps as text."""
    raw = frame.copy()
    raw["time_hour"] = raw["time_hour"].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    return raw


def inject_faults(raw: pd.DataFrame) -> pd.DataFrame:
    """1% of the rows get one fault each, cycling through the kinds a warehouse produces."""
    rng = np.random.default_rng(SEED)
    rows = rng.choice(len(raw), size=int(len(raw) * FAULT_SHARE), replace=False)
    faulty = raw.copy()
    kinds = [
        ("dep_time", "abc"),
        ("dep_time", " 517 "),  # coercible: not a fault after coercion
        ("distance", -1),
        ("carrier", "ZZ"),
        ("carrier", None),
        ("temp", "39.0F"),
        ("time_hour", "2013-13-45 99:00"),
        ("air_time", "12.5"),  # coercible text, but not a whole number: quarantined
        ("dest", "ZÜRICH✈"),
        ("tailnum", "N" * 200),
    ]
    for number, (column, value) in enumerate(kinds):
        chosen = rows[number :: len(kinds)]
        if not isinstance(value, int) and faulty[column].dtype != object:
            faulty[column] = faulty[column].astype(object)
        faulty.loc[chosen, column] = value
    return faulty


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main() -> None:
    import argparse
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation-only", action="store_true", help="Step 1 only (no writes).")
    parser.add_argument("--before", type=Path, default=None, help="Measure step 1 with another checkout first.")
    parser.add_argument("--code", type=Path, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.before is not None:
        print(f"before ({options.before}):", flush=True)
        subprocess.run([sys.executable, __file__, "--validation-only", "--code", str(options.before.resolve())],
                       check=True)
        print(f"after ({CODE}):", flush=True)
    example = read_contract(CONTRACT)
    # The example's row band is sized for the 327k-row table; a 1M-row batch is legitimate here.
    contract = example.model_copy(update={"batch": example.batch.model_copy(update={"max_rows": 2 * ROWS})})
    typed = million_rows()
    raw = inject_faults(as_read(typed))
    print(f"rows {len(raw):,} x {len(raw.columns)} columns, {int(len(raw) * FAULT_SHARE):,} with a fault")

    validate_batch(raw.iloc[:10_000], contract, NOW)  # warm-up: imports and first-call caches
    times, cpu_times = [], []
    for _ in range(REPEATS):
        cpu_start = time.process_time()
        seconds, result = timed(lambda: judge_batch(validate_batch(raw, contract, NOW), contract, NOW))
        times.append(seconds)
        cpu_times.append(time.process_time() - cpu_start)
    validation = statistics.median(times)
    print(
        f"validation: {len(raw) / validation:,.0f} rows/s (median of {REPEATS}: {validation:.2f} s wall, "
        f"{statistics.median(cpu_times):.2f} s CPU: a busy machine shows as wall > CPU)  "
        f"clean {result.clean_count:,}  coerced {result.coerced:,}  quarantined {result.quarantined_count:,}  "
        f"status {result.status}"
    )
    print("  reasons: " + ", ".join(f"{reason} {count:,}" for reason, count in result.reasons.items()))
    load = os.getloadavg()
    print(f"  {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; target >= 600,000 rows/s")
    if options.validation_only:
        return

    with tempfile.TemporaryDirectory(prefix="retrain-validate-bench-") as temporary:
        measure_writes(contract, typed, raw, Path(temporary))


def measure_writes(contract: Contract, typed: pd.DataFrame, raw: pd.DataFrame, folder: Path) -> None:
    """Bare to_sql against the ingest's validate-and-record, then the source read, in SQLite files under folder."""
    column_types = {name: rule.type.value for name, rule in contract.columns.items()}

    def write_bare(run: int) -> None:
        warehouse = open_warehouse(f"sqlite:///{folder / f'bare-{run}.db'}")
        with warehouse.engine.begin() as connection:
            typed.to_sql("flights", connection, index=False, chunksize=WRITE_CHUNK_ROWS)

    def ingest(run: int) -> BatchOutcome:
        warehouse = open_warehouse(f"sqlite:///{folder / f'ingest-{run}.db'}")
        plan = BatchPlan(
            batch_id=f"bench-{run}", model=contract.model, source_table="flights", clean_table="flights_clean",
            range_start=None, range_end=None, as_of=NOW, horizon=NOW, started_at=datetime.now(),
        )
        judged = judge_batch(validate_batch(raw, contract, NOW), contract, NOW)
        rows = BatchRows(frame=raw, range_end=None)
        outcome = outcome_of(plan, rows, judged, flow_run_id=None)
        record_batch(
            warehouse,
            record=batch_record(outcome, plan, finished_at=datetime.now()),
            clean=judged.clean,
            clean_table=clean_table("flights_clean", column_types, key=contract.key),
            quarantine=quarantine_records(outcome.batch_id, judged),
            quarantine_table=quarantine_table("flights_quarantine"),
        )
        return outcome

    # Alternated, each twice into fresh files, so a busy neighbour on the machine hits both alike.
    bare_times, ingest_times = [], []
    for run in range(WRITE_REPEATS):
        bare_times.append(timed(lambda: write_bare(run))[0])
        seconds, outcome = timed(lambda: ingest(run))
        ingest_times.append(seconds)
    bare, ingested = statistics.median(bare_times), statistics.median(ingest_times)
    print(f"bare to_sql (chunked, {WRITE_CHUNK_ROWS:,}): {len(typed) / bare:,.0f} rows/s "
          f"(median {bare:.2f} s of {[round(t, 2) for t in bare_times]})")
    print(
        f"ingest (validate + clean, quarantine and ledger in one transaction): {len(raw) / ingested:,.0f} rows/s "
        f"(median {ingested:.2f} s of {[round(t, 2) for t in ingest_times]}; "
        f"clean {outcome.clean:,}, quarantined {outcome.quarantined:,})"
    )
    print(f"ratio bare/ingest: {bare / ingested:.2f} (target >= 0.80)")

    source = open_warehouse(f"sqlite:///{folder / 'source.db'}")
    with source.engine.begin() as connection:
        raw.astype({"time_hour": str}).to_sql("flights", connection, index=False, chunksize=WRITE_CHUNK_ROWS)
    reading, frame = timed(lambda: read_source_rows(source, "flights", "time_hour"))
    print(f"reading the source table (any ingest pays it): {len(frame) / reading:,.0f} rows/s ({reading:.2f} s)")
    choosing, chosen = timed(lambda: select_batch(frame, "time_hour", None, datetime(2200, 1, 1), False))
    print(f"choosing the batch's rows on parsed timestamps: {len(frame) / choosing:,.0f} rows/s ({choosing:.2f} s; "
          f"{chosen.count:,} rows, {len(chosen.fingerprints):,} without a usable timestamp)")


if __name__ == "__main__":
    main()
