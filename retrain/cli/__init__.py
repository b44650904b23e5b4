"""The `retrain` command line: `retrain.cli.app` holds the app and what commands share; each module beside it
adds the commands about one thing. Importing this package registers them all."""

from retrain.cli import (  # noqa: F401 - registers commands
    data,
    decisions,
    demo,
    deploy,
    monitoring,
    release,
    serving,
    training,
    ui,
)
from retrain.cli.app import app, main

__all__ = ["app", "main"]
