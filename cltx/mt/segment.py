"""Splitting text that is too long for the engine, without losing a character.

:func:`pack` cuts a text into pieces whose concatenation is exactly the text, each within the
engine's input limit: at sentence ends (and line breaks) first, then at clause punctuation, then at
spaces, and only for a run with no space at all (a long URL, unspaced scripts) between characters.
Nothing is ever truncated. :func:`translate_pieces` sends the stripped pieces to the engine and
glues the translations back with the original whitespace between them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Split *after* these (the whitespace that follows stays with the left unit).
_SENTENCE_END = re.compile(r"(?<=[.!?。！？…;；])[\"'”’)\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,:，、：])\s+")
_SPACE = re.compile(r"\s+")


def _cut(text: str, pattern: re.Pattern) -> list[str]:
    """Units of ``text`` ending after each match of ``pattern`` (concatenation == text)."""
    out, start = [], 0
    for m in pattern.finditer(text):
        if m.end() > start and m.end() < len(text):
            out.append(text[start : m.end()])
            start = m.end()
    out.append(text[start:])
    return [u for u in out if u]


def _cut_before(text: str, pattern: re.Pattern) -> list[str]:
    """Units of ``text`` starting at each match of ``pattern`` (concatenation == text)."""
    cuts = [m.start() for m in pattern.finditer(text) if m.start() > 0]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _fits(unit: str, limit: int, length: Callable[[str], int]) -> bool:
    return length(unit.strip()) <= limit


def _units(text: str, limit: int, length: Callable[[str], int], before: re.Pattern | None) -> list[str]:
    """Smallest units, each fitting ``limit`` where the text allows it at all."""
    units = _cut_before(text, before) if before is not None else [text]
    for pattern in (_SENTENCE_END, _CLAUSE_END, _SPACE):
        nxt = []
        for u in units:
            nxt.extend([u] if _fits(u, limit, length) else _cut(u, pattern))
        units = nxt
    out = []
    for u in units:
        if _fits(u, limit, length):
            out.append(u)
            continue
        # No space left to cut at: cut between characters (binary search for the longest prefix).
        rest = u
        while rest and not _fits(rest, limit, length):
            lo, hi = 1, len(rest)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _fits(rest[:mid], limit, length):
                    lo = mid
                else:
                    hi = mid - 1
            out.append(rest[:lo])
            rest = rest[lo:]
        if rest:
            out.append(rest)
    return out


def pack(
    text: str, limit: int | None, length: Callable[[str], int] = len, *, before: re.Pattern | None = None
) -> list[str]:
    """Cut ``text`` into as few pieces as possible, each within ``limit`` (``"".join(pieces) == text``).

    Args:
        text: any text.
        limit: the engine's input limit in ``length`` units; ``None`` means no limit (one piece).
        length: the engine's measure of a text (characters, or tokens of its tokenizer).
        before: optional pattern; a cut is also allowed right before each of its matches (used to
            keep an Indicator Token at the start of a piece).
    """
    if limit is None or _fits(text, limit, length):
        return [text]
    pieces: list[str] = []
    cur = ""
    for u in _units(text, limit, length, before):
        if cur and not _fits(cur + u, limit, length):
            pieces.append(cur)
            cur = u
        else:
            cur += u
    if cur:
        pieces.append(cur)
    return pieces


def strip_parts(text: str) -> tuple[str, str, str]:
    """``(leading whitespace, core, trailing whitespace)`` of ``text``."""
    core = text.strip()
    if not core:
        return text, "", ""
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return lead, core, trail


def translate_pieces(pieces: list[str], translated_cores: list[str]) -> str:
    """Glue translations of the pieces' non-empty cores back with the pieces' own whitespace."""
    out, k = [], 0
    for p in pieces:
        lead, core, trail = strip_parts(p)
        if core:
            out.append(lead + translated_cores[k] + trail)
            k += 1
        else:
            out.append(p)
    return "".join(out)


def cores(pieces: list[str]) -> list[str]:
    """The non-empty stripped cores of ``pieces`` (what the engine is sent)."""
    return [c for c in (p.strip() for p in pieces) if c]
