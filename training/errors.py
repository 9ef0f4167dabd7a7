"""Errors that are the user's to fix: the CLI prints them on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the command line, the environment or the data; ``str(err)`` says what to fix."""
