"""Passwords out of everything we print, log or store: one redaction for URLs and for any text.

A secret reaches text by two roads: a URL with credentials (`postgresql://bob:pw@db/x`,
`http://user:pw@mlflow:5000`) quoted in an exception or a log line, and a known secret value quoted on
its own (percent-encoded in a URL, or from `MLFLOW_TRACKING_PASSWORD`). `redact_text` removes both.
`RedactingFilter` applies it to every record a logging handler emits: Prefect's console handler
(stderr) and its API handler, which is how run logs reach the Prefect database.

Redacting at the handlers is the second line: the first is that no secret is put where a library
quotes it (see `retrain.stores.connect_mlflow`, which hands MLflow its credentials through MLflow's own
environment variables instead of the URI it prints in every error).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from retrain.errors import RetrainError

MASK = "***"
SHORTEST_SECRET = 3  # a one- or two-character "secret" would mask ordinary text and protects nothing

# scheme://[user]:password@host — the password runs to the last "@" before a space, slash or quote, so an
# unencoded "@" inside a password is still covered.
URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<password>[^\s/'\"]*)@"
)


def redact_url(url: str) -> str:
    """Hide the password of a URL (`postgresql://bob:***@db/x`); anything without one passes unchanged."""
    return URL_CREDENTIALS.sub(lambda match: f"{match['head']}{MASK}@", url)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide every URL password in `text` and every occurrence of a known secret value.

    Args:
        text: Any text: a log message, an exception message, a traceback, a JSON document.
        secrets: Values known to be secret (see `secret_values`); masked wherever they appear.
    """
    redacted = redact_url(text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= SHORTEST_SECRET:
            redacted = redacted.replace(secret, MASK)
    return redacted


def secret_values(urls: Iterable[str | None], extra: Iterable[str | None] = ()) -> tuple[str, ...]:
    """The passwords of `urls`, as written and percent-decoded, plus `extra` values: what to mask.

    Both forms are masked because a password with special characters is percent-encoded in its URL
    (`p%40ss`) while a driver's message may quote it decoded (`p@ss`).
    """
    values: set[str] = set()
    for url in urls:
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:  # not a URL at all: nothing to take from it
            continue
        if password:
            values.update({password, unquote(password), quote(unquote(password), safe="")})
    values.update(value for value in extra if value)
    return tuple(sorted(value for value in values if len(value) >= SHORTEST_SECRET))


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`http://user:pw@host/x` → (`http://host/x`, user, pw), decoded; a URL without them comes back whole."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = parts._replace(netloc=host).geturl()
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return bare, username, password


class RedactingFilter(logging.Filter):
    """Rewrites a log record before a handler emits it: no password in its message or traceback.

    The traceback of one of our own errors (`RetrainError`) is dropped as well: its message already says
    what failed and what to do, and an outage (`StoreUnavailable`) should read as one line, not as a bug.
    Any other exception keeps its traceback, redacted.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let the handler report it as it would
            return True
        clean = redact_text(message, self.secrets)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if isinstance(error, RetrainError):
                record.exc_text = None
            else:
                record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True


def install_redaction(secrets: Iterable[str] = ()) -> int:
    """Put a `RedactingFilter` on every handler of every logger configured so far; returns how many.

    Filters on a handler (not a logger) see records propagated from child loggers too, which is where
    Prefect's run loggers send theirs. Idempotent: a handler that already has one gets the new secrets.
    Call it again after importing a library that adds handlers of its own.
    """
    loggers = [logging.getLogger(), *(
        logger for logger in list(logging.Logger.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    )]
    secrets = tuple(secrets)
    handlers = {id(handler): handler for logger in loggers for handler in logger.handlers}
    for handler in handlers.values():
        existing = [f for f in handler.filters if isinstance(f, RedactingFilter)]
        if existing:
            for found in existing:
                found.secrets = secrets
        else:
            handler.addFilter(RedactingFilter(secrets))
    return len(handlers)
