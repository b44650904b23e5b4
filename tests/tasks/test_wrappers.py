"""Every Prefect task of `tasks/` wraps a plain function once: a task decorated twice runs as a task inside a task,
two task runs per call (it happened to `find_earlier_training` and `score_current_champion`)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from prefect import Task

import tasks


def every_task() -> list[tuple[str, Task]]:
    found = []
    for module in pkgutil.iter_modules(tasks.__path__):
        loaded = importlib.import_module(f"tasks.{module.name}")
        found += [(f"{module.name}.{name}", value) for name, value in vars(loaded).items()
                  if isinstance(value, Task) and value.fn.__module__ == loaded.__name__]
    return sorted(found, key=lambda pair: pair[0])


@pytest.mark.parametrize(("name", "wrapper"), every_task(), ids=[name for name, _ in every_task()])
def test_a_task_wraps_a_plain_function(name: str, wrapper: Task) -> None:
    assert not isinstance(wrapper.fn, Task), f"{name} is decorated with @task twice"


def test_the_tasks_are_found() -> None:
    names = {name for name, _ in every_task()}
    assert {"outcome.find_earlier_training", "outcome.score_current_champion", "ingest.plan_batch"} <= names
