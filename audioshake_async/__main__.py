"""``python -m audioshake_async`` runs the command-line interface."""

from .cli import entry

entry()
