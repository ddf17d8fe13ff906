"""Turn a PLM's tokenizer into one fit for causal generation.

A masked-LM tokenizer wraps every text as ``[CLS] text [SEP]``; a causal LM must not see an end
marker after its prompt, and it needs an eos that generation stops on. The new tokenizer keeps the
PLM's vocabulary, normaliser, pre-tokenizer, model and decoder, and replaces the post-processor:
it prepends the bos exactly when the LLM's own tokenizer prepends a token, and never appends anything. Its
bos/eos/pad/unk are the PLM's tokens that play those roles (BERT: ``[CLS]``, ``[SEP]``, ``[PAD]``,
``[UNK]``), whose embedding rows come from the LLM's tokens of the same role. The bos it prepends has the
row of the token the LLM prepends (:func:`llm_start_token`): for XGLM, which prepends its eos ``</s>``,
that is the PLM's eos (BERT's ``[SEP]``), which is then bos and eos at once. Where the PLM has no bos
apart from its eos (GPT-2, T5) and the LLM prepends its bos, the bos is the LLM's bos string added to the
vocabulary as a special token (:attr:`cltx.salt.matching.Matching.added`).

The LLM's chat template goes to the new tokenizer with its markers rewritten for the new vocabulary
(:attr:`cltx.salt.matching.Matching.chat_template`; the rule is in :mod:`cltx.salt.matching`): a marker
that a role's token already carries (SmolLM2's ``<|im_end|>``) is written as that token (``[SEP]``); a
marker the PLM spells, or one added to the vocabulary (ChatML's ``<|im_start|>`` with BERT), becomes an
added token here with the LLM's flags (special or not, lstrip, rstrip; ids after the PLM's and an added
bos, in LLM id order, checked), and the special ones are extra special tokens, so ``all_special_ids``
and ``skip_special_tokens`` know them. Every marker's text in the template encodes to its one token (checked).

A WordPiece decoder is replaced by one that puts the space before every word-start token, the first
included (as byte-level BPE and SentencePiece tokens carry theirs): a WordPiece decoder joins tokens
with spaces *between* them, so text decoded from the generated tokens alone — what transformers'
text-generation pipeline appends to the prompt — lost the space at the prompt boundary ("… France
isthe capital"). The decoded text of a whole sequence now starts with that space. SentencePiece
decoders that drop the first token's ``▁`` (Metaspace with a prepend scheme, a leading ``Strip``)
keep it for the same reason.
"""

from __future__ import annotations

import json
import logging
import re

from cltx.errors import CltxError

logger = logging.getLogger(__name__)


def llm_start_token(llm_tokenizer) -> int | None:
    """The special token the LLM's tokenizer puts in front of a plain text, or None.

    The bos for Llama and Gemma, the eos ``</s>`` for XGLM (trained with ``</s>`` at the start of every
    document; its bos ``<s>`` is never prepended), the shared ``</s>`` for OPT, nothing for Qwen2.
    """
    ids = list(llm_tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(llm_tokenizer("a", add_special_tokens=False)["input_ids"])
    if not plain or len(ids) <= len(plain):
        return None
    at = next((i for i in range(len(ids) - len(plain) + 1) if ids[i : i + len(plain)] == plain), None)
    if not at:  # nothing in front of the text (or the text itself changed: then no telling)
        return None
    return int(ids[0])


def _spaced_wordpiece_decoder(backend) -> bool:
    """Give a WordPiece decoder's word-start tokens their own leading space (see the module docstring).

    Returns whether the replaced decoder cleaned up spaces (`` .`` → ``.``) itself, which the new
    tokenizer's ``clean_up_tokenization_spaces`` then does instead (False when nothing was replaced).
    """
    from tokenizers import Regex, decoders

    spec = json.loads(backend.to_str()).get("decoder") or {}
    if spec.get("type") != "WordPiece":
        return False
    prefix = spec.get("prefix", "##")
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(Regex(f"^(?!{re.escape(prefix)})"), " "),
            decoders.Replace(Regex(f"^{re.escape(prefix)}"), ""),
            decoders.Fuse(),
        ]
    )
    return bool(spec.get("cleanup", True))


