"""User-facing errors.

Every error raised for bad input at a public boundary is a :class:`CltxError` whose message names
the argument, the value received and the fix. The CLI turns it into one red line and exit code 1.
"""

from __future__ import annotations


class CltxError(ValueError):
    """A user mistake (bad argument, missing file, malformed data): reported without a traceback."""


class OptionError(CltxError, TypeError):
    """A keyword that is not an option: a :class:`CltxError` for the CLI, and still the
    ``TypeError`` that Python raises for an unexpected keyword argument."""


def bad_arg(name: str, value: object, fix: str) -> CltxError:
    """Build the house-style error: ``name=value`` is wrong, and what to do instead."""
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return CltxError(f"{name}={shown}: {fix}")


def check_options(options: dict, known, *, where: str) -> None:
    """Raise the house-style error for the first key of ``options`` that is not in ``known``.

    For ``**options`` that are passed on to a config class: a misspelt keyword was a bare
    ``TypeError: __init__() got an unexpected keyword argument`` from deep inside transformers.
    """
    import difflib

    known = sorted(set(known))
    for name, value in options.items():
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"see help({where}) for the options"
        raise OptionError(str(bad_arg(name, value, f"not an option of {where}; fix: {hint}")))
