"""Rendering helpers shared by the commands: rich progress, error handling, tables."""

from __future__ import annotations

import functools
import logging
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
out = Console()


def fail(message: str) -> None:
    """One red line on stderr, exit code 1 (user mistakes: no traceback)."""
    from rich.text import Text

    # The message is plain text: brackets in it ("[clo]", "[1]") must not be read as rich markup.
    console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler's pre-emption) turned into an interrupt, so that it ends
    like Ctrl-C: with the hint how to continue instead of a silent death."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - the signal handler's signature
    raise _Terminated()


def user_errors(fn=None, *, on_interrupt: str = "rerun the same command"):
    """Decorator for commands: CltxError (and missing files) become one red line and exit 1; Ctrl-C and SIGTERM
    end with ``on_interrupt`` (how this command continues: ``--resume``, or a plain rerun) and exit 130 / 143.

    Use as ``@user_errors`` or ``@user_errors(on_interrupt="rerun with --resume to continue")``.
    """
    if fn is None:
        return functools.partial(user_errors, on_interrupt=on_interrupt)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        from cltx.errors import CltxError

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except CltxError as e:
            fail(str(e))
        except FileNotFoundError as e:
            fail(f"{e.filename or e}: no such file; fix: check the path")
        except KeyboardInterrupt as e:
            what = "terminated" if isinstance(e, _Terminated) else "interrupted"
            console.print(f"[yellow]{what}[/]: partial output kept; {on_interrupt}")
            raise typer.Exit(code=143 if isinstance(e, _Terminated) else 130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


class RichProgress:
    """A :class:`cltx.progress.Progress` sink drawn with rich (bars with ETA)."""

    def __init__(self, *, disable: bool = False) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            disable=disable,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def start(self, task: str, total: int | None = None, description: str | None = None) -> None:
        if task in self._tasks:
            self._progress.reset(self._tasks[task], total=total, description=description or task)
        else:
            self._tasks[task] = self._progress.add_task(description or task, total=total, info="")

    def advance(self, task: str, n: int = 1, **fields: Any) -> None:
        if task not in self._tasks:
            self.start(task)
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        kw = {"info": info} if fields else {}
        self._progress.update(self._tasks[task], advance=n, **kw)

    def finish(self, task: str) -> None:
        if task in self._tasks:
            t = self._tasks[task]
            total = self._progress.tasks[t].total if t < len(self._progress.tasks) else None
            if total is not None:
                self._progress.update(t, completed=total)

    def message(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)
