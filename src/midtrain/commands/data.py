"""CLI commands (placeholder until the module lands)."""

from __future__ import annotations


def register(app, groups) -> None:
    """Add this module's commands to the app (see midtrain/cli.py)."""
