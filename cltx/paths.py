"""Where cltx keeps its cache (converted embedded models, reference log-probs, translation cache)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cltx cache root: ``$CLTX_CACHE`` if set, else ``$XDG_CACHE_HOME/cltx`` or ``~/.cache/cltx``."""
    env = os.environ.get("CLTX_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "cltx"
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_file(name: str) -> Path:
    """Path of a data file shipped inside the package (``cltx/data``)."""
    return Path(__file__).resolve().parent / "data" / name
