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
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from cltx.errors import CltxError

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
            "special_roles": {r: {"plm_id": p, "llm_id": q} for r, (p, q) in self.roles.items()},
        }


def _vocab_by_id(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def match_vocabularies(llm_tokenizer, plm_tokenizer) -> Matching:
    """Match the PLM's tokens to the LLM's (see the module docstring for the rules).

    Args:
        llm_tokenizer: the LLM's fast tokenizer.
        plm_tokenizer: the PLM's fast tokenizer (its vocabulary becomes the new model's).

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
    llm_roles = special_roles(llm_tokenizer)
    for fallback_role in ("bos", "pad"):
        if fallback_role not in llm_roles and "eos" in llm_roles:
            llm_roles[fallback_role] = llm_roles["eos"]
    plm_roles = special_roles(plm_tokenizer)
    for role in ROLES:
        if role in plm_roles and role in llm_roles and plm_roles[role] not in pairs:
            pairs[plm_roles[role]] = llm_roles[role]
            kinds[plm_roles[role]] = KIND_SPECIAL
            roles[role] = (plm_roles[role], llm_roles[role])

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
