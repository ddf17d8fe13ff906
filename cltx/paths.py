"""Where cltx keeps its cache (converted embedded models, reference log-probs, translation cache)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_env() -> str:
    """Which setting chose the cache folder, as ``NAME='value'`` (for error messages)."""
    for name in ("CLTX_CACHE", "XDG_CACHE_HOME"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]!r}"
    return f"the default cache folder {str(Path.home() / '.cache' / 'cltx')!r}"


def cache_root() -> Path:
    """The cache folder :func:`cache_dir` uses, without creating it."""
    env = os.environ.get("CLTX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cltx"


def cache_dir() -> Path:
    """The cltx cache root: ``$CLTX_CACHE`` if set, else ``$XDG_CACHE_HOME/cltx`` or ``~/.cache/cltx``.

    Raises:
        CltxError: the folder does not exist and cannot be created (a path through a file, a
            read-only file system, no permission).
    """
    from cltx.errors import CltxError

    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CltxError(
            f"{cache_env()}: cannot create the cache folder {str(root)!r} ({type(e).__name__}: {e.strerror or e}); "
            "fix: set CLTX_CACHE to a writable folder"
        ) from e
    if not root.is_dir():
        raise CltxError(f"{cache_env()}: {str(root)!r} is a file, not a folder; fix: set CLTX_CACHE to a folder")
    return root


def data_file(name: str) -> Path:
    """Path of a data file shipped inside the package (``cltx/data``)."""
    return Path(__file__).resolve().parent / "data" / name
