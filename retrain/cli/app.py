"""The `retrain` command line: the app, and what every command shares.

Every command takes `--json` and then prints exactly one JSON object on stdout, whatever happens
(an outcome, a refusal, a bad option or a failure); progress and logs go to stderr, so
`retrain train --json | jq` works. Exit codes are those of `retrain.errors.ExitCode`. Prefect, MLflow
and Optuna are imported inside the commands, after `prepare_environment` has pointed them at this
project's data folder, so commands that run no flow start no Prefect server.

The commands live beside this module by what they act on (`data`, `training`, `serving`, `monitoring`,
`release`); the CLI is the one room allowed to import every other room, and it does so inside commands only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from retrain.clock import parse_instant
from retrain.errors import ConfigError, ExitCode, RetrainError
from retrain.jsonable import to_jsonable
from retrain.redaction import redact_text
from retrain.settings import get_settings


class RetrainCommands(typer.core.TyperGroup):
    """Every command's errors end the same way: one line (and one JSON object under `--json`) and the
    exit code of the error's kind; only a real fault (not one of ours) also prints its traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        arguments = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in arguments
        try:
            code = super().main(
                args=arguments, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
        except typer.TyperException as error:  # a bad option or argument: click's usage text, or JSON
            code = report_error(
                type(error).__name__, error.format_message(), ExitCode.USAGE, as_json, getattr(error, "show", None)
            )
        except typer.Abort:
            code = report_error("Aborted", "aborted", ExitCode.FAILURE, as_json)
        except RetrainError as error:
            code = report_error(type(error).__name__, str(error), error.exit_code, as_json)
        except Exception as error:  # noqa: BLE001 - a real fault: its traceback goes to stderr, then the JSON
            sys.stderr.write(redact_text("".join(traceback.format_exception(error)), known_secrets()))
            code = report_error(type(error).__name__, str(error), ExitCode.FAILURE, as_json)
        code = int(code or 0)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=RetrainCommands, add_completion=False, no_args_is_help=True, help="Continuous training for tabular models."
)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Model config YAML.", exists=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def report_error(
    kind: str, message: str, code: ExitCode, as_json: bool, show: Callable[[], None] | None = None
) -> ExitCode:
    """One line on stderr (or click's own usage text) and, under `--json`, one JSON object on stdout.

    The message is redacted here too: an error from a library may quote a URL with its password.
    """
    message = redact_text(message, known_secrets())
    if as_json:
        sys.stdout.write(json.dumps({"error": kind, "message": message, "exit_code": int(code)}) + "\n")
        sys.stdout.flush()
    if show is not None:
        show()
    else:
        typer.echo(f"error: {message}", err=True)
    return code


def known_secrets() -> tuple[str, ...]:
    """The secrets to mask in what we print; none when the settings themselves cannot be read."""
    try:
        return get_settings().known_secrets()
    except RetrainError:
        return ()


def check_stores_first(*stores: str) -> None:
    """Check the stores a command needs before it starts any work (or Prefect's temporary server), then
    mask passwords in every log line of this process from here on.

    An outage then ends the command in about a second with `StoreUnavailable` (exit 3) naming the store,
    not after the tuning it would otherwise have done first. The flows check again for runs that do not
    come through this CLI (deployments on a worker).
    """
    from retrain.redaction import install_redaction
    from retrain.stores import check_stores

    settings = get_settings()
    install_redaction(settings.known_secrets())
    check_stores(settings, stores)


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Flows of this command run against `PREFECT_API_URL`, or a temporary server that ends with the command."""
    from retrain.prefect_server import temporary_prefect_server

    with temporary_prefect_server() as url:
        if url:
            typer.echo(
                f"temporary Prefect server {url} (ends with this command; set PREFECT_API_URL to keep runs "
                "on a server of your own)",
                err=True,
            )
            watch_for_crashed_runs()
        yield


def watch_for_crashed_runs() -> None:
    """Put the crashed-run automation on the temporary server's database (once; later calls update it).

    A command killed mid-run leaves its flow run Running in `PREFECT_HOME`'s database; with the automation
    there, a later command's server marks it Crashed once its heartbeats have been missing long enough.
    """
    from deployments.operations import apply_automation, crash_automation, heartbeat_seconds, retrain_flow_names

    try:
        apply_automation(crash_automation(retrain_flow_names(), heartbeat_seconds()))
    except ConfigError:  # heartbeats are off: no run could be told apart from a dead one
        return
    except Exception as error:  # noqa: BLE001 - housekeeping for earlier runs must not fail this one
        typer.echo(f"warning: crashed-run automation not applied to the temporary server: {error}", err=True)


def prepare_environment() -> None:
    """Point Prefect at a home under ours and keep it offline, before anything imports Prefect."""
    home = get_settings().resolved_home
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars on stderr for every model load
    # Heartbeats every 30 s (Prefect's default is 180): a run whose command was killed is marked Crashed by
    # the crashed-run automation about 90 s later instead of 9 minutes later.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Anything a library prints from Python while a command runs goes to stderr; stdout stays for the result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def protected_stdout() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the whole process, keeping `sys.stdout` on the real stdout.

    LightGBM's C++ code (and any subprocess we start) writes to descriptor 1 directly, below Python's
    `sys.stdout`, so a Python-level redirect cannot stop "Met negative value in categorical features"
    from landing in the middle of `--json` output. After this, only what we write to `sys.stdout`
    reaches stdout. Where stdout is not a real file (a test runner's buffer) there is nothing to do.
    """
    try:
        descriptor = sys.stdout.fileno()
        sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(descriptor)
    os.dup2(sys.stderr.fileno(), descriptor)
    original, sys.stdout = sys.stdout, open(saved, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, descriptor)
        sys.stdout.close()
        sys.stdout = original


def finish(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str], code: int = 0) -> None:
    """Print the outcome once, as JSON or as text, and exit with `code`."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), default=str) + "\n")
    else:
        typer.echo(render(result))
    sys.stdout.flush()
    raise typer.Exit(code)



def parse_instant_option(value: str | None, option: str) -> datetime | None:
    """An instant option (`--as-of`, `--start`, `--end`): ISO 8601, UTC unless it carries an offset."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None



def main() -> None:
    """The console script: stdout is guarded for the whole command, then the group handles errors."""
    try:
        with protected_stdout():
            code = app(standalone_mode=False)
    except BrokenPipeError:
        # Whoever read stdout has gone (`retrain --help | head`): nothing more to say, and no traceback about it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(int(code or 0))
