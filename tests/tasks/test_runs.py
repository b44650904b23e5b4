"""How runs show in the Prefect UI: names from the model and the instant, and who a run acts for."""

from __future__ import annotations

from datetime import datetime

import pytest

from tasks.runs import instant_label, run_label, typed_actor


@pytest.mark.parametrize(
    ("moment", "label"),
    [(datetime(2013, 4, 1), "2013-04-01"), (datetime(2013, 4, 1, 5, 30), "2013-04-01 05:30"),
     (datetime(2013, 4, 1, 5, 0, 0, 1), "2013-04-01 05:00")],
)
def test_a_run_is_named_after_the_model_and_its_instant(moment: datetime, label: str) -> None:
    assert instant_label(moment) == label
    assert run_label("flights-delay", "monitor", moment) == f"flights-delay monitor {label}"


@pytest.mark.parametrize(
    ("actor", "created_by", "from_deployment", "acts_for"),
    [
        ("person:prefect-ui", None, True, "person:prefect-ui (typed in the run form)"),
        ("person:ana", "ana.lopez", True, "person:ana.lopez"),  # Prefect knows the user: it wins
        ("schedule", None, True, "schedule"),
        ("event", None, True, "event"),
        ("flow:train-model", None, False, "flow:train-model"),
        ("person:bob", None, False, "person:bob"),  # the CLI: the settings' actor, not a form
    ],
)
def test_a_name_typed_in_a_deployments_form_is_marked(actor: str, created_by: str | None, from_deployment: bool,
                                                       acts_for: str) -> None:
    assert typed_actor(actor, created_by, from_deployment) == acts_for
