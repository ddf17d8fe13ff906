"""Token matching between an LLM's and a PLM's vocabularies, across tokenizer families.

Each token is normalised to a :class:`TokenForm` — ``(word_start, surface)`` with ``surface`` the
token's UTF-8 bytes without any word-boundary marker — so that tokens of different families compare:

* byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM): the token string is the GPT-2 byte-to-unicode
  image of its bytes; a leading byte 0x20 (shown ``Ġ``) marks a word start.
* SentencePiece (Llama-2, Gemma, T5, XLM-R): a leading ``▁`` marks a word start; byte-fallback
  tokens ``<0xNN>`` are the single byte NN.
* WordPiece (BERT): ``##`` marks a continuation; a token without it starts a word. BERT's
  pre-tokenizer splits every punctuation character off as its own "word", although in running
  text punctuation usually follows the previous word without a space, so a punctuation-only
  WordPiece token first matches the LLM's unspaced form (kind ``punctuation``).

Two tokens match when their forms are identical (an LLM byte-fallback token ``<0xNN>`` only when no
ordinary LLM token spells the same byte). Matching is case-sensitive on purpose: a
lower-casing PLM's ``the`` matches the LLM's ``Ġthe`` only, never ``ĠThe``. Special tokens are
matched by role instead of by surface (bos, eos, pad, unk; BERT's ``[CLS]``/``[SEP]`` play bos/eos),
so the new model still knows where a text starts and ends. A bare marker (``Ġ``, ``▁``) is a space.

The new tokenizer prepends what carries the row of the token the LLM's tokenizer prepends
(:func:`cltx.salt.tokenizer.llm_start_token`; :attr:`Matching.prepends`), and that token is the new
model's bos: the PLM's bos when it has the LLM's bos row (Llama, Gemma with BERT's ``[CLS]``); the PLM's
eos when the LLM prepends its eos — XGLM prepends ``</s>``, not its bos ``<s>``, so with BERT the new
model starts with ``[SEP]`` (``[CLS]`` keeps the ``<s>`` row), with GPT-2 with ``<|endoftext|>``; an
LLM whose bos is its own eos (OPT) likewise. When the LLM prepends its bos and the PLM has no token
that can play it apart from its eos (GPT-2's ``<|endoftext|>`` plays bos, eos and unk at once; T5 has
no bos), the new vocabulary gets the LLM's bos string as one added special token with the LLM's bos
row (:attr:`Matching.added`): without it the new model would see no start token at all, and Gemma
depends on its bos heavily. A PLM token that already spells that string becomes the bos instead. An
LLM whose tokenizer prepends nothing (Qwen2) gets nothing prepended.

The LLM's chat template is carried over (:attr:`Matching.chat_template`), so that
``apply_chat_template`` works on the new model. Its markers are the LLM's added tokens whose text
occurs literally in the template source (every named template of a dict or list), special or shaped
like a marker (``<...>``, ``[...]``), two characters or more (:func:`chat_markers`). Each marker, in
LLM id order, keeps its LLM row in one of three ways (:attr:`Matching.chat_markers` says which):

* rewritten: a role already gives a PLM token that row (priority eos, bos, pad, unk), so the marker's
  text in the template becomes that token's string — SmolLM2's bos ``<|im_start|>`` becomes BERT's
  ``[CLS]``, its eos ``<|im_end|>`` becomes ``[SEP]`` — and no row is duplicated;
* paired: the PLM has a token of exactly that string that keeps no LLM row yet; it gets the marker's row;
* added: a new token of the new vocabulary, after the PLM's and after an added bos, with the
  marker's rows (:attr:`Matching.added`): ChatML's ``<|im_start|>`` with BERT, Llama-3's
  ``<|start_header_id|>``, ``<|end_header_id|>`` and ``<|eot_id|>``, Gemma's ``<start_of_turn>``.

Paired and added markers become added tokens of the new tokenizer with the LLM's flags (special or
not, lstrip, rstrip), so a rendered conversation never splits them; a marker whose LLM row is one of
the LLM's end tokens (``<|eot_id|>`` in Llama-3's generation config) ends generation like the eos.
Template variables (``{{ bos_token }}``, ``{{ eos_token }}``) need no change: they render the new
tokenizer's role tokens, which have those rows.

A multimodal LLM's config names its placeholder tokens by id (Gemma-3's ``image_token_index``,
``boi_token_index``, ``eoi_token_index``; Llava's ``image_token_index``; Qwen2-VL's ``image_token_id``,
``video_token_id``, ``vision_start_token_id`` …): every ``*_token_id(s)`` / ``*_token_index`` field of the
top-level config and of its text config other than bos/eos/pad/unk (set by role), never those of the vision
or audio encoders' configs (:func:`config_token_fields`). Each token such a field names keeps its LLM row like
a chat marker (:attr:`Matching.config_tokens` says how), and the field is rewritten to the new id
(:attr:`Matching.config_ids`):

* carried: a PLM token has the row already (a role, a chat marker, or a surface match);
* paired: the PLM has a token of exactly that string that keeps no LLM row yet; it gets the row;
* added: a new token after the PLM's, an added bos and the added chat markers, with the row;
* not kept: the field names an ordinary piece of the LLM's vocabulary (not one of its added tokens) that no
  PLM token carries. Adding its string would change how the PLM's tokenizer splits text, so the field keeps
  its value, with a warning and a note in the report (real placeholders are always added tokens).

Paired and added ones become added tokens of the new tokenizer with the LLM's flags (``<image>`` stays one
token, the id the config names). A field naming an id the LLM's tokenizer does not have, or a string whose PLM
token keeps another LLM row, is refused (:class:`cltx.errors.CltxError`): the model would be written with a
placeholder id that no longer means the token it meant.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from cltx.errors import CltxError
from cltx.salt.tokenizer import llm_start_token

logger = logging.getLogger(__name__)

BYTE_BPE = "byte-bpe"
SENTENCEPIECE = "sentencepiece"
WORDPIECE = "wordpiece"
FAMILIES = (BYTE_BPE, SENTENCEPIECE, WORDPIECE)

SP_MARKER = "\u2581"  # ▁
ROLES = ("eos", "bos", "pad", "unk")  # priority when one token plays several roles

# Match kinds counted in the report.
KIND_SPECIAL = "special"
KIND_WORD = "word_start"
KIND_CONTINUATION = "continuation"
KIND_BYTE = "byte"
KIND_PUNCT = "punctuation"
KIND_SPACE = "space"
MATCH_KINDS = (KIND_SPECIAL, KIND_WORD, KIND_CONTINUATION, KIND_PUNCT, KIND_BYTE, KIND_SPACE)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, NBSP, soft
    hyphen) map in order to U+0100, U+0101, … — so the space byte 0x20 is ``Ġ`` (U+0120).
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@dataclass(frozen=True)
class TokenForm:
    """A token without its family's markers.

    Attributes:
        word_start: the token begins a new word (follows whitespace).
        surface: the token's text as UTF-8 bytes (possibly a partial character for byte tokens).
        is_byte: a byte-fallback token (``<0xNN>``).
    """

    word_start: bool
    surface: bytes
    is_byte: bool = False

    @property
    def key(self) -> tuple[bool, bytes]:
        return (self.word_start, self.surface)

    def text(self) -> str:
        """The surface as text (invalid UTF-8 bytes replaced)."""
        return self.surface.decode("utf-8", errors="replace")


def _is_punctuation(s: str) -> bool:
    return bool(s) and all(unicodedata.category(c).startswith(("P", "S")) for c in s)


def normalize_token(token: str, family: str, *, continuation_prefix: str = "##") -> TokenForm:
    """Strip a token's family markers: ``(word_start, surface bytes)``.

    Args:
        token: the vocabulary string (as ``tokenizer.get_vocab()`` shows it).
        family: ``byte-bpe``, ``sentencepiece`` or ``wordpiece``.
        continuation_prefix: WordPiece's continuation marker.
    """
    if family == BYTE_BPE:
        dec = unicode_to_bytes()
        if token and all(c in dec for c in token):
            raw = bytes(dec[c] for c in token)
        else:  # an added token stored verbatim
            raw = token.encode("utf-8")
        if len(raw) > 1 and raw[:1] == b" ":
            return TokenForm(True, raw[1:])
        return TokenForm(False, raw)
    if family == SENTENCEPIECE:
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return TokenForm(False, bytes([int(token[3:5], 16)]), is_byte=True)
            except ValueError:
                pass
        if token == SP_MARKER:
            return TokenForm(False, b" ")
        if token.startswith(SP_MARKER):
            return TokenForm(True, token[1:].replace(SP_MARKER, " ").encode("utf-8"))
        return TokenForm(False, token.replace(SP_MARKER, " ").encode("utf-8"))
    if family == WORDPIECE:
        if continuation_prefix and token.startswith(continuation_prefix) and len(token) > len(continuation_prefix):
            return TokenForm(False, token[len(continuation_prefix) :].encode("utf-8"))
        return TokenForm(True, token.encode("utf-8"))
    raise ValueError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}")


def _backend_spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CltxError(
            f"tokenizer={type(tokenizer).__name__}: has no `tokenizers` backend (a slow tokenizer); "
            "fix: pass a fast tokenizer (AutoTokenizer.from_pretrained of a folder with a tokenizer.json); a tokenizer "
            "type that transformers has only as a slow one is not supported"
        )
    return json.loads(backend.to_str())


def detect_family(tokenizer) -> tuple[str, str]:
    """Which family a (fast) tokenizer belongs to, from its ``tokenizers`` pipeline.

    Returns:
        ``(family, continuation_prefix)``; the prefix is WordPiece's ``##`` (else ``""``).
    """
    spec = _backend_spec(tokenizer)
    model = spec.get("model") or {}
    mtype = model.get("type")
    if mtype == "WordPiece":
        return WORDPIECE, model.get("continuing_subword_prefix") or "##"
    pipeline = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")])
    if '"ByteLevel"' in pipeline:
        return BYTE_BPE, ""
    if '"Metaspace"' in pipeline or SP_MARKER in pipeline or mtype == "Unigram":
        return SENTENCEPIECE, ""
    # No telling pipeline: count the markers in the vocabulary.
    counts = Counter()
    for tok in tokenizer.get_vocab():
        if tok.startswith("\u0120"):
            counts[BYTE_BPE] += 1
        elif tok.startswith(SP_MARKER):
            counts[SENTENCEPIECE] += 1
        elif tok.startswith("##"):
            counts[WORDPIECE] += 1
    if not counts:
        raise CltxError(
            f"tokenizer={getattr(tokenizer, 'name_or_path', '?')!r}: cannot tell its family (no Ġ, ▁ or ## markers, "
            f"model type {mtype!r}); fix: use a byte-level BPE, SentencePiece or WordPiece tokenizer"
        )
    family = counts.most_common(1)[0][0]
    return family, "##" if family == WORDPIECE else ""


def lowercases(tokenizer) -> bool:
    """True when the tokenizer's normaliser lower-cases its input."""
    spec = _backend_spec(tokenizer)
    text = json.dumps(spec.get("normalizer"))
    if '"Lowercase"' in text or '"lowercase": true' in text:
        return True
    return bool(getattr(tokenizer, "do_lower_case", False))


