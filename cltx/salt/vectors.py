"""Static word vectors in fastText's ``.vec`` text format, for SALT's similarity space.

The format: an optional header line ``<count> <dim>``, then one line per word: the word and
``dim`` numbers separated by single spaces. Only the vectors of words that the PLM's vocabulary
needs are kept, so a multi-gigabyte file streams through in one pass with little memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cltx.errors import CltxError

logger = logging.getLogger(__name__)


def _fields(line: str) -> list[str]:
    return line.rstrip("\r\n").rstrip(" ").split(" ")


def vec_header(path: str | Path) -> tuple[int | None, int]:
    """Read and check the start of a ``.vec`` file: ``(count or None, dim)``.

    Cheap (two lines), so the CLI calls it before loading any model. Raises :class:`CltxError` for
    a missing or empty file, a malformed header, or a first vector whose width differs from the
    header's.
    """
    p = Path(path)
    if not p.is_file():
        raise CltxError(f"vectors={str(path)!r}: no such file; fix: pass a fastText .vec text file")
    with p.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
        second = fh.readline()
    if not first.strip():
        raise CltxError(f"vectors={str(path)!r}: the file is empty; fix: pass a fastText .vec text file")
    head = _fields(first)
    count: int | None = None
    if len(head) == 2 and head[0].isdigit() and head[1].isdigit():
        count, dim = int(head[0]), int(head[1])
        if dim < 1:
            raise CltxError(f"vectors={str(path)!r}: header says dim {dim}; fix: a .vec header is '<count> <dim>'")
        if second.strip():
            width = len(_fields(second)) - 1
            if width != dim:
                tabs = " (its fields are separated by tabs: a .vec file uses single spaces)" if "\t" in second else ""
                raise CltxError(
                    f"vectors={str(path)!r}: the header says {dim} dimensions but the first vector has {width}{tabs}; "
                    "fix: pass a well-formed fastText .vec file (one word and <dim> numbers a line)"
                )
    else:
        dim = len(head) - 1
        if dim < 1:
            raise CltxError(f"vectors={str(path)!r}: the first line has no numbers; fix: pass a fastText .vec file")
    return count, dim


def load_vectors(path: str | Path, words: Iterable[str]) -> tuple[dict[str, np.ndarray], int]:
    """Stream a ``.vec`` file and keep the vectors of ``words``.

    Args:
        path: the ``.vec`` file.
        words: the words wanted (others are skipped without parsing their numbers).

    Returns:
        ``({word: float32 vector (dim,)}, dim)``. The first occurrence of a word wins.

    Raises:
        CltxError: any line whose width differs from the file's (the header's, or the first line's); a
            wanted word's vector with a non-number, NaN or infinity (beyond float32's range included).
    """
    count, dim = vec_header(path)
    wanted = set(words)
    found: dict[str, np.ndarray] = {}
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        if count is not None:
            fh.readline()
        for lineno, line in enumerate(fh, start=2 if count is not None else 1):
            fields = _fields(line)
            if len(fields) == 1 and not fields[0]:
                continue
            if len(fields) - 1 != dim:
                raise CltxError(
                    f"vectors={str(path)!r}: line {lineno} has {len(fields) - 1} numbers, expected {dim}; "
                    "fix: every vector of a .vec file must have the same width"
                )
            word = fields[0]
            if word in wanted and word not in found:
                try:
                    with np.errstate(over="ignore"):  # beyond float32's range → inf, rejected below
                        v = np.asarray(fields[1:], dtype=np.float32)
                except ValueError as e:
                    raise CltxError(
                        f"vectors={str(path)!r}: line {lineno} has a non-number ({e}); fix: pass a fastText .vec file"
                    ) from e
                # One NaN row would poison every cosine it meets (NaN sorts above every similarity).
                if not np.isfinite(v).all():
                    raise CltxError(
                        f"vectors={str(path)!r}: line {lineno} ({word!r}) holds a NaN or infinite number; "
                        "fix: drop or repair that line (every vector must be finite)"
                    )
                found[word] = v
    logger.info("vectors: %d of %d wanted words found in %s (dim %d)", len(found), len(wanted), path, dim)
    return found, dim


def token_word(text: str) -> str:
    """The word a token's surface is looked up by (whitespace stripped)."""
    return text.strip()


def lookup(found: dict[str, np.ndarray], text: str) -> np.ndarray | None:
    """The vector of a token's surface: exact word first, then its lower-case form."""
    w = token_word(text)
    if not w:
        return None
    v = found.get(w)
    if v is None and w.lower() != w:
        v = found.get(w.lower())
    return v


def wanted_words(texts: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for t in texts:
        w = token_word(t)
        if w:
            out.add(w)
            out.add(w.lower())
    return out
