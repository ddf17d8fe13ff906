"""User-facing errors.

Every error raised for bad input at a public boundary is a :class:`CltxError` whose message names
the argument, the value received and the fix. The CLI turns it into one red line and exit code 1.
"""

from __future__ import annotations


class CltxError(ValueError):
    """A user mistake (bad argument, missing file, malformed data): reported without a traceback."""


def bad_arg(name: str, value: object, fix: str) -> CltxError:
    """Build the house-style error: ``name=value`` is wrong, and what to do instead."""
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return CltxError(f"{name}={shown}: {fix}")
