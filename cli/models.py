"""``cltx models``: list the embedded models and materialise them in the cache."""

from __future__ import annotations

from typing import Annotated

import typer

from cltx.cli._ui import out, user_errors


def register(app: typer.Typer) -> None:
    @app.command("models")
    @user_errors
    def models(
        prepare: Annotated[bool, typer.Option("--prepare", help="Convert/cache the embedded models now.")] = False,
    ) -> None:
        """List the embedded offline models (usable by short name wherever a model is asked for)."""
        from rich.table import Table

        from cltx.models import EMBEDDED, prepared_path, resolve_model
        from cltx.paths import cache_root

        table = Table("name", "what", "path")
        table.columns[2].overflow = "fold"  # the path is what the user came for: never cut it to "…"
        for name, what in EMBEDDED.items():
            path = resolve_model(name) if prepare else (prepared_path(name) or "(run with --prepare)")
            table.add_row(name, what, str(path))
        out.print(table)
        out.print(f"cache: {cache_root()} (CLTX_CACHE moves it)")
