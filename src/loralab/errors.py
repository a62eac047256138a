"""The one error type that means "the user's mistake", below every stage.

A stage raises `UserError` (or a subclass) for anything the user can fix: a missing
file, bad YAML, an unknown model or domain, an out-of-range value, a bad adapter path,
a full disk. The CLI's error boundary prints its message as one line and exits 2;
anything else is an internal bug and keeps its traceback (shown with `--debug`).
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: one clear line, exit status 2."""
