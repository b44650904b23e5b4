"""The per-model slot, on a real Prefect server: one holder at a time, a second one waits or is Busy."""

from __future__ import annotations

import threading
import uuid

import pytest
from prefect.client.orchestration import get_client

from retrain.errors import Busy, ExitCode
from tasks.limits import ensure_model_limit, hold_model_slot, model_limit_name

pytestmark = pytest.mark.usefixtures("prefect_harness")


def active_slots(model: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(model_limit_name(model)).active_slots


def test_the_limit_is_created_once_and_an_operators_value_is_kept() -> None:
    model = f"limits-{uuid.uuid4().hex[:8]}"
    assert ensure_model_limit(model) == f"retrain-model-{model}"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(model_limit_name(model), 3)
    ensure_model_limit(model)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(model_limit_name(model)).limit == 3


def test_a_second_run_of_the_same_model_is_busy_and_another_model_is_not() -> None:
    model = f"limits-{uuid.uuid4().hex[:8]}"
    holding, release = threading.Event(), threading.Event()

    def first_run() -> None:
        with hold_model_slot(model, wait_seconds=30):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert holding.wait(30)
        assert active_slots(model) == 1
        with pytest.raises(Busy, match=f"model '{model}' holds its slot .*'retrain-model-{model}'") as raised:
            with hold_model_slot(model, wait_seconds=1):
                pytest.fail("two runs of one model held its slot at once")
        assert raised.value.exit_code == ExitCode.BUSY
        with hold_model_slot(f"{model}-other", wait_seconds=5):
            pass  # another model's runs are not held up
    finally:
        release.set()
        thread.join(30)
    assert active_slots(model) == 0


def test_a_waiting_run_gets_the_slot_when_the_holder_finishes() -> None:
    model = f"limits-{uuid.uuid4().hex[:8]}"
    order: list[str] = []
    holding = threading.Event()

    def first_run() -> None:
        with hold_model_slot(model, wait_seconds=30):
            holding.set()
            order.append("first starts")
            threading.Event().wait(1)
            order.append("first ends")

    thread = threading.Thread(target=first_run)
    thread.start()
    assert holding.wait(30)
    with hold_model_slot(model, wait_seconds=60):
        order.append("second starts")
    thread.join(30)
    assert order == ["first starts", "first ends", "second starts"]


def test_the_slot_is_released_when_the_run_fails() -> None:
    model = f"limits-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError, match="training failed"):
        with hold_model_slot(model, wait_seconds=5):
            raise RuntimeError("training failed")
    assert active_slots(model) == 0