def special_roles(tokenizer) -> dict[str, int]:
    """Role → token id for bos/eos/pad/unk (BERT's cls/sep stand in for bos/eos)."""
    roles: dict[str, int] = {}
    for role, alts in (("bos", ("bos", "cls")), ("eos", ("eos", "sep")), ("pad", ("pad",)), ("unk", ("unk",))):
        for alt in alts:
            tid = getattr(tokenizer, f"{alt}_token_id", None)
            if isinstance(tid, int) and tid >= 0:
                roles[role] = tid
                break
    return roles


@dataclass
class Matching:
    """The result of :func:`match_vocabularies` (ids are PLM ids = the new model's ids).

    Attributes:
        llm_family / plm_family: tokenizer families.
        plm_lowercase: the PLM lower-cases its input.
        plm_size / llm_size: vocabulary sizes (``len(tokenizer)``).
        pairs: ``{plm_id: llm_id}`` for every token that keeps an LLM embedding exactly.
        kinds: ``{plm_id: kind}`` for the pairs (see :data:`MATCH_KINDS`).
        basis: PLM ids of surface matches (specials excluded): SALT's regression basis.
        new: PLM ids that need an initialisation (sorted).
        unmapped_specials: PLM special tokens with no LLM role counterpart (they get the LLM mean).
        forms: ``{plm_id: TokenForm}`` for every PLM token.
        roles: ``{role: (plm_id, llm_id)}`` of the special-token mapping.
        added: ``{new_id: token}`` for tokens the new vocabulary has beyond the PLM's (the LLM's
            bos, see the module docstring); they are in ``pairs`` too, with kind ``special``.
        notes: why the vocabulary or the roles differ from the PLM's, for the report.
        llm_tokens: ``{llm_id: token}`` of the LLM tokens whose rows the added tokens take (for the report).
        prepends: ``{"id", "token", "llm_id", "llm_token"}`` of the token the new tokenizer prepends (the new
            model's bos, with the row of the token the LLM's tokenizer prepends), or None when the LLM's
            tokenizer prepends nothing (Qwen2).
        chat_template: the LLM's chat template with its markers rewritten for the new vocabulary (a str, or
            ``{name: template}`` for named templates), or None when the LLM has none.
        chat_markers: per marker of the LLM's template, ``{"llm_id", "token", "handled", "id", …}`` with
            ``handled`` one of ``rewritten`` (``to``: the PLM token's string, ``role``), ``paired``, ``added``
            or ``kept`` (the PLM's token of that string keeps another LLM row; ``reason``).
        marker_tokens: ``{id: {"content", "special", "lstrip", "rstrip", "single_word"}}`` of the paired and
            added markers, which the new tokenizer makes added tokens with the LLM's flags.
        chat_template_note: why no template was carried over, or None.
        config_tokens: per LLM token named by a config id field (:func:`config_token_fields`), ``{"llm_id",
            "token", "fields", "handled", "id"}`` with ``handled`` one of ``carried``, ``paired``, ``added`` or
            ``not kept`` (``id`` None, ``reason``).
        config_ids: ``{field: new value}`` of every such field that names a kept token (``"image_token_index"``,
            ``"text_config.image_token_id"``), the value an id or a list of ids as in the LLM's config.
    """

    llm_family: str
    plm_family: str
    plm_lowercase: bool
    plm_size: int
    llm_size: int
    pairs: dict[int, int]
    kinds: dict[int, str]
    basis: list[int]
    new: list[int]
    unmapped_specials: list[int]
    forms: dict[int, TokenForm]
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)
    added: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    llm_tokens: dict[int, str] = field(default_factory=dict)
    prepends: dict | None = None
    chat_template: str | dict[str, str] | None = None
    chat_markers: list[dict] = field(default_factory=list)
    marker_tokens: dict[int, dict] = field(default_factory=dict)
    chat_template_note: str | None = None
    config_tokens: list[dict] = field(default_factory=list)
    config_ids: dict[str, int | list[int]] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Rows of the new model: the PLM's tokens and the added ones."""
        return max([self.plm_size, *(i + 1 for i in self.added)])

    def counts(self) -> dict[str, int]:
        c = Counter(self.kinds.values())
        return {k: int(c.get(k, 0)) for k in MATCH_KINDS}

    def summary(self) -> dict:
        return {
            "llm_family": self.llm_family,
            "plm_family": self.plm_family,
            "plm_lowercase": self.plm_lowercase,
            "llm_vocab_size": self.llm_size,
            "plm_vocab_size": self.plm_size,
            "overlap": len(self.pairs),
            "surface_overlap": len(self.basis),
            "new_tokens": len(self.new),
            "unmapped_specials": len(self.unmapped_specials),
            "match_counts": self.counts(),
            "special_roles": {
                r: {"plm_id": p, "llm_id": q, **({"added": True} if p in self.added else {})}
                for r, (p, q) in self.roles.items()
            },
            "new_model_vocab_size": self.vocab_size,
            "added_tokens": [
                {"id": i, "token": t, "role": role, "llm_id": q, "llm_token": self.llm_tokens.get(q)}
                for i, t in self.added.items()
                for role, q in self._added_roles(i)
            ],
            "prepends": dict(self.prepends) if self.prepends else None,
            "chat_template": self.chat_template_summary(),
            "config_tokens": {"tokens": [dict(e) for e in self.config_tokens], "fields": dict(self.config_ids)},
            "notes": list(self.notes),
        }

    def _added_roles(self, token_id: int) -> list[tuple[str, int]]:
        """``(role, llm_id)`` of an added token: its special roles, else ``chat_marker`` for a template marker or
        ``config_token`` for a token named by a config field."""
        roles = [(r, q) for r, (p, q) in self.roles.items() if p == token_id]
        if not roles and token_id in self.pairs:
            marker = any(e.get("id") == token_id for e in self.chat_markers)
            roles = [("chat_marker" if marker else "config_token", self.pairs[token_id])]
        return roles

    def chat_template_summary(self) -> dict:
        """The report's ``chat_template`` entry: whether it was carried over, and how each marker was."""
        if self.chat_template is None:
            return {"carried": False, "reason": self.chat_template_note or "the LLM's tokenizer has no chat template"}
        names = sorted(self.chat_template) if isinstance(self.chat_template, dict) else None
        return {
            "carried": True,
            **({"templates": names} if names is not None else {}),
            "markers": [dict(e) for e in self.chat_markers],
        }


BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<|cltx_bos|>")


def added_token_id(tokenizer, text: str) -> int:
    """The id the tokenizer's backend gives ``text`` as an added special token (on a copy)."""
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False)])
    return backend.token_to_id(text)


def _bos_slot(plm_tokenizer, text: str, *, taken: set[int]) -> tuple[str, int, bool]:
    """``(token, id, is_new)`` for the new model's bos: the LLM's bos string, reusing the PLM's token of
    that string unless that token already plays another role (then the next of :data:`BOS_CANDIDATES`)."""
    vocab = plm_tokenizer.get_vocab()
    for cand in dict.fromkeys((text, *BOS_CANDIDATES)):
        pid = vocab.get(cand)
        if pid is None:
            return cand, added_token_id(plm_tokenizer, cand), True
        if pid not in taken:
            return cand, pid, False
    raise RuntimeError(f"no free bos string among {BOS_CANDIDATES} (a bug: please report it)")


def _vocab_by_id(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


# ------------------------------------------------------------------------------ chat template

MARKER_SHAPE = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")
# A rewritten marker lands inside a Jinja string literal or statement: a PLM token string with one of these
# characters could end the literal or open a tag, so such a marker keeps its own text instead.
_JINJA_UNSAFE = re.compile(r"['\"\\{}%#\n\r]")


def chat_template_sources(template) -> dict[str | None, str] | None:
    """A tokenizer's chat template as ``{name: source}`` (``{None: source}`` for a single template).

    ``chat_template`` is a str, a dict ``{name: template}`` (transformers' form of several named templates), or
    a list of ``{"name", "template"}`` (their form in ``tokenizer_config.json``). Returns ``{}`` for None and
    None for anything else.
    """
    if template is None:
        return {}
    if isinstance(template, str):
        return {None: template}
    if isinstance(template, dict) and all(isinstance(v, str) for v in template.values()):
        return {str(k): v for k, v in template.items()}
    if isinstance(template, (list, tuple)) and all(
        isinstance(t, dict) and isinstance(t.get("template"), str) and "name" in t for t in template
    ):
        return {str(t["name"]): t["template"] for t in template}
    return None


def chat_markers(llm_tokenizer) -> list[tuple[int, object]]:
    """``(llm_id, AddedToken)`` of the markers of the LLM's chat template, in LLM id order.

    A marker is an added token whose text occurs literally in a template source, that is special or shaped
    like a marker (``<...>``, ``[...]``), at least two characters long and not only whitespace. A token whose
    text occurs only inside a longer marker's is not one.
    """
    sources = chat_template_sources(getattr(llm_tokenizer, "chat_template", None))
    if not sources:
        return []
    decoder = getattr(llm_tokenizer, "added_tokens_decoder", None) or {}
    candidates = [
        (i, a)
        for i, a in decoder.items()
        if len(a.content) >= 2 and a.content.strip() and (a.special or MARKER_SHAPE.fullmatch(a.content))
    ]
    texts = list(sources.values())
    found = []
    for i, a in sorted(candidates, key=lambda ia: (-len(ia[1].content), ia[0])):
        if any(a.content in t for t in texts):
            found.append((i, a))
            texts = [t.replace(a.content, "\0") for t in texts]
    return sorted(found, key=lambda ia: ia[0])


def rewrite_markers(template, rewrites: dict[str, str]):
    """``template`` (str, dict or list) with every marker text of ``rewrites`` replaced, longest first, in
    one pass (a replacement is never rewritten again; give a marker that keeps its text as ``{text: text}``,
    so that no shorter marker is replaced inside it); a list of named templates becomes a dict."""
    sources = chat_template_sources(template)
    if sources is None:
        raise ValueError(f"chat_template of type {type(template).__name__} (a bug: please report it)")
    if rewrites:
        pattern = re.compile("|".join(re.escape(t) for t in sorted(rewrites, key=lambda t: (-len(t), t))))
        sources = {k: pattern.sub(lambda mt: rewrites[mt.group(0)], v) for k, v in sources.items()}
    if isinstance(template, str):
        return sources[None]
    return dict(sources)


def added_token_ids(tokenizer, tokens: list[dict]) -> list[int]:
    """The ids the tokenizer's backend gives ``tokens`` (``{"content", "special", …}``), added in order to one
    copy, as :func:`cltx.salt.tokenizer.causal_tokenizer` adds them."""
    from tokenizers import Tokenizer

    from cltx.salt.tokenizer import add_token

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    for spec in tokens:
        add_token(backend, spec)
    return [backend.token_to_id(spec["content"]) for spec in tokens]


def _token_spec(added) -> dict:
    """The flags of an LLM added token that the new tokenizer's copy keeps."""
    return {
        "content": added.content,
        "special": bool(added.special),
        "lstrip": bool(added.lstrip),
        "rstrip": bool(added.rstrip),
        "single_word": bool(added.single_word),
    }


@dataclass
class _ChatResult:
    template: str | dict | None
    markers: list[dict]
    tokens: dict[int, dict]
    note: str | None


def _carry_chat_template(
    llm_tokenizer,
    plm_tokenizer,
    *,
    pairs: dict[int, int],
    kinds: dict[int, str],
    roles: dict[str, tuple[int, int]],
    added: dict[int, str],
    llm_tokens: dict[int, str],
    new: list[int],
    unmapped: list[int],
    notes: list[str],
) -> _ChatResult:
    """Carry the LLM's chat template over (module docstring); updates pairs, kinds, added, new, unmapped, notes."""
    template = getattr(llm_tokenizer, "chat_template", None)
    sources = chat_template_sources(template)
    if sources is None:
        why = f"the LLM's chat_template is a {type(template).__name__}, not a str, dict or list of templates"
        notes.append(f"chat template: not carried over ({why})")
        return _ChatResult(None, [], {}, why)
    if not sources:
        return _ChatResult(None, [], {}, "the LLM's tokenizer has no chat template")

    def plm_text(pid: int) -> str:
        return added[pid] if pid in added else plm_tokenizer.convert_ids_to_tokens(pid)

    strings = {**plm_tokenizer.get_vocab(), **{t: i for i, t in added.items()}}
    rewrites: dict[str, str] = {}
    entries: list[dict] = []
    to_add: list[tuple[int, dict, dict]] = []  # (llm_id, token spec, report entry)
    tokens: dict[int, dict] = {}
    for lid, tok in chat_markers(llm_tokenizer):
        text = tok.content
        # Every marker takes part in the one-pass rewrite, those that keep their text too: a marker inside
        # a longer one's text (``<|im_end|>`` in ``<|im_end|>!``) is then never rewritten there.
        rewrites[text] = text
        entry: dict = {"llm_id": lid, "token": text}
        role = next((r for r in ROLES if r in roles and roles[r][1] == lid), None)
        if role is not None and not _JINJA_UNSAFE.search(plm_text(roles[role][0])):
            pid = roles[role][0]
            rewrites[text] = plm_text(pid)
            entries.append({**entry, "handled": "rewritten", "to": plm_text(pid), "id": pid, "role": role})
            continue
        pid = strings.get(text)
        if pid is None:
            entry["handled"] = "added"
            entries.append(entry)  # its id comes below, once every added marker is known
            to_add.append((lid, _token_spec(tok), entry))
        elif pid in pairs and pairs[pid] != lid:
            why = f"the PLM's token {text!r} ({pid}) keeps the LLM's row {pairs[pid]}"
            entries.append({**entry, "handled": "kept", "id": pid, "reason": why})
            notes.append(f"chat template: the marker {text!r} is kept as text, but {why}, not the marker's {lid}")
        else:
            if pid not in pairs:
                pairs[pid] = lid
                kinds[pid] = KIND_SPECIAL
                for ids in (new, unmapped):
                    if pid in ids:
                        ids.remove(pid)
                notes.append(f"chat template: the PLM's token {text!r} ({pid}) gets the row of the LLM's marker")
            tokens[pid] = _token_spec(tok)
            entries.append({**entry, "handled": "paired", "id": pid})
    if to_add:
        # After the PLM's tokens and an added bos, in LLM id order: causal_tokenizer adds them in id order.
        before = [{"content": added[i], "special": True} for i in sorted(added)]
        ids = added_token_ids(plm_tokenizer, before + [spec for _, spec, _ in to_add])[len(before) :]
        taken = set(strings.values())
        for (lid, spec, entry), pid in zip(to_add, ids, strict=True):
            if pid is None or pid in taken:
                raise RuntimeError(f"the marker {spec['content']!r} got the taken id {pid} (a bug: please report it)")
            pairs[pid] = lid
            kinds[pid] = KIND_SPECIAL
            added[pid] = spec["content"]
            llm_tokens[lid] = spec["content"]
            tokens[pid] = spec
            entry["id"] = pid
            taken.add(pid)
        listed = ", ".join(f"{spec['content']!r} ({entry['id']})" for _, spec, entry in to_add)
        notes.append(f"chat template: added {listed} to the vocabulary with the rows of the LLM's markers")
    carried = rewrite_markers(template, rewrites)
    for e in entries:
        if e["handled"] == "rewritten":
            logger.info("chat template: %r → %r (%s, id %d)", e["token"], e["to"], e["role"], e["id"])
    return _ChatResult(carried, entries, tokens, None)


# ------------------------------------------------------------------------------ config token ids

CONFIG_TOKEN_FIELD = re.compile(r"\w+_token_(?:id|ids|index)")
# Set by role (transfer._resize writes the new tokenizer's bos/eos/pad/unk).
ROLE_FIELDS = frozenset(f"{r}_token_id" for r in ROLES)


def config_token_fields(config) -> dict[str, int | list[int]]:
    """The token-id fields of an LLM's config whose tokens must keep their rows (module docstring).

    Every ``*_token_id``, ``*_token_ids`` or ``*_token_index`` field holding an id ≥ 0 or a list of them, of the
    top-level config and of its text config (``get_text_config(decoder=True)``; its field prefixed with the
    sub-config's name), except bos/eos/pad/unk. The vision or audio encoders' configs are not read: their ids
    are not the text vocabulary's.

    Returns:
        ``{field: value}``, e.g. ``{"image_token_index": 663, "text_config.boi_token_id": 661}``.
    """
    if config is None:
        return {}
    scopes = [("", config)]
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if text is not config:
        key = next((k for k, v in vars(config).items() if v is text), None)
        if key is not None:
            scopes.append((f"{key}.", text))
    fields: dict[str, int | list[int]] = {}
    for prefix, conf in scopes:
        for name, value in sorted(vars(conf).items()):
            if name in ROLE_FIELDS or not CONFIG_TOKEN_FIELD.fullmatch(name):
                continue
            ids = list(value) if isinstance(value, (list, tuple)) else [value]
            if ids and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ids):
                fields[prefix + name] = ids if isinstance(value, (list, tuple)) else value
    return fields


