"""Passwords are masked in URLs, in any text and in log records, whatever handler emits them."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pytest

from retrain.errors import StoreUnavailable
from retrain.redaction import (
    RedactingFilter,
    install_redaction,
    redact_text,
    redact_url,
    secret_values,
    split_credentials,
)

PASSWORD = "S3cretPW42"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://user:{PASSWORD}@127.0.0.1:9/api", "http://user:***@127.0.0.1:9/api"),
        (f"postgresql+psycopg://bob:{PASSWORD}@db:5432/wh", "postgresql+psycopg://bob:***@db:5432/wh"),
        ("postgresql+psycopg://bob:p@ss@db/wh", "postgresql+psycopg://bob:***@db/wh"),  # "@" left unencoded
        ("mysql://a:b%40c@h/d", "mysql://a:***@h/d"),
        ("redis://:token42@h/0", "redis://:***@h/0"),
        ("https://h:5000/path", "https://h:5000/path"),  # a port is not a password
        ("sqlite:////tmp/x/warehouse.db", "sqlite:////tmp/x/warehouse.db"),
        ("postgresql://bob@db/wh", "postgresql://bob@db/wh"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_masks_urls_inside_text_and_known_values_anywhere() -> None:
    text = (
        f"API request to http://user:{PASSWORD}@127.0.0.1:9/api/2.0/mlflow failed; "
        f"'postgresql://bob:{PASSWORD}@db/x' and later the bare value {PASSWORD}, encoded p%40ss"
    )
    redacted = redact_text(text, secret_values(["postgresql://bob:p%40ss@db/x"], [PASSWORD]))
    assert PASSWORD not in redacted and "p%40ss" not in redacted
    assert redacted.count("***") == 4 and "127.0.0.1:9/api/2.0/mlflow" in redacted


def test_secret_values_take_passwords_in_both_forms_and_skip_trivial_ones() -> None:
    values = secret_values(["postgresql://bob:p%40ss@db/x", "http://u:ab@h", "sqlite:///a.db", None], ["tok123", ""])
    assert set(values) == {"p%40ss", "p@ss", "tok123"}


def test_split_credentials_gives_a_bare_uri_and_decoded_credentials() -> None:
    assert split_credentials("http://us%40r:p%40ss@127.0.0.1:5000/prefix") == (
        "http://127.0.0.1:5000/prefix", "us@r", "p@ss"
    )
    assert split_credentials("https://mlflow:5000") == ("https://mlflow:5000", None, None)


def emitted(record_logger: logging.Logger, handler_filter: logging.Filter | None, log: Callable[[], None]) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    if handler_filter is not None:
        handler.addFilter(handler_filter)
    record_logger.addHandler(handler)
    try:
        log()
    finally:
        record_logger.removeHandler(handler)
    return stream.getvalue()


def test_filter_masks_messages_arguments_and_tracebacks() -> None:
    log = logging.getLogger("tests.redaction.plain")
    log.propagate = False
    url = f"http://user:{PASSWORD}@127.0.0.1:9"

    def fail() -> None:
        try:
            raise RuntimeError(f"API request to {url}/api failed")
        except RuntimeError:
            log.exception("training failed against %s", url)

    unfiltered = emitted(log, None, fail)
    assert unfiltered.count(PASSWORD) == 2  # the message and the exception line
    filtered = emitted(log, RedactingFilter([PASSWORD]), fail)
    assert PASSWORD not in filtered
    assert "Traceback" in filtered and "RuntimeError: API request to http://user:***@127.0.0.1:9/api" in filtered


def test_filter_keeps_the_message_of_our_own_errors_and_drops_their_traceback() -> None:
    log = logging.getLogger("tests.redaction.ours")
    log.propagate = False

    def fail() -> None:
        try:
            raise StoreUnavailable("MLflow tracking server http://127.0.0.1:9 is unreachable")
        except StoreUnavailable as error:
            log.error("Task run failed with exception: %r", error, exc_info=True)

    output = emitted(log, RedactingFilter(), fail)
    assert "is unreachable" in output and "Traceback" not in output


def test_install_puts_one_filter_on_every_handler_and_updates_its_secrets() -> None:
    log = logging.getLogger("tests.redaction.installed")
    handler = logging.StreamHandler(io.StringIO())
    log.addHandler(handler)
    every_handler = [*logging.getLogger().handlers, handler]
    try:
        assert install_redaction(["first-secret"]) >= 1
        install_redaction(["second-secret"])
        for each in every_handler:
            ours = [f for f in each.filters if isinstance(f, RedactingFilter)]
            assert len(ours) == 1 and ours[0].secrets == ("second-secret",)
    finally:
        log.removeHandler(handler)
        for each in every_handler:
            for installed in [f for f in each.filters if isinstance(f, RedactingFilter)]:
                each.removeFilter(installed)
