"""cltx.cli: the Typer command line (the only part of cltx that prints or draws progress)."""