def _keep_config_tokens(
    llm_tokenizer,
    plm_tokenizer,
    fields: dict[str, int | list[int]],
    *,
    llm_name: str,
    plm_name: str,
    pairs: dict[int, int],
    kinds: dict[int, str],
    roles: dict[str, tuple[int, int]],
    added: dict[int, str],
    llm_tokens: dict[int, str],
    marker_tokens: dict[int, dict],
    new: list[int],
    unmapped: list[int],
    notes: list[str],
) -> tuple[list[dict], dict[str, int | list[int]]]:
    """Keep the rows of the tokens that config fields name (module docstring); updates pairs, kinds, added,
    llm_tokens, marker_tokens, new, unmapped, notes. Returns the report entries and ``{field: new value}``."""
    named: dict[int, list[str]] = {}
    for name, value in fields.items():
        for lid in value if isinstance(value, list) else [value]:
            named.setdefault(lid, [])
            if name not in named[lid]:
                named[lid].append(name)
    if not named:
        return [], {}
    n_llm = len(llm_tokenizer)
    decoder = getattr(llm_tokenizer, "added_tokens_decoder", None) or {}
    strings = {**plm_tokenizer.get_vocab(), **{t: i for i, t in added.items()}}
    role_of = {p: r for r in reversed(ROLES) if r in roles for p in [roles[r][0]]}
    entries: list[dict] = []
    to_add: list[tuple[int, dict, dict]] = []
    for lid in sorted(named):
        names = named[lid]
        if lid >= n_llm:
            raise CltxError(
                f"llm={llm_name!r}: its config's {names[0]}={lid} names a token its tokenizer does not have (it has "
                f"{n_llm} tokens), so cltx salt cannot tell which token of the new vocabulary must take that row and "
                "the salted model would point the field at an unrelated token; fix: add that token to the LLM's "
                f"tokenizer (tokenizer.add_special_tokens) and save it, or remove {names[0]} from the config if the "
                "model does not use it"
            )
        text = decoder[lid].content if lid in decoder else llm_tokenizer.convert_ids_to_tokens(lid)
        entry: dict = {"llm_id": lid, "token": text, "fields": list(names)}
        carriers = sorted(p for p, q in pairs.items() if q == lid)
        if carriers:
            # The token of the same string first (an added marker), then a role's by priority, then the lowest id.
            def rank(p: int, text: str = text) -> tuple:
                same = (added[p] if p in added else plm_tokenizer.convert_ids_to_tokens(p)) == text
                return (not same, ROLES.index(role_of[p]) if p in role_of else len(ROLES), p)

            entries.append({**entry, "handled": "carried", "id": min(carriers, key=rank)})
            continue
        if lid not in decoder:
            # An ordinary piece of the LLM's vocabulary, no placeholder its tokenizer keeps whole: made an added
            # token, its string would change how the PLM's tokenizer splits every text that spells it.
            why = (
                f"the LLM's {text!r} ({lid}) is an ordinary vocabulary token, not an added one, and no PLM token has "
                "its row; it is not added (that would change how the PLM's tokenizer splits text)"
            )
            entries.append({**entry, "handled": "not kept", "id": None, "reason": why})
            notes.append(f"config: {', '.join(names)} left as {lid}: {why}")
            logger.warning(
                "config: %s still names id %d, which is not the LLM's %r in the new vocabulary (%s); fix: make the "
                "token an added token of the LLM's tokenizer, or set the field yourself",
                ", ".join(names),
                lid,
                text,
                why,
            )
            continue
        spec = _token_spec(decoder[lid])
        pid = strings.get(text)
        if pid is None:
            entry["handled"] = "added"
            entries.append(entry)
            to_add.append((lid, spec, entry))
            continue
        if pid in pairs:
            raise CltxError(
                f"plm={plm_name!r}: its token {text!r} ({pid}) keeps the LLM's row {pairs[pid]}, but the LLM's config "
                f"names the LLM's {text!r} ({lid}) in {', '.join(names)}, which must keep its own row under that "
                "string; fix: pass a PLM whose tokenizer does not have that string as an ordinary token, or rename "
                "the token in the LLM's tokenizer and config"
            )
        pairs[pid] = lid
        kinds[pid] = KIND_SPECIAL
        for ids in (new, unmapped):
            if pid in ids:
                ids.remove(pid)
        marker_tokens[pid] = spec
        entries.append({**entry, "handled": "paired", "id": pid})
        notes.append(f"config: the PLM's token {text!r} ({pid}) gets the row of the LLM's {', '.join(names)}")
    if to_add:
        # After the PLM's tokens, an added bos and the added chat markers, in LLM id order, as causal_tokenizer
        # adds them.
        before = [marker_tokens.get(i) or {"content": added[i], "special": True} for i in sorted(added)]
        ids = added_token_ids(plm_tokenizer, before + [spec for _, spec, _ in to_add])[len(before) :]
        taken = set(strings.values())
        for (lid, spec, entry), pid in zip(to_add, ids, strict=True):
            if pid is None or pid in taken:
                raise RuntimeError(f"the token {spec['content']!r} got the taken id {pid} (a bug: please report it)")
            pairs[pid] = lid
            kinds[pid] = KIND_SPECIAL
            added[pid] = spec["content"]
            llm_tokens[lid] = spec["content"]
            marker_tokens[pid] = spec
            entry["id"] = pid
            taken.add(pid)
        listed = ", ".join(f"{spec['content']!r} ({entry['id']})" for _, spec, entry in to_add)
        notes.append(f"config: added {listed} to the vocabulary with the rows of the LLM's tokens its config names")
    # A field whose tokens were all not kept keeps its value and is not rewritten.
    new_id = {e["llm_id"]: e["id"] for e in entries}
    remapped = {
        name: [v if new_id[v] is None else new_id[v] for v in value] if isinstance(value, list) else new_id[value]
        for name, value in fields.items()
        if any(new_id[v] is not None for v in (value if isinstance(value, list) else [value]))
    }
    for name, value in fields.items():
        if name in remapped and remapped[name] != value:
            logger.info("config: %s %s → %s", name, value, remapped[name])
    return entries, remapped