def _keep_first_space(spec: dict | None) -> dict | None:
    """A SentencePiece-style decoder that keeps the leading space of the first token (see the module docstring).

    A Metaspace decoder whose pre-tokenizer prepends ``▁`` (XLM-R, CamemBERT, T5: ``prepend_scheme``
    ``always``/``first``, or the older ``add_prefix_space``) drops the ``▁`` of the first token it
    decodes, and so does a ``Strip`` of one leading space (Llama-2-style decoders): the text of the
    generated tokens alone then lost its space at the prompt boundary ("… to theharbour").
    """
    if not isinstance(spec, dict):
        return spec
    kind = spec.get("type")
    if kind == "Metaspace":
        spec = dict(spec)
        if "prepend_scheme" in spec:
            spec["prepend_scheme"] = "never"
        if "add_prefix_space" in spec:
            spec["add_prefix_space"] = False
        return spec
    if kind == "Sequence":
        steps = []
        for step in spec.get("decoders") or []:
            if isinstance(step, dict) and step.get("type") == "Strip" and step.get("content") == " ":
                if not step.get("stop"):
                    continue
                step = {**step, "start": 0}
            steps.append(_keep_first_space(step))
        return {**spec, "decoders": steps}
    return spec


def add_token(backend, spec: dict) -> None:
    """Add one token to a ``tokenizers`` backend: ``spec`` is ``{"content", "special", "lstrip", "rstrip",
    "single_word"}`` (only ``content`` needed; special by default), never normalised (matched on the raw text).

    A token the backend has already (a PLM's added token) is updated to these flags and keeps its id.
    """
    from tokenizers import AddedToken

    token = AddedToken(
        spec["content"],
        special=bool(spec.get("special", True)),
        normalized=False,
        lstrip=bool(spec.get("lstrip", False)),
        rstrip=bool(spec.get("rstrip", False)),
        single_word=bool(spec.get("single_word", False)),
    )
    if token.special:
        backend.add_special_tokens([token])
    else:
        backend.add_tokens([token])


def _max_length(llm_tokenizer, llm_config) -> int:
    n = getattr(llm_tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 10**8:
        return n
    text_config = llm_config.get_text_config() if hasattr(llm_config, "get_text_config") else llm_config
    n = getattr(text_config, "max_position_embeddings", None)
    return int(n) if n else 2048


def causal_tokenizer(
    plm_tokenizer,
    llm_tokenizer,
    roles: dict[str, tuple[int, int]],
    llm_config,
    *,
    prepend: bool,
    added: dict[int, str] | None = None,
    markers: dict[int, dict] | None = None,
    chat_template=None,
):
    """Build the new model's tokenizer.

    Args:
        plm_tokenizer: the PLM's fast tokenizer.
        llm_tokenizer: the LLM's fast tokenizer (for padding side and max length).
        roles: ``{role: (plm_id, llm_id)}`` from :class:`cltx.salt.matching.Matching`.
        llm_config: the LLM's config.
        prepend: whether the LLM's tokenizer prepends a token (:attr:`cltx.salt.matching.Matching.prepends`
            is set); the new tokenizer then prepends its bos, which the matching gave that token's row.
        added: ``{id: token}`` of :attr:`cltx.salt.matching.Matching.added`: special tokens the new
            vocabulary has beyond the PLM's (the LLM's bos where the PLM has none apart from its eos, the
            markers of its chat template that no PLM token carries).
        markers: ``{id: {"content", "special", "lstrip", "rstrip", "single_word"}}`` of
            :attr:`cltx.salt.matching.Matching.marker_tokens`: chat-template markers made added tokens.
        chat_template: the new tokenizer's chat template (:attr:`cltx.salt.matching.Matching.chat_template`),
            or None.

    Returns:
        A ``PreTrainedTokenizerFast`` with bos/eos/pad/unk set and no [CLS]/[SEP] wrapping.
    """
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from cltx.salt.matching import chat_template_sources

    if "eos" not in roles:
        raise CltxError(
            f"plm={getattr(plm_tokenizer, 'name_or_path', '?')!r}: its tokenizer has no eos or [SEP] token, so the "
            "new model could not stop generating; fix: use a PLM whose tokenizer defines eos_token or sep_token"
        )
    spec = json.loads(plm_tokenizer.backend_tokenizer.to_str())
    spec["decoder"] = _keep_first_space(spec.get("decoder"))
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.no_truncation()
    backend.no_padding()
    cleanup = _spaced_wordpiece_decoder(backend)
    added = dict(added or {})

    def convert(tid: int) -> str:
        return added[tid] if tid in added else plm_tokenizer.convert_ids_to_tokens(tid)

    bos = convert(roles["bos"][0]) if "bos" in roles else None
    markers = dict(markers or {})
    sources = chat_template_sources(chat_template) or {}
    # Role tokens that the chat template writes out (the markers rewritten to them): one token each.
    in_template = {pid for pid, _ in roles.values() if any(convert(pid) in src for src in sources.values())}
    # An added bos, or a PLM token of the LLM's bos string that becomes the bos, is made a special token, so
    # that it is never split, and skip_special_tokens drops it; template markers keep the LLM's flags. Added
    # tokens go in id order, as the matching numbered them (added_token_ids).
    specials = backend.get_added_tokens_decoder()
    for tid in sorted({*added, *markers, *in_template, *([roles["bos"][0]] if bos is not None else [])}):
        if tid in markers:
            text = markers[tid]["content"]
            add_token(backend, markers[tid])
        else:
            text = convert(tid)
            if not (tid in specials and specials[tid].special):
                add_token(backend, {"content": text, "special": True})
        if backend.token_to_id(text) != tid:
            raise RuntimeError(
                f"the new tokenizer gave {text!r} id {backend.token_to_id(text)}, not {tid} (a bug: please report it)"
            )
    for tid in sorted({*markers, *in_template}):
        text = markers[tid]["content"] if tid in markers else convert(tid)
        got = backend.encode(text, add_special_tokens=False).ids
        if got != [tid]:
            raise RuntimeError(f"the new tokenizer splits the marker {text!r} into {got}, not [{tid}] (a bug)")
    eos = convert(roles["eos"][0])
    pad = convert(roles["pad"][0]) if "pad" in roles else eos
    unk = convert(roles["unk"][0]) if "unk" in roles else None
    if prepend and bos is not None:
        backend.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, roles["bos"][0])]
        )
    else:
        backend.post_processor = TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    kwargs = {}
    mask = getattr(plm_tokenizer, "mask_token", None)
    if mask:
        kwargs["mask_token"] = mask
    decoder = backend.get_added_tokens_decoder()
    extra = [decoder[t] for t in sorted(markers) if markers[t].get("special", True)]
    if extra:
        kwargs["extra_special_tokens"] = extra
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        model_input_names=["input_ids", "attention_mask"],
        padding_side=getattr(llm_tokenizer, "padding_side", "right"),
        model_max_length=_max_length(llm_tokenizer, llm_config),
        clean_up_tokenization_spaces=cleanup or bool(getattr(plm_tokenizer, "clean_up_tokenization_spaces", False)),
        **kwargs,
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


