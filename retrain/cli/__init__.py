"""The `retrain` command line: `retrain.cli.app` holds the app and what commands share; each module beside it
adds the commands about one thing. Importing this package registers them all."""

from retrain.cli import data, decisions, demo, monitoring, release, serving, training, ui  # noqa: F401 - registers commands
from retrain.cli.app import app, main

__all__ = ["app", "main"]
