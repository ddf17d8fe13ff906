"""Quality flags for machine-translated fields.

Each translated field is checked against its source; a check that fires returns a flag name and a
small detail dict, recorded in the record's ``_mt.flags`` and counted in the run report:

* ``wrong_language`` — py3langid (normalised probabilities, 140 languages) gives the target
  language less than ``max_tgt_prob`` while another language has at least ``min_lang_conf``.
  Proper nouns (capitalised words not starting a sentence), digits and protected spans are
  removed first, and texts with fewer than ``min_lang_letters`` letters left are not judged: names
  and numbers are what fools a character-n-gram identifier. On the sample data (fields long
  enough to judge) this fires on 0 of 235 of the embedded engine's Portuguese outputs and on 224
  of 232 English sources.
* ``untranslated`` — the output equals or nearly equals the source (word-level similarity ≥
  ``untranslated_similarity`` after case folding and punctuation removal), for sources with at
  least ``min_untranslated_words`` words (names, numbers and code are legitimately copied).
* ``repetition`` — a consecutive n-gram loop (``n ≤ max_ngram``) repeated at least
  ``min_repeats`` times (``min_repeats_unigram`` for one token) and more often than in the
  source: the usual hallucination signature of autoregressive MT.
* ``length_ratio`` — output/source character ratio outside the language pair's normal range
  (:func:`length_bounds`), for sources of at least ``min_ratio_chars`` characters. en→pt was
  calibrated on the embedded engine over the sample data: ratios 0.63–1.71 (5–95 %: 0.76–1.31),
  bounds (0.5, 2.0).
* ``leftover_marker`` — more Indicator-Token-like markers (``[1]``, ``(2)``, ``|3|`` … the IT
  styles of :mod:`cltx.mt.markers`) in the output than in the source.
* ``leftover_catalyst`` — the Catalyst Statement (its English text, or its translation when the
  caller knows it) appears in the field.
* ``dropped_symbols`` — content an engine cannot translate and must carry over is missing from the
  output: non-ASCII symbols (emoji, ``©``, ``→``, ``≤``, ``€``, ``½``, ``²``, ``§``, ``‰`` … what
  :func:`cltx.mt.protect.is_carried_symbol` names, not ``°``; counted per character), the ASCII characters
  ``^ \\ { } ~ < #`` no embedded-model vocabulary has (``mc^2`` came back as ``mc. 2``), and words in a script
  other than the source's and the target's (Greek ``λ``, Cyrillic ``Привет``, CJK ``東京``, counted per
  word: the words the protection's ``script`` span kind covers, so none when a language is unknown).
  The embedded bergamot engine drops them silently (``'The formula uses α and β.'`` →
  ``'A fórmula utiliza o s.'``).

The functions are pure; :class:`QualitySummary` counts flags over a run.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cltx.errors import bad_arg
from cltx.mt.protect import ASCII_CARRIED, carry_patterns, is_carried_symbol

__all__ = [
    "FLAG_NAMES",
    "ON_FLAG",
    "QualityGate",
    "base_lang",
    "language_probs",
    "summarize",
    "QualityConfig",
    "QualitySummary",
    "check_field",
    "check_record",
    "flag_count",
    "length_bounds",
    "max_loop",
]

FLAG_NAMES = (
    "wrong_language",
    "untranslated",
    "repetition",
    "length_ratio",
    "leftover_marker",
    "leftover_catalyst",
    "dropped_symbols",
)

# Typical character-length ratio of a text in language X to the same text in English. Rough
# values from parallel corpora; en→pt is our own measurement (median 1.04 on the sample data with
# the embedded engine). Bounds are a wide band around the pair's ratio (see length_bounds).
_CHAR_RATIO_VS_EN: dict[str, float] = {
    "en": 1.0, "pt": 1.05, "es": 1.08, "fr": 1.15, "it": 1.1, "de": 1.15, "nl": 1.1, "ca": 1.08,
    "gl": 1.05, "ro": 1.1, "pl": 1.05, "cs": 0.98, "sv": 1.0, "da": 1.0, "fi": 1.05, "hu": 1.1,
    "ru": 1.08, "uk": 1.05, "el": 1.15, "tr": 1.0, "id": 1.15, "vi": 1.1, "sw": 1.1, "yo": 1.1,
    "ar": 0.9, "he": 0.8, "fa": 0.95, "hi": 1.0, "bn": 1.0, "ta": 1.2, "th": 0.95,
    "zh": 0.3, "ja": 0.4, "ko": 0.45,
}  # fmt: skip
# Measured pairs (lo, hi): used as they are.
_MEASURED_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {("en", "pt"): (0.5, 2.0)}
_SPREAD_LO, _SPREAD_HI = 0.48, 1.9  # (0.5, 2.0) around en→pt's 1.05
_UNKNOWN_BOUNDS = (0.2, 5.0)

# Languages written without spaces: n-gram loops are looked for over characters.
_NO_SPACE = {"zh", "ja", "th", "lo", "km", "my"}

# ISO 639-3 / FLORES-style codes for the common ones (NLLB gives "por_Latn").
_ISO3 = {
    "eng": "en", "por": "pt", "spa": "es", "fra": "fr", "deu": "de", "ita": "it", "nld": "nl", "pol": "pl",
    "rus": "ru", "ukr": "uk", "arb": "ar", "ara": "ar", "zho": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko",
    "vie": "vi", "ind": "id", "swh": "sw", "swa": "sw", "yor": "yo", "hin": "hi", "tur": "tr", "tha": "th",
    "pes": "fa", "fas": "fa", "heb": "he", "ell": "el", "ces": "cs", "swe": "sv", "fin": "fi", "dan": "da",
    "ron": "ro", "hun": "hu", "ben": "bn", "tam": "ta", "cat": "ca", "eus": "eu", "glg": "gl",
}  # fmt: skip


def base_lang(code: str) -> str:
    """``pt-BR`` / ``pt_BR`` / ``por_Latn`` / ``__pt__`` → ``pt``."""
    c = code.strip().strip("_<>").lower().replace("-", "_").split("_")[0]
    return _ISO3.get(c, c)


def length_bounds(src: str, tgt: str) -> tuple[float, float]:
    """Normal range of len(output)/len(source) in characters for the pair ``src`` → ``tgt``."""
    s, t = base_lang(src), base_lang(tgt)
    if (s, t) in _MEASURED_BOUNDS:
        return _MEASURED_BOUNDS[(s, t)]
    if (t, s) in _MEASURED_BOUNDS:
        lo, hi = _MEASURED_BOUNDS[(t, s)]
        return (1.0 / hi, 1.0 / lo)
    if s in _CHAR_RATIO_VS_EN and t in _CHAR_RATIO_VS_EN:
        r = _CHAR_RATIO_VS_EN[t] / _CHAR_RATIO_VS_EN[s]
        return (r * _SPREAD_LO, r * _SPREAD_HI)
    return _UNKNOWN_BOUNDS


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the checks (defaults calibrated on the embedded en→pt engine; see the module doc).

    Attributes:
        src, tgt: language codes (ISO 639-1, regional or FLORES forms are reduced to the base).
        checks: which flags to compute (default: all of :data:`FLAG_NAMES`).
        min_lang_letters: letters left after removing names/digits/spans below which the language
            is not judged.
        min_lang_conf: the winning language's probability needed to call the text wrong.
        max_tgt_prob: the target language's probability below which the text is not in it.
        untranslated_similarity: word-level similarity (0–1) from which output counts as a copy.
        min_untranslated_words: sources with fewer words are not judged (names, numbers).
        max_ngram: longest n-gram looked for in loops.
        min_repeats: consecutive repeats of an n-gram (n ≥ 2) that make a loop.
        min_repeats_unigram: consecutive repeats of one token that make a loop.
        length_ratio: (lo, hi) output/source character ratio; ``None`` = :func:`length_bounds`.
        min_ratio_chars: sources shorter than this (characters) are not judged.
        marker_patterns: regexes of markers that must not survive into a field; ``None`` = the IT
            styles of :mod:`cltx.mt.markers` plus the protected-span marker forms.
    """

    src: str = "en"
    tgt: str = "pt"
    checks: frozenset[str] = frozenset(FLAG_NAMES)
    min_lang_letters: int = 15
    min_lang_conf: float = 0.3
    max_tgt_prob: float = 0.05
    untranslated_similarity: float = 0.9
    min_untranslated_words: int = 3
    max_ngram: int = 8
    min_repeats: int = 3
    min_repeats_unigram: int = 4
    length_ratio: tuple[float, float] | None = None
    min_ratio_chars: int = 20
    marker_patterns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.checks) - set(FLAG_NAMES)
        if unknown:
            raise bad_arg("checks", sorted(unknown), f"choose from {', '.join(FLAG_NAMES)}")
        object.__setattr__(self, "checks", frozenset(self.checks))
        for name in ("min_lang_conf", "max_tgt_prob", "untranslated_similarity"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad_arg(name, v, "must be between 0 and 1")
        if self.min_repeats < 2 or self.min_repeats_unigram < 2 or self.max_ngram < 1:
            raise bad_arg("min_repeats", self.min_repeats, "loops need at least 2 repeats and max_ngram >= 1")
        if self.length_ratio is not None:
            lo, hi = self.length_ratio
            if not 0 < lo < hi:
                raise bad_arg("length_ratio", self.length_ratio, "give (lo, hi) with 0 < lo < hi")
        pats = self.marker_patterns if self.marker_patterns is not None else _default_marker_patterns()
        try:
            compiled = tuple(re.compile(p) for p in pats)
        except re.error as exc:
            raise bad_arg("marker_patterns", pats, f"not a valid regex ({exc})") from None
        object.__setattr__(self, "_markers", compiled)
        object.__setattr__(self, "_bounds", self.length_ratio or length_bounds(self.src, self.tgt))
        object.__setattr__(self, "_tgt", base_lang(self.tgt))

    @property
    def bounds(self) -> tuple[float, float]:
        return self._bounds  # type: ignore[attr-defined]


def _default_marker_patterns() -> tuple[str, ...]:
    pats: list[str] = []
    try:
        from cltx.mt.markers import DEFAULT_STYLES

        pats.extend(s.pattern for s in DEFAULT_STYLES)
    except ImportError:  # pragma: no cover - markers ships with cltx.mt
        pats.append(r"[\[［【]\s*\d{1,3}\s*[\]］】]")
    from cltx.mt.protect import DEFAULT_FORMS

    pats.extend(f.parser for f in DEFAULT_FORMS)
    return tuple(pats)


# --------------------------------------------------------------------------------------------- text helpers
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENT_END = re.compile(r"[.!?:;\n]")
_NAME_SCAN = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*|[.!?:;\n\"“”«»()]")


@functools.lru_cache(maxsize=64)
def _strip_spans(text: str) -> str:
    # Called by several checks on the same two texts: cached.
    from cltx.mt.protect import strip_protected

    return strip_protected(text)


def _content_words(text: str) -> str:
    """Words of ``text`` without names (capitalised, not sentence-initial) and without digits."""
    if text.isupper():
        text = text.lower()
    out: list[str] = []
    start = True
    for m in _NAME_SCAN.finditer(text):
        w = m.group()
        if len(w) == 1 and not w.isalpha():
            start = w in ".!?:;\n"
            continue
        if not start and w[0].isupper():
            continue
        start = False
        out.append(w)
    return " ".join(out)


def _norm_words(text: str) -> list[str]:
    t = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(t) + re.findall(r"\d+", t)


def _tokens(text: str, lang: str) -> list[str]:
    t = unicodedata.normalize("NFKC", text).casefold()
    if lang in _NO_SPACE:
        return [c for c in t if not c.isspace()]
    return _TOKEN.findall(t)


def max_loop(tokens: Sequence[str], max_n: int = 8) -> tuple[int, int, int]:
    """The strongest consecutive n-gram loop: ``(n, repeats, start)`` maximising repeats (then n).

    ``(0, 1, 0)`` when no n-gram repeats back to back. O(len · max_n) with a cheap pre-filter.
    """
    best = (0, 1, 0)
    L = len(tokens)
    for n in range(1, min(max_n, L // 2) + 1):
        i = 0
        while i + 2 * n <= L:
            if tokens[i] != tokens[i + n]:
                i += 1
                continue
            gram = tokens[i : i + n]
            j = i + n
            while j + n <= L and tokens[j : j + n] == gram:
                j += n
            r = (j - i) // n
            if r > 1 and (r > best[1] or (r == best[1] and n > best[0] and r * n > best[1] * best[0])):
                # A unigram loop "a a a a" is also a bigram loop "a a a a"; keep the smallest n.
                if not (best[0] and n % best[0] == 0 and r * n <= best[1] * best[0]):
                    best = (n, r, i)
            i = j - n + 1 if r > 1 else i + 1
    return best


_LANGID = None
_LANGID_LOCK = threading.Lock()


def _identifier():
    global _LANGID
    if _LANGID is None:
        with _LANGID_LOCK:
            if _LANGID is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _LANGID = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _LANGID


def language_probs(text: str) -> tuple[str, float, dict[str, float]]:
    """py3langid's ``(top language, its probability, {lang: prob} of the top five})``."""
    ranked = _identifier().rank(text)
    top = {str(lang): float(p) for lang, p in ranked[:5]}
    return str(ranked[0][0]), float(ranked[0][1]), top


def _lang_prob(text: str, lang: str) -> float:
    for code, p in _identifier().rank(text):
        if code == lang:
            return float(p)
    return 0.0


@functools.cache
def _supported(lang: str) -> bool:
    return lang in set(_identifier().labels)


# --------------------------------------------------------------------------------------------- checks
def _check_language(src_text: str, out: str, cfg: QualityConfig) -> dict | None:
    tgt = cfg._tgt  # type: ignore[attr-defined]
    if not _supported(tgt):
        return None
    content = _content_words(_strip_spans(out))
    if sum(c.isalpha() for c in content) < cfg.min_lang_letters:
        return None
    top, conf, _ = language_probs(content)
    if top == tgt or conf < cfg.min_lang_conf:
        return None
    p_tgt = _lang_prob(content, tgt)
    if p_tgt >= cfg.max_tgt_prob:
        return None
    return {"detected": top, "prob": round(conf, 3), "tgt_prob": round(p_tgt, 4)}


def _check_untranslated(src_text: str, out: str, cfg: QualityConfig) -> dict | None:
    a = _norm_words(_strip_spans(src_text))
    if len(a) < cfg.min_untranslated_words:
        return None
    b = _norm_words(_strip_spans(out))
    if not b:
        return None
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if sm.real_quick_ratio() < cfg.untranslated_similarity or sm.quick_ratio() < cfg.untranslated_similarity:
        return None
    r = sm.ratio()
    if r < cfg.untranslated_similarity:
        return None
    return {"similarity": round(r, 3)}


def _check_repetition(src_text: str, out: str, cfg: QualityConfig) -> dict | None:
    lang = cfg._tgt  # type: ignore[attr-defined]
    toks = _tokens(out, lang)
    n, r, start = max_loop(toks, cfg.max_ngram)
    if n == 0:
        return None
    need = cfg.min_repeats_unigram if n == 1 else cfg.min_repeats
    if r < need:
        return None
    # A loop the source has too ("ha ha ha ha") is faithful, not a hallucination.
    _, r_src, _ = max_loop(_tokens(src_text, base_lang(cfg.src)), cfg.max_ngram)
    if r <= r_src:
        return None
    return {"ngram": " ".join(toks[start : start + n]), "repeats": r}


def _check_length(src_text: str, out: str, cfg: QualityConfig) -> dict | None:
    s = " ".join(_strip_spans(src_text).split())
    if len(s) < cfg.min_ratio_chars:
        return None
    o = " ".join(_strip_spans(out).split())
    ratio = len(o) / len(s)
    lo, hi = cfg.bounds
    if lo <= ratio <= hi:
        return None
    return {"ratio": round(ratio, 3), "bounds": [lo, hi]}


def _check_markers(src_text: str, out: str, cfg: QualityConfig) -> dict | None:
    found = []
    for rx in cfg._markers:  # type: ignore[attr-defined]
        n_out = len(rx.findall(out))
        if n_out and n_out > len(rx.findall(src_text)):
            found.extend(m.group(0) for m in rx.finditer(out))
    if not found:
        return None
    return {"markers": found[:5]}


def _check_catalyst(src_text: str, out: str, catalysts: Sequence[str]) -> dict | None:
    if not catalysts:
        return None
    out_w = _norm_words(out)
    if not out_w:
        return None
    src_w = _norm_words(src_text)
    for cs in catalysts:
        cw = _norm_words(cs)
        if len(cw) < 3:
            continue
        if _contains_fuzzy(src_w, cw):
            continue
        if _contains_fuzzy(out_w, cw):
            return {"catalyst": cs[:80]}
    return None


def _contains_fuzzy(hay: list[str], needle: list[str], threshold: float = 0.8) -> bool:
    """Whether some window of ``hay`` matches ``needle`` word for word at difflib ratio ≥ ``threshold``."""
    k = len(needle)
    need = set(needle)
    if len(need & set(hay)) < threshold * len(need):
        return False
    w = k + 2
    for i in range(0, max(1, len(hay) - k + 1)):
        window = hay[i : i + w]
        if len(need & set(window)) < threshold * len(need):
            continue
        if difflib.SequenceMatcher(None, needle, window, autojunk=False).ratio() >= threshold:
            return True
    return False


def _carried(text: str, script_words: re.Pattern[str] | None) -> Counter:
    """What a translation must carry over unchanged: each non-ASCII symbol (So, Sm, Sc, No and the reference
    marks § ¶ † ‡ • ‰ …: :func:`cltx.mt.protect.is_carried_symbol`; not ``°``, which engines keep), each of
    the ASCII characters ``^ \\ { } ~ < #`` (:data:`cltx.mt.protect.ASCII_CARRIED`), and
    each word the ``script`` span kind protects (``script_words``: a script neither language of the pair
    uses; ``None`` when either language is unknown, then only symbols count)."""
    out = Counter(ch for ch in text if ch in ASCII_CARRIED or is_carried_symbol(ch))
    if script_words is not None:
        out.update(m.group() for m in script_words.finditer(text))
    return out


@functools.lru_cache(maxsize=64)
def _script_words(src: str, tgt: str) -> re.Pattern[str] | None:
    """The ``script`` span kind of the pair, from the protection (one notion of a foreign-script word)."""
    return dict(carry_patterns(src, tgt)).get("script")


def _check_dropped(src_text: str, out: str, cfg: QualityConfig) -> dict | None:
    if src_text.isascii() and not any(ch in ASCII_CARRIED for ch in src_text):  # the common case: nothing to carry
        return None
    words = _script_words(cfg.src, cfg.tgt)
    missing = _carried(src_text, words) - _carried(out, words)
    if not missing:
        return None
    return {"missing": sorted(missing.elements())[:8]}


_CHECKS = {
    "wrong_language": _check_language,
    "untranslated": _check_untranslated,
    "repetition": _check_repetition,
    "length_ratio": _check_length,
    "leftover_marker": _check_markers,
    "dropped_symbols": _check_dropped,
}


def check_field(
    source: str, output: str, cfg: QualityConfig | None = None, *, catalysts: Sequence[str] = ()
) -> dict[str, dict]:
    """Flags of one translated field: ``{flag name: detail}`` (empty when the field looks fine).

    Args:
        source: the source text of the field.
        output: its translation (protected spans already restored).
        cfg: thresholds and languages.
        catalysts: Catalyst Statement texts that must not appear in the field (the English CS and,
            when known, its translation).
    """
    cfg = cfg or QualityConfig()
    if not output.strip() or not source.strip():
        return {}
    flags: dict[str, dict] = {}
    for name, fn in _CHECKS.items():
        if name in cfg.checks:
            d = fn(source, output, cfg)
            if d is not None:
                flags[name] = d
    if "leftover_catalyst" in cfg.checks:
        d = _check_catalyst(source, output, catalysts)
        if d is not None:
            flags["leftover_catalyst"] = d
    return flags


def check_record(
    sources: Mapping[str, str],
    outputs: Mapping[str, str],
    cfg: QualityConfig | None = None,
    *,
    catalysts: Sequence[str] = (),
) -> dict[str, dict[str, dict]]:
    """Flags per field, only for fields that have any: ``{field: {flag: detail}}``."""
    cfg = cfg or QualityConfig()
    out: dict[str, dict[str, dict]] = {}
    for name, src_text in sources.items():
        if name not in outputs or not isinstance(outputs[name], str):
            continue
        f = check_field(src_text, outputs[name], cfg, catalysts=catalysts)
        if f:
            out[name] = f
    return out


def flag_count(flags: Mapping[str, Mapping[str, object]]) -> int:
    """Total flags of a record (lower is better; :func:`check_record`'s output)."""
    return sum(len(v) for v in flags.values())


@dataclass
class QualitySummary:
    """Flag counts over a run.

    Attributes:
        records: records checked.
        fields: fields checked.
        flagged_records: records with at least one flag.
        by_flag: number of fields carrying each flag.
    """

    records: int = 0
    fields: int = 0
    flagged_records: int = 0
    by_flag: Counter = field(default_factory=Counter)

    def add(self, flags: Mapping[str, Mapping[str, object]], n_fields: int) -> None:
        self.records += 1
        self.fields += n_fields
        if flags:
            self.flagged_records += 1
        for per_field in flags.values():
            self.by_flag.update(per_field.keys())

    def merge(self, other: QualitySummary) -> None:
        self.records += other.records
        self.fields += other.fields
        self.flagged_records += other.flagged_records
        self.by_flag.update(other.by_flag)

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "fields": self.fields,
            "flagged_records": self.flagged_records,
            "by_flag": {k: int(self.by_flag.get(k, 0)) for k in FLAG_NAMES},
        }


def summarize(all_flags: Iterable[tuple[Mapping[str, Mapping[str, object]], int]]) -> QualitySummary:
    """A :class:`QualitySummary` of ``(record flags, fields checked)`` pairs."""
    s = QualitySummary()
    for flags, n in all_flags:
        s.add(flags, n)
    return s


# --------------------------------------------------------------------------------------------- pipeline gate
ON_FLAG = ("keep", "retry", "reject")


class QualityGate:
    """Runs the checks on each translated record of a pipeline batch and applies ``on_flag``.

    * ``keep``: flags go to ``_mt.flags`` (``{field: {flag: detail}}``), nothing else changes.
    * ``retry``: a flagged record is translated again in the other mode (joint ↔ separate); the
      translation with fewer flags is kept (the first on a tie) and ``_mt.retry`` says what happened.
    * ``reject``: a flagged record is marked ``rejected``; the runner writes it to the rejects file
      instead of the output (every input line still lands exactly once).

    The Catalyst Statement leftover check looks for the record's English CS and for every
    translation of that CS seen so far in the run (the text before the first Indicator Token of
    successful joint records).
    """

    def __init__(self, config: QualityConfig, on_flag: str = "keep") -> None:
        if on_flag not in ON_FLAG:
            raise bad_arg("--on-flag", on_flag, f"choose one of {', '.join(ON_FLAG)}")
        self.config = config
        self.on_flag = on_flag
        self.summary = QualitySummary()
        self.retried = 0
        self.retry_kept = 0
        self._cs: dict[str, set[str]] = {}

    def _catalysts(self, res) -> list[str]:
        cs, cs_tr = res.extras.get("catalyst"), res.extras.get("catalyst_translated")
        if not cs:
            return []
        seen = self._cs.setdefault(cs, set())
        if cs_tr and len(seen) < 8:
            seen.add(cs_tr)
        return [cs, *sorted(seen)]

    def flags(self, res) -> dict[str, dict[str, dict]]:
        if res.meta.get("status") in ("failed", "empty"):
            return {}
        from cltx.mt.chat import flat_texts

        # per segment: a chat field's turns are checked (and flagged, as FIELD[i]) like fields
        sources = {k: v for k, v in flat_texts(res.source).items() if v.strip()}
        return check_record(sources, flat_texts(res.translated), self.config, catalysts=self._catalysts(res))

    def process(self, results: list, pipeline) -> list:
        """Check ``results`` (cltx.mt.pipeline.RecordResult) in place; retry or mark them per ``on_flag``."""
        from cltx.mt.chat import flat_texts

        flagged = []
        for res in results:
            f = self.flags(res)
            if f:
                res.meta["flags"] = f
                flagged.append(res)
        if flagged and self.on_flag == "retry":
            self._retry(flagged, pipeline)
        for res in results:
            f = res.meta.get("flags", {})
            self.summary.add(f, sum(1 for v in flat_texts(res.source).values() if v.strip()))
            if f and self.on_flag == "reject":
                res.rejected = True
        return results

    def _retry(self, flagged: list, pipeline) -> None:
        other = "separate" if pipeline.config.mode == "joint" else "joint"
        sibling = pipeline.sibling(other)
        again = sibling.translate_batch([(r.line, r.record) for r in flagged])
        for first, second in zip(flagged, again, strict=True):
            self.retried += 1
            f2 = self.flags(second) if second.meta.get("status") != "failed" else None
            n1 = flag_count(first.meta["flags"])
            info = {"mode": other, "flags_first": n1, "flags_retry": None if f2 is None else flag_count(f2)}
            if f2 is not None and flag_count(f2) < n1:
                self.retry_kept += 1
                status = second.meta["status"]
                if pipeline.config.mode == "joint" and status == "separate":
                    status = "fallback"
                meta = {**second.meta, "status": status, "retry": {**info, "kept": "retry"}}
                if other == "separate":
                    meta["reason"] = "quality flags: kept the field-by-field translation"
                if f2:
                    meta["flags"] = f2
                else:
                    meta.pop("flags", None)
                first.translated = dict(second.translated)
                first.meta = {"line": first.line, **{k: v for k, v in meta.items() if k != "line"}}
                first.extras = dict(second.extras)
            else:
                first.meta["retry"] = {**info, "kept": "first"}
