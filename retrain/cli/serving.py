"""The prediction server: serve."""

from __future__ import annotations

from typing import Annotated

import typer
import typer.core

from retrain.cli.app import (
    ConfigOption,
    JsonOption,
    app,
    finish,
)
from retrain.config import load_model_config
from retrain.settings import get_settings


@app.command()
def serve(
    config: ConfigOption,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: setting serve_host, 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: setting serve_port, 8000).", min=1, max=65535)
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request line (costs throughput).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Serve the model's champion (and canary) over HTTP until stopped (SIGTERM or Ctrl-C flushes the
    prediction log first). Not a Prefect flow: run it under a process manager or in a container."""
    import logging

    model = load_model_config(config)
    settings = get_settings()
    import uvicorn

    from retrain.errors import ExitCode
    from retrain.redaction import install_redaction
    from serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_redaction(settings.known_secrets())
    bind_host = host or settings.serve_host
    bind_port = port or settings.serve_port
    typer.echo(f"serving '{model.name}' on http://{bind_host}:{bind_port} (warehouse "
               f"{settings.describe()['warehouse']}, registry {settings.describe()['mlflow']})", err=True)
    server = stoppable_server_class()(uvicorn.Config(create_app(model, settings), host=bind_host, port=bind_port,
                                            access_log=access_log, log_level="info", timeout_graceful_shutdown=30))
    server.run()
    if not server.started:  # the port was taken, or the app failed to start: uvicorn logged why
        raise typer.Exit(ExitCode.FAILURE)
    finish({"model": model.name, "stopped": True}, as_json, lambda r: f"stopped serving '{r['model']}'")


def stoppable_server_class() -> type:
    """uvicorn's Server, except that a SIGTERM or Ctrl-C that stopped it is not raised again once it has stopped.

    uvicorn re-raises the signal after its graceful shutdown, so the process died of it (exit 143 on SIGTERM)
    before printing its outcome. Stopping on request, after the journal is shipped, is the normal end: exit 0.
    """
    import signal

    import uvicorn

    class Stoppable(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop now, without waiting for requests in flight
            else:
                self.should_exit = True

    return Stoppable


