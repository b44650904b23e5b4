"""The monitoring drift step against Evidently's DataDriftPreset alone, on 1M reference and 1M current rows.

20 numeric features; 8 of them drift (mean shifts and a scale change of various sizes, some near Evidently's
threshold), 12 do not. In one run, each side in its own process so peak memory is its own:
  1. ours: `monitoring.reports.build_drift_report` on a seeded sample of `--sample` rows per side (the
     default of `monitoring.sample_rows`), numbers read by `monitoring.metrics.read_drift`;
  2. Evidently alone: `Report([DataDriftPreset()]).run(current, reference)` on every row;
and prints wall time, peak RSS and the per-column drift decisions of both, with their agreement.
Run: .venv/bin/python benchmarks/monitoring.py [--rows 1000000] [--sample 30000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COLUMNS = [f"x{i:02d}" for i in range(20)]
SHIFTS = {"x00": 1.0, "x01": 0.5, "x02": 0.25, "x03": 0.15, "x04": 0.12, "x05": 0.08, "x06": 0.05}  # in sd
SCALED = {"x07": 1.5}  # standard deviation multiplied


def make_frames(rows: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame({name: rng.normal(size=rows) for name in COLUMNS})
    current = pd.DataFrame({name: rng.normal(size=rows) for name in COLUMNS})
    for name, shift in SHIFTS.items():
        current[name] += shift
    for name, scale in SCALED.items():
        current[name] *= scale
    return reference, current


def run_ours(rows: int, sample: int) -> dict:
    from monitoring.metrics import read_drift
    from monitoring.reports import ReportColumns, build_drift_report, sample_rows

    reference, current = make_frames(rows)
    start = time.perf_counter()
    columns = ReportColumns(tuple(COLUMNS), (), target=None, prediction=None)
    snapshot = build_drift_report(sample_rows(reference, sample), sample_rows(current, sample), columns, 0.5)
    drift = read_drift(snapshot.dict(), COLUMNS)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "drifted": {c.column: c.drifted for c in drift.columns},
            "scores": {c.column: c.score for c in drift.columns}}


def run_evidently(rows: int) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from monitoring.metrics import read_drift

    reference, current = make_frames(rows)
    start = time.perf_counter()
    definition = DataDefinition(numerical_columns=COLUMNS)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition))
    drift = read_drift(snapshot.dict(), COLUMNS)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "drifted": {c.column: c.drifted for c in drift.columns},
            "scores": {c.column: c.score for c in drift.columns}}


def in_subprocess(which: str, rows: int, sample: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--only", which, "--rows", str(rows), "--sample", str(sample)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=30_000)
    parser.add_argument("--only", choices=["ours", "evidently"])
    args = parser.parse_args()
    if args.only:
        result = run_ours(args.rows, args.sample) if args.only == "ours" else run_evidently(args.rows)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sys.stdout.write(json.dumps(result) + "\n")
        return
    ours = in_subprocess("ours", args.rows, args.sample)
    alone = in_subprocess("evidently", args.rows, args.sample)
    agree = [c for c in COLUMNS if ours["drifted"][c] == alone["drifted"][c]]
    lines = [f"{args.rows:,} reference + {args.rows:,} current rows x {len(COLUMNS)} numeric columns "
             f"(peak RSS includes generating both frames: {args.rows * len(COLUMNS) * 16 / 1e6:,.0f} MB of data)",
             f"ours (seeded sample {args.sample:,}/side): {ours['seconds']:.1f} s, peak {ours['peak_rss_mb']:,.0f} MB",
             f"Evidently alone (all rows):      {alone['seconds']:.1f} s, peak {alone['peak_rss_mb']:,.0f} MB",
             f"per-column decisions agree on {len(agree)}/{len(COLUMNS)} columns",
             "column  ours(score,drifted)  evidently(score,drifted)"]
    lines += [f"{c}    {ours['scores'][c]:.4f} {ours['drifted'][c]!s:5}   {alone['scores'][c]:.4f} "
              f"{alone['drifted'][c]!s:5}" for c in COLUMNS]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
