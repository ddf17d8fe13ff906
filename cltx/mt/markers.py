"""Indicator Tokens (ITs): how a record's fields are joined into one sequence and split back.

A joint sequence is ``CS ␠ IT(1) ␠ field₁ ␠ IT(2) ␠ field₂ …`` — the Catalyst Statement, then each
non-empty field preceded by its numbered marker. After translation the markers are found again
with a *tolerant* parser (the MT system may add or drop spaces around them, or turn ASCII brackets
into full-width ones), checked (every marker exactly once, in order, no empty field) and the text
between markers becomes the translated fields; whatever precedes the first marker is the
translated CS and is dropped.

The IT strings were not published with the paper. Measured on the embedded offline en→pt engine:
bracketed numbers ``[1]`` survive, ``(1)`` and ``[[1]]`` mostly do, while ``###``, ``§1``, ``@1@``
and XML-like tags are dropped or mangled. Styles are therefore an ordered list of candidates; a
record whose own text (or CS) already contains a style's markers uses the next candidate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Brackets the engine may substitute for ASCII ones (full-width, CJK lenticular, white square).
_OPEN_SQ = r"[\[［【〚「]"
_CLOSE_SQ = r"[\]］】〛」]"
_OPEN_PAR = r"[(（]"
_CLOSE_PAR = r"[)）]"


class DecompositionError(ValueError):
    """The translated joint sequence could not be split back into its fields."""


@dataclass(frozen=True)
class ITStyle:
    """One Indicator-Token style.

    Attributes:
        name: short id recorded in ``_mt.it_style``.
        template: how marker ``i`` is written into the source (``"[{i}]"``).
        pattern: regex matching the marker in a translation, tolerant of spacing and bracket
            variants; group ``n`` is the number.
    """

    name: str
    template: str
    pattern: str

    def __post_init__(self) -> None:
        if "{i}" not in self.template:
            raise ValueError(f"ITStyle.template={self.template!r}: must contain '{{i}}'")
        object.__setattr__(self, "_regex", re.compile(self.pattern))
        if "n" not in self.regex.groupindex:
            raise ValueError(f"ITStyle.pattern={self.pattern!r}: needs a named group (?P<n>...)")
        if [int(m.group("n")) for m in self.regex.finditer(self.marker(7))] != [7]:
            raise ValueError(f"ITStyle {self.name!r}: its pattern does not match its own template")

    @property
    def regex(self) -> re.Pattern:
        return self._regex  # type: ignore[attr-defined]

    def marker(self, i: int) -> str:
        return self.template.format(i=i)

    def occurs_in(self, text: str) -> bool:
        """Whether ``text`` already contains something this style's parser would read as a marker."""
        return self.regex.search(text) is not None


BRACKET = ITStyle("bracket", "[{i}]", _OPEN_SQ + r"\s*(?P<n>\d{1,3})\s*" + _CLOSE_SQ)
DOUBLE_BRACKET = ITStyle(
    "double_bracket", "[[{i}]]", _OPEN_SQ + r"\s*" + _OPEN_SQ + r"\s*(?P<n>\d{1,3})\s*" + _CLOSE_SQ + r"\s*" + _CLOSE_SQ
)
PAREN = ITStyle("paren", "({i})", _OPEN_PAR + r"\s*(?P<n>\d{1,3})\s*" + _CLOSE_PAR)
PIPE = ITStyle("pipe", "|{i}|", r"[|｜]\s*(?P<n>\d{1,3})\s*[|｜]")

#: Default candidates, best first (see the module docstring for how they were ranked).
DEFAULT_STYLES: tuple[ITStyle, ...] = (BRACKET, PAREN, DOUBLE_BRACKET, PIPE)
STYLES_BY_NAME = {s.name: s for s in DEFAULT_STYLES}


def parse_styles(spec: str) -> tuple[ITStyle, ...]:
    """``"bracket,paren"`` → styles, in that order (names from :data:`STYLES_BY_NAME`)."""
    from cltx.errors import bad_arg

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise bad_arg("--it-styles", spec, f"give one or more of {', '.join(STYLES_BY_NAME)} separated by commas")
    out = []
    for n in names:
        if n not in STYLES_BY_NAME:
            raise bad_arg("--it-styles", spec, f"unknown style {n!r}; choose from {', '.join(STYLES_BY_NAME)}")
        out.append(STYLES_BY_NAME[n])
    return tuple(out)


def choose_style(texts: list[str], styles: tuple[ITStyle, ...] = DEFAULT_STYLES) -> ITStyle | None:
    """First style none of ``texts`` already contains (``None`` if every candidate is taken)."""
    for style in styles:
        if not any(style.occurs_in(t) for t in texts):
            return style
    return None


def join(cores: list[str], style: ITStyle, catalyst: str | None) -> str:
    """The joint sequence for non-empty, whitespace-stripped field texts ``cores``.

    After the last field comes a closing marker ``IT(n+1)``: without it the engine tends to drop
    a short last field that has no final punctuation (a QA answer). On the sample data with the
    embedded engine, joint decompositions rose from 73 % to 92 % with the closing marker.
    """
    parts = [catalyst] if catalyst else []
    for i, core in enumerate(cores, start=1):
        parts.append(style.marker(i))
        parts.append(core)
    parts.append(style.marker(len(cores) + 1))
    return " ".join(parts)


_WORDY = re.compile(r"\w")


def split(translation: str, n: int, style: ITStyle) -> list[str]:
    """Split a translated joint sequence back into ``n`` field texts (stripped).

    Expects markers ``1 … n+1`` exactly once each, in order (the last one closes field ``n``); only
    punctuation or spaces may follow the closing marker (it is given back to the last field).

    Raises:
        DecompositionError: a marker is missing, repeated or out of order, or a field is empty.
    """
    found = list(style.regex.finditer(translation))
    numbers = [int(m.group("n")) for m in found]
    expected = list(range(1, n + 2))
    if numbers != expected:
        raise DecompositionError(f"markers {numbers} found, expected {expected}")
    tail = translation[found[-1].end() :]
    if _WORDY.search(tail):
        raise DecompositionError(f"text after the closing marker: {tail.strip()[:40]!r}")
    out = []
    for k, m in enumerate(found[:-1]):
        piece = translation[m.end() : found[k + 1].start()].strip()
        if not piece:
            raise DecompositionError(f"field {k + 1} is empty after translation")
        out.append(piece)
    # punctuation the engine moved past the closing marker belongs to the last field
    out[-1] += tail.strip()
    return out