# Loaded by AutoTokenizer only where the tokenizer_config's auto_map names it (see save_tokenizer): a
# subclass without its own __init__, so transformers reads tokenizer.json as it is.
SHIM_MODULE = "tokenization_cltx"
SHIM_SOURCE = '''"""Written by cltx salt: load tokenizer.json as saved (see the auto_map in tokenizer_config.json)."""

from transformers import TokenizersBackend


class CltxTokenizer(TokenizersBackend):
    pass
'''


def _pipeline(tokenizer) -> dict:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return {k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "model", "decoder", "post_processor")}


def _reload_differs(out, want: dict) -> str | None:
    """The class ``AutoTokenizer.from_pretrained(out)`` picks when its pipeline differs from ``want``."""
    from transformers import AutoTokenizer

    got = AutoTokenizer.from_pretrained(out)
    diff = [k for k, v in _pipeline(got).items() if v != want[k]]
    return f"{type(got).__name__} ({', '.join(diff)} differ)" if diff else None


def save_tokenizer(tokenizer, out) -> dict:
    """Save the new tokenizer into ``out`` so that ``AutoTokenizer.from_pretrained(out)`` loads it unchanged.

    transformers 5 rebuilds a model type's own tokenizer class from the vocabulary alone (its
    normaliser, pre-tokenizer and decoder hard-coded), and for some model types (qwen2, phi3, jamba,
    … its ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``) it picks that class over the saved
    ``tokenizer_class``: a Qwen2 model given XLM-R's vocabulary reloaded with Qwen's byte-level
    pipeline and tokenised every word letter by letter. Such a folder gets an ``auto_map`` entry
    naming a two-line subclass of ``TokenizersBackend`` saved beside it, which loads
    ``tokenizer.json`` as it is (transformers skips remote code for those model types unless
    ``trust_remote_code=True``, and with it runs the subclass).

    Returns:
        ``{"auto_tokenizer": "as saved" | "auto_map" | <what still differs>}`` for the report.
    """
    from pathlib import Path

    out = Path(out)
    tokenizer.save_pretrained(out)
    want = _pipeline(tokenizer)
    if _reload_differs(out, want) is None:
        return {"auto_tokenizer": "as saved"}
    conf_path = out / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    conf["auto_map"] = {"AutoTokenizer": [None, f"{SHIM_MODULE}.CltxTokenizer"]}
    conf_path.write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE, encoding="utf-8")
    still = _reload_differs(out, want)
    if still is None:
        return {"auto_tokenizer": "auto_map"}
    logger.warning(
        "AutoTokenizer.from_pretrained(%r) loads %s, not the tokenizer saved there; load it with "
        "PreTrainedTokenizerFast.from_pretrained(%r) instead",
        str(out),
        still,
        str(out),
    )
    return {"auto_tokenizer": still}
