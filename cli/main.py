"""The ``cltx`` command. Commands live one module each (cli/mt.py, cli/salt.py, …) and register
themselves; heavy imports happen inside the commands so ``cltx --help`` is instant."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from cltx._version import __version__

app = typer.Typer(
    name="cltx",
    help="Cross-lingual transfer for LLMs: translate multi-field data (mt), transfer a vocabulary (salt), "
    "train with Cross-Lingual Optimization (clo).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown: docstrings wrapped at the source's line length render as flowing paragraphs.
    rich_markup_mode="markdown",
)

# Each module defines ``register(app)``. A module that does not exist yet is skipped.
COMMAND_MODULES = ("mt", "salt", "clo", "pretrain", "evaluate", "run", "models")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cltx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """cltx: cross-lingual transfer toolkit."""


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"cltx.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"cltx.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