def match_vocabularies(
    llm_tokenizer,
    plm_tokenizer,
    *,
    config_tokens: dict[str, int | list[int]] | None = None,
    llm_name: str | None = None,
    plm_name: str | None = None,
) -> Matching:
    """Match the PLM's tokens to the LLM's (see the module docstring for the rules).

    Args:
        llm_tokenizer: the LLM's fast tokenizer.
        plm_tokenizer: the PLM's fast tokenizer (its vocabulary becomes the new model's).
        config_tokens: ``{field: LLM id or ids}`` of the LLM config's token fields (:func:`config_token_fields`),
            whose tokens keep their rows and whose values :attr:`Matching.config_ids` gives anew.
        llm_name / plm_name: how errors name the models (``--llm`` / ``--plm``); default the tokenizers' paths.

    Returns:
        A :class:`Matching`.
    """
    llm_family, llm_prefix = detect_family(llm_tokenizer)
    plm_family, plm_prefix = detect_family(plm_tokenizer)
    llm_special = set(llm_tokenizer.all_special_ids)
    plm_special = set(plm_tokenizer.all_special_ids)

    # A surface that several LLM tokens spell goes to the lowest id among its ordinary tokens: a
    # SentencePiece byte-fallback token <0xNN> (ids 3-258 in Llama-2/Mistral, low in Gemma) spells
    # the same byte as the ordinary token "a" or "▁", but its row is trained only on the characters
    # the vocabulary lacks, so it serves only bytes that no ordinary token spells.
    llm_forms = [
        (normalize_token(tok, llm_family, continuation_prefix=llm_prefix), lid)
        for lid, tok in _vocab_by_id(llm_tokenizer).items()
        if lid not in llm_special
    ]
    llm_index: dict[tuple[bool, bytes], int] = {}
    for form, lid in sorted(llm_forms, key=lambda fl: (fl[0].is_byte, fl[1])):
        llm_index.setdefault(form.key, lid)

    pairs: dict[int, int] = {}
    kinds: dict[int, str] = {}
    roles: dict[str, tuple[int, int]] = {}

    # 1. Special tokens by role. An LLM without a bos (Qwen) or pad gives those roles its eos.
    llm_own = special_roles(llm_tokenizer)
    llm_roles = dict(llm_own)
    for fallback_role in ("bos", "pad"):
        if fallback_role not in llm_roles and "eos" in llm_roles:
            llm_roles[fallback_role] = llm_roles["eos"]
    plm_roles = special_roles(plm_tokenizer)
    for role in ROLES:
        if role in plm_roles and role in llm_roles and plm_roles[role] not in pairs:
            pairs[plm_roles[role]] = llm_roles[role]
            kinds[plm_roles[role]] = KIND_SPECIAL
            roles[role] = (plm_roles[role], llm_roles[role])

    # 1b. The token the new tokenizer prepends: the one with the row of what the LLM's tokenizer prepends
    # (module docstring): the PLM's bos, else its eos (XGLM, OPT), else an added token.
    added: dict[int, str] = {}
    notes: list[str] = []
    llm_tokens: dict[int, str] = {}
    prepends: dict | None = None
    start = llm_start_token(llm_tokenizer)
    if start is not None and "eos" in roles:
        start_text = llm_tokenizer.convert_ids_to_tokens(start)
        llm_bos = llm_own.get("bos")
        carrier = next((r for r in ("bos", "eos") if r in roles and roles[r][1] == start), None)
        if carrier == "eos":
            plm_eos = plm_tokenizer.convert_ids_to_tokens(roles["eos"][0])
            if start == llm_bos:
                notes.append(
                    f"bos: the LLM prepends {start_text!r}, which is also its eos, so the PLM's eos {plm_eos!r} "
                    "is prepended too"
                )
            else:
                bos_text = llm_tokenizer.convert_ids_to_tokens(llm_bos) if llm_bos is not None else None
                kept = ""
                if "bos" in roles:
                    plm_bos = plm_tokenizer.convert_ids_to_tokens(roles["bos"][0])
                    kept = f"; the PLM's {plm_bos!r} keeps the LLM's {bos_text!r} row"
                notes.append(
                    f"bos: the LLM's tokenizer prepends its eos {start_text!r}"
                    + (f", not its bos {bos_text!r}" if bos_text is not None else "")
                    + f", so the new tokenizer prepends the PLM's eos {plm_eos!r} ({roles['eos'][0]}), which has "
                    f"that row, and names it the bos{kept}"
                )
            roles["bos"] = (roles["eos"][0], start)
        elif carrier is None:
            if "bos" in roles:
                why = "no PLM token has its row"
            elif "bos" in plm_roles:
                why = f"the PLM's {plm_tokenizer.convert_ids_to_tokens(roles['eos'][0])!r} plays bos and eos at once"
            else:
                why = "the PLM's tokenizer has no bos"
            llm_tokens[start] = start_text
            text, pid, is_new = _bos_slot(plm_tokenizer, start_text, taken=set(pairs))
            pairs[pid] = start
            kinds[pid] = KIND_SPECIAL
            roles["bos"] = (pid, start)
            if is_new:
                added[pid] = text
                notes.append(
                    f"bos: the LLM's tokenizer prepends {start_text!r} and {why}; added {text!r} as token {pid} "
                    "with the LLM's bos row, prepended by the new tokenizer"
                )
            else:
                notes.append(
                    f"bos: the LLM's tokenizer prepends {start_text!r} and {why}; the PLM's token {text!r} "
                    f"({pid}) becomes the bos, with the LLM's bos row"
                )
        pid = roles["bos"][0]
        token = added[pid] if pid in added else plm_tokenizer.convert_ids_to_tokens(pid)
        prepends = {"id": pid, "token": token, "llm_id": start, "llm_token": start_text}
        if notes:
            logger.info(notes[-1])

    # 2. Every other token by surface.
    forms: dict[int, TokenForm] = {}
    basis: list[int] = []
    new: list[int] = []
    unmapped: list[int] = []
    for pid, tok in sorted(_vocab_by_id(plm_tokenizer).items()):
        form = normalize_token(tok, plm_family, continuation_prefix=plm_prefix)
        forms[pid] = form
        if pid in pairs:
            continue
        if pid in plm_special:
            unmapped.append(pid)
            continue
        kind = None
        lid = None
        if plm_family == WORDPIECE and form.word_start and _is_punctuation(form.text()):
            lid = llm_index.get((False, form.surface))
            kind = KIND_PUNCT if lid is not None else None
        if lid is None:
            lid = llm_index.get(form.key)
            if lid is not None:
                if form.is_byte:  # <0x20> too: a byte-fallback token, though its byte is a space
                    kind = KIND_BYTE
                elif form.surface == b" ":
                    kind = KIND_SPACE
                else:
                    kind = KIND_WORD if form.word_start else KIND_CONTINUATION
        if lid is None:
            new.append(pid)
        else:
            pairs[pid] = lid
            kinds[pid] = kind
            basis.append(pid)

    # 3. The markers of the LLM's chat template: rewritten to a role's PLM token, paired, or added.
    chat = _carry_chat_template(
        llm_tokenizer,
        plm_tokenizer,
        pairs=pairs,
        kinds=kinds,
        roles=roles,
        added=added,
        llm_tokens=llm_tokens,
        new=new,
        unmapped=unmapped,
        notes=notes,
    )

    # 4. The tokens the LLM's config names by id (a multimodal model's image placeholders): kept like markers.
    config_entries, config_ids = _keep_config_tokens(
        llm_tokenizer,
        plm_tokenizer,
        dict(config_tokens or {}),
        llm_name=llm_name if llm_name is not None else getattr(llm_tokenizer, "name_or_path", "?"),
        plm_name=plm_name if plm_name is not None else getattr(plm_tokenizer, "name_or_path", "?"),
        pairs=pairs,
        kinds=kinds,
        roles=roles,
        added=added,
        llm_tokens=llm_tokens,
        marker_tokens=chat.tokens,
        new=new,
        unmapped=unmapped,
        notes=notes,
    )

    plm_size = max(len(plm_tokenizer), max(forms) + 1 if forms else 0)
    m = Matching(
        llm_family=llm_family,
        plm_family=plm_family,
        plm_lowercase=lowercases(plm_tokenizer),
        plm_size=plm_size,
        llm_size=len(llm_tokenizer),
        pairs=pairs,
        kinds=kinds,
        basis=basis,
        new=new,
        unmapped_specials=unmapped,
        forms=forms,
        roles=roles,
        added=added,
        notes=notes,
        llm_tokens=llm_tokens,
        prepends=prepends,
        chat_template=chat.template,
        chat_markers=chat.markers,
        marker_tokens=chat.tokens,
        chat_template_note=chat.note,
        config_tokens=config_entries,
        config_ids=config_ids,
    )
    logger.info(
        "matched %d of %d PLM tokens to the LLM (%s → %s): %s",
        len(pairs),
        plm_size,
        plm_family,
        llm_family,
        m.counts(),
    )
    return m
