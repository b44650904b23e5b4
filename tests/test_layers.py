"""The house has floors: a room imports only the rooms below it (DESIGN.md, "Layout"), the CLI excepted.

Read from the source with `ast`, so an import inside a function counts as much as one at the top: a lazy import
that reaches up a floor is still a dependency that goes the wrong way.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("retrain", "monitoring", "tasks", "serving", "flows", "deployments")
# What each room may import besides itself: the floors below it. serving and tasks stand side by side (the
# prediction server carries no orchestration), flows wire tasks (and the demo drives the real server),
# deployments read the flows they deploy.
ALLOWED: dict[str, frozenset[str]] = {
    "retrain": frozenset(),
    "monitoring": frozenset({"retrain"}),
    "tasks": frozenset({"retrain", "monitoring"}),
    "serving": frozenset({"retrain", "monitoring"}),
    "flows": frozenset({"retrain", "monitoring", "tasks", "serving"}),
    "deployments": frozenset({"retrain", "monitoring", "tasks", "flows"}),
}
CLI = REPO / "retrain" / "cli"


def modules() -> list[Path]:
    return sorted(path for room in ROOMS for path in (REPO / room).rglob("*.py") if CLI not in path.parents)


def imported(path: Path) -> set[str]:
    """Every module named by an absolute import anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def room_of(path: Path) -> str:
    return path.relative_to(REPO).parts[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_a_room_imports_only_the_floors_below_it(path: Path) -> None:
    room = room_of(path)
    upward = sorted(name for name in imported(path)
                    if name.split(".")[0] in ROOMS and name.split(".")[0] != room
                    and name.split(".")[0] not in ALLOWED[room])
    assert not upward, f"{path.relative_to(REPO)} ({room}/) imports {upward}; it may import {sorted(ALLOWED[room])}"


def test_no_import_cycles_between_modules() -> None:
    """No module reaches itself through imports (the CLI, the one front door, is left out)."""
    known = {module_name(path): path for path in modules()}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for imported_name in imported(path):
            target = imported_name
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(known):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {[' -> '.join(cycle) for cycle in cycles]}"


def test_the_kernel_is_what_the_prediction_server_needs_and_no_more() -> None:
    """The server imports the kernel's warehouse and contract, never the orchestration room."""
    serving = [path for path in modules() if room_of(path) == "serving"]
    reached = set().union(*(imported(path) for path in serving))
    assert any(name.startswith("retrain.warehouse") for name in reached)
    assert not any(name.split(".")[0] in {"tasks", "flows", "prefect", "optuna", "pandera"} for name in reached)


MAX_LINES = 900


def test_no_module_outgrows_a_room() -> None:
    """A module past 900 lines holds more than one idea: split it by what it owns (as tasks/late_rows.py left
    tasks/ingest.py) before it becomes the next tasks/warehouse.py."""
    big = {str(path.relative_to(REPO)): lines for path in modules()
           if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
