"""``cltx salt`` end to end across the tokenizer and model families real users pass.

PLMs: RoBERTa (byte-level BPE, ``<s> $A </s>``, with and without ``add_prefix_space``), XLM-R and
CamemBERT (SentencePiece Unigram, Metaspace), cased WordPiece (BERTimbau), GPT-2 (causal, no cls/sep).
LLMs: Llama-2 (SentencePiece BPE with ``<0xNN>`` byte fallback), a Unigram model with byte fallback,
Qwen2 (byte-level BPE, no bos at all), Gemma (tied, bos prepended), Gemma-3 (text config on its own,
and nested in a multimodal config). Tokenizers are trained here and wrapped in transformers' own
tokenizer classes, so their pipelines are the ones transformers builds for the real models.

Every run is checked the same way (:func:`_check_run`): the saved folder loads with the Auto
classes, tokenises exactly like the PLM, decodes back to the (normalised) text, decoding is additive
over any split of the ids, ``generate`` stops on the eos, transformers' text-generation pipeline
does not glue its output to the prompt, overlap rows are the LLM's rows bitwise, and the report's
match counts agree with an overlap rebuilt here from the vocabularies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_salt_pipeline import PLM_ONLY, _ForceAt, corpus

SP = "\u2581"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
# Text every family can spell (ASCII; what the PLM corpora hold); the last one has PLM-only words.
TEXTS = ["Walk to the harbour, then walk back.", "The old house by the river", "a quick meadow; the kettle!"]


# ------------------------------------------------------------------------------------ tokenizers


def _train_bpe(pre_tokenizer, *, vocab_size: int, lines, specials=(), alphabet=None) -> tuple[dict, list]:
    """A BPE vocabulary and merges trained on ``lines`` split by ``pre_tokenizer``."""
    from tokenizers import Tokenizer, models, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=alphabet or [], show_progress=False
    )
    tk.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tk.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _train_unigram(*, vocab_size: int, lines, prepend: str = "always") -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme=prepend)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False, unk_token=None)
    tk.train_from_iterator(lines, trainer=trainer)
    return [(p, s) for p, s in json.loads(tk.to_str())["model"]["vocab"]]


def _prepend(specials: list[str], vocab: dict, extra: list[str] = ()) -> dict:
    """``specials``, then ``extra`` (byte tokens), then ``vocab``'s other tokens, renumbered."""
    out = {t: i for i, t in enumerate([*specials, *extra])}
    for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        out.setdefault(t, len(out))
    return out


def _byte_level_pretok():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False), pre_tokenizers.ByteLevel.alphabet()


def roberta_tokenizer(add_prefix_space: bool = False):
    from transformers import RobertaTokenizer

    pre, alpha = _byte_level_pretok()
    vocab, merges = _train_bpe(pre, vocab_size=420, lines=corpus(1, PLM_ONLY), alphabet=alpha)
    vocab = _prepend(["<s>", "<pad>", "</s>", "<unk>"], vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=merges, add_prefix_space=add_prefix_space)


def xlmr_tokenizer(cls_name: str = "XLMRobertaTokenizer"):
    import transformers

    pieces = _train_unigram(vocab_size=300, lines=corpus(1, PLM_ONLY))
    if cls_name == "CamembertTokenizer":
        specials = ["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED", "<s>", "</s>"]
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = [(t, 0.0) for t in specials] + [(p, s) for p, s in pieces if p not in specials] + [("<mask>", 0.0)]
    return getattr(transformers, cls_name)(vocab=vocab)


def bert_cased_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import BertTokenizer

    vocab, _ = _train_wordpiece(pre_tokenizers.BertPreTokenizer(), lines=corpus(1, PLM_ONLY))
    return BertTokenizer(vocab=vocab, do_lower_case=False)


def _train_wordpiece(pre, *, lines, vocab_size: int = 300):
    from tokenizers import Tokenizer, models, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.pre_tokenizer = pre
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk.train_from_iterator(
        lines, trainer=trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    )
    return tk.get_vocab(), None


def gpt2_tokenizer():
    from transformers import GPT2Tokenizer

    pre, alpha = _byte_level_pretok()
    vocab, merges = _train_bpe(pre, vocab_size=400, lines=corpus(1, PLM_ONLY), alphabet=alpha)
    vocab = _prepend([], vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def llama2_tokenizer():
    """Llama-2/Mistral: SentencePiece BPE, ``<0xNN>`` byte fallback, bos prepended, ``▁`` before the first word."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaTokenizer

    pre = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="first")
    vocab, merges = _train_bpe(pre, vocab_size=400, lines=corpus(0, []))
    vocab = _prepend(["<unk>", "<s>", "</s>"], vocab, BYTE_TOKENS)
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def gemma_tokenizer():
    """Gemma: SentencePiece BPE with byte fallback, spaces → ``▁`` (no dummy prefix), bos prepended."""
    from tokenizers import pre_tokenizers
    from transformers import GemmaTokenizer

    pre = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="never")
    vocab, merges = _train_bpe(pre, vocab_size=400, lines=corpus(0, []))
    vocab = _prepend(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], vocab, BYTE_TOKENS)
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def unigram_fallback_tokenizer():
    """A SentencePiece Unigram model with byte fallback (``byte_fallback=True``), bos prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = _train_unigram(vocab_size=300, lines=corpus(0, []), prepend="first")
    specials = ["<unk>", "<s>", "</s>"]
    vocab = [(t, 0.0) for t in [*specials, *BYTE_TOKENS]] + [(p, s) for p, s in pieces if p not in specials]
    tk = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence(
        [decoders.Replace(SP, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def qwen2_tokenizer():
    """Qwen2: byte-level BPE behind a regex split, no bos token at all, pad = eos = ``<|endoftext|>``."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _train_bpe(pre, vocab_size=420, lines=corpus(0, []), alphabet=pre_tokenizers.ByteLevel.alphabet())
    vocab = _prepend([], vocab)
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[t] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=merges)


# ------------------------------------------------------------------------------------ models


def _tiny(**kw) -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **kw,
    )


def _save_llm(path: Path, model, tok) -> Path:
    with torch.no_grad():  # larger-than-default rows, so that fits are far from zero
        model.get_input_embeddings().weight.normal_(0, 0.5)
        out = model.get_output_embeddings().weight
        if out.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            out.normal_(0, 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_llm(path: Path, family: str) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama2":
        tok = llama2_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, **ids, **_tiny()))
    elif family == "unigram":
        tok = unigram_fallback_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, **ids, **_tiny()))
    elif family == "qwen2":
        tok = qwen2_tokenizer()
        eos = tok.eos_token_id  # the real configs name <|endoftext|> as bos too; the tokenizer never adds it
        ids = dict(bos_token_id=eos, eos_token_id=eos)
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, **ids, **_tiny()))
    elif family == "gemma":
        tok = gemma_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = tf.GemmaForCausalLM(tf.GemmaConfig(vocab_size=len(tok), head_dim=8, **ids, **_tiny()))
    elif family == "gemma3-text":
        tok = gemma_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg = tf.Gemma3TextConfig(vocab_size=len(tok), head_dim=8, sliding_window=16, **ids, **_tiny())
        model = tf.Gemma3ForCausalLM(cfg)
    elif family == "gemma3-nested":
        tok = gemma_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tf.Gemma3TextConfig(vocab_size=len(tok), head_dim=8, sliding_window=16, **ids, **_tiny())
        vision = tf.SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ).to_dict()
        image = {k: len(tok) - 1 for k in ("image_token_index", "boi_token_index", "eoi_token_index")}
        cfg = tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision, mm_tokens_per_image=4, **image, **ids)
        model = tf.Gemma3ForConditionalGeneration(cfg)
    else:
        raise ValueError(family)
    return _save_llm(path, model, tok)


def build_plm(path: Path, family: str) -> Path:
    import transformers as tf

    torch.manual_seed(1)
    small = dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    if family in ("roberta", "roberta-prefix"):
        tok = roberta_tokenizer(add_prefix_space=family == "roberta-prefix")
        cfg = tf.RobertaConfig(vocab_size=len(tok), max_position_embeddings=70, pad_token_id=tok.pad_token_id, **small)
        model = tf.RobertaModel(cfg)
    elif family in ("xlmr", "camembert"):
        tok = xlmr_tokenizer("CamembertTokenizer" if family == "camembert" else "XLMRobertaTokenizer")
        cls = tf.CamembertConfig if family == "camembert" else tf.XLMRobertaConfig
        cfg = cls(vocab_size=len(tok), max_position_embeddings=70, pad_token_id=tok.pad_token_id, **small)
        model = (tf.CamembertModel if family == "camembert" else tf.XLMRobertaModel)(cfg)
    elif family == "bert-cased":
        tok = bert_cased_tokenizer()
        model = tf.BertModel(tf.BertConfig(vocab_size=len(tok), max_position_embeddings=64, **small))
    elif family == "gpt2":
        tok = gpt2_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        cfg = tf.GPT2Config(vocab_size=len(tok), n_embd=24, n_layer=1, n_head=2, n_positions=64, **ids)
        model = tf.GPT2Model(cfg)
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


LLMS = ("llama2", "unigram", "qwen2", "gemma", "gemma3-text", "gemma3-nested")
PLMS = ("roberta", "roberta-prefix", "xlmr", "camembert", "bert-cased", "gpt2")
# (llm, plm): every PLM family against the Llama-style byte-level BPE LLM of test_salt_pipeline, and
# every LLM family against a PLM of another family (SentencePiece ↔ SentencePiece, bytes ↔ <0xNN>, …).
RUNS = [("llama-bbpe", p) for p in PLMS] + [
    ("llama-bbpe", "llama2"),  # a Llama-2-style PLM: <0xNN> ↔ bytes, a decoder that strips the first space
    ("llama2", "xlmr"),
    ("llama2", "roberta"),
    ("unigram", "bert-cased"),
    ("qwen2", "roberta"),
    ("qwen2", "xlmr"),
    ("gemma", "xlmr"),
    ("gemma3-text", "bert-cased"),
    ("gemma3-nested", "roberta"),
]


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """Every model of RUNS, built once (lazily: a ``-k`` selection builds only what it needs)."""
    import test_salt_pipeline as pipeline

    root = tmp_path_factory.mktemp("families")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name == "llama-bbpe":
                cache[name] = pipeline.build_llm(root / name)
            elif name in LLMS:
                cache[name] = build_llm(root / name, name)
            else:
                cache[name] = build_plm(root / name, name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def family_runs(family_models, tmp_path_factory):
    from cltx.salt import SaltConfig, transfer_vocabulary

    root = tmp_path_factory.mktemp("families-out")
    cache: dict[tuple[str, str], Path] = {}

    def get(llm: str, plm: str) -> Path:
        if (llm, plm) not in cache:
            out = root / f"{llm}--{plm}"
            cfg = SaltConfig(llm=str(family_models(llm)), plm=str(family_models(plm)), device="cpu", holdout=0)
            transfer_vocabulary(cfg, out)
            cache[llm, plm] = out
        return cache[llm, plm]

    return get


# ------------------------------------------------------------------------------------ the oracle


def _form(token: str, family: str) -> tuple[str, bool, bytes]:
    """``(kind, word_start, bytes)`` of a token of these test vocabularies, written out per family."""
    from cltx.salt.matching import unicode_to_bytes

    if family == "bbpe":
        raw = bytes(unicode_to_bytes()[c] for c in token)
        if raw == b" ":
            return "space", False, raw
        return ("word", True, raw[1:]) if raw.startswith(b" ") else ("cont", False, raw)
    if family == "sp":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return "byte", False, bytes([int(token[3:5], 16)])
        if token == SP:
            return "space", False, b" "
        if token.startswith(SP):
            return "word", True, token[1:].encode()
        return "cont", False, token.encode()
    if token.startswith("##"):  # WordPiece
        return "cont", False, token[2:].encode()
    if len(token) == 1 and not token.isalnum():
        return "punct", False, token.encode()
    return "word", True, token.encode()


def _family_of(tok) -> str:
    spec = json.loads(tok.backend_tokenizer.to_str())
    if spec["model"]["type"] == "WordPiece":
        return "wp"
    return "bbpe" if "ByteLevel" in json.dumps(spec) else "sp"


def _added_bos(llm_tok, plm_tok) -> tuple[str, int] | None:
    """``(token, llm_id)`` of the bos the new vocabulary adds, or None: the LLM prepends a bos (not its eos)
    and the PLM has no bos/cls apart from its eos, nor a token spelling the LLM's bos (none in these tests)."""
    bos = llm_tok.bos_token_id
    if bos is None or bos == llm_tok.eos_token_id or llm_tok("a")["input_ids"][0] != bos:
        return None
    start = plm_tok.bos_token_id if plm_tok.bos_token_id is not None else plm_tok.cls_token_id
    end = plm_tok.eos_token_id if plm_tok.eos_token_id is not None else plm_tok.sep_token_id
    if start is not None and start != end:
        return None
    assert llm_tok.bos_token not in plm_tok.get_vocab()
    return llm_tok.bos_token, bos


def _expected_overlap(llm_tok, plm_tok) -> tuple[dict[int, int], dict[str, int]]:
    """``{plm_id: llm_id}`` and the match counts, rebuilt from the two vocabularies.

    Specials go by role (bos/cls, eos/sep, pad, unk; an LLM without bos or pad lends its eos). A
    surface that several LLM tokens spell goes to the LLM's ordinary token, not its ``<0xNN>`` byte
    token: byte fallback rows are trained on the characters the vocabulary lacks.
    """

    def role(tok, *names):
        for n in names:
            if getattr(tok, f"{n}_token", None) is not None:
                return tok.convert_tokens_to_ids(getattr(tok, f"{n}_token"))
        return None

    llm_roles = {r: role(llm_tok, r) for r in ("bos", "eos", "pad", "unk")}
    for r in ("bos", "pad"):
        if llm_roles[r] is None:
            llm_roles[r] = llm_roles["eos"]
    plm_roles = {
        r: role(plm_tok, r, alt) for r, alt in (("bos", "cls"), ("eos", "sep"), ("pad", "pad"), ("unk", "unk"))
    }
    overlap, counts = {}, {"special": 0, "word_start": 0, "continuation": 0, "punctuation": 0, "byte": 0, "space": 0}
    for r in ("eos", "bos", "pad", "unk"):
        p, q = plm_roles[r], llm_roles[r]
        if p is not None and q is not None and p not in overlap:
            overlap[p] = q
            counts["special"] += 1
    if (added := _added_bos(llm_tok, plm_tok)) is not None:
        overlap[len(plm_tok)] = added[1]
        counts["special"] += 1

    lf, pf = _family_of(llm_tok), _family_of(plm_tok)
    llm_special, plm_special = set(llm_tok.all_special_ids), set(plm_tok.all_special_ids)
    index: dict[tuple[bool, bytes], tuple[int, int]] = {}  # key → (is byte token, id): the lowest wins
    for t, i in llm_tok.get_vocab().items():
        if i in llm_special:
            continue
        kind, ws, raw = _form(t, lf)
        index[ws, raw] = min(index.get((ws, raw), (2, 0)), (kind == "byte", i))
    names = {"word": "word_start", "cont": "continuation", "punct": "punctuation", "byte": "byte", "space": "space"}
    for t, p in plm_tok.get_vocab().items():
        if p in plm_special or p in overlap:
            continue
        kind, ws, raw = _form(t, pf)
        hit = index.get((ws, raw))
        if kind == "punct" and hit is None:
            kind, ws = "word", True  # a WordPiece punctuation token falls back to the word-start form
            hit = index.get((ws, raw))
        if hit is not None:
            overlap[p] = hit[1]
            counts[names[kind]] += 1
    return overlap, counts


# ------------------------------------------------------------------------------------ the checks


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _rows(model) -> np.ndarray:
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    rows = [inp.detach().double().numpy()]
    if out.data_ptr() != inp.data_ptr():
        rows.append(out.detach().double().numpy())
    return np.concatenate(rows, axis=1)


def _normalised(plm_tok, text: str) -> str:
    norm = plm_tok.backend_tokenizer.normalizer
    return norm.normalize_str(text) if norm is not None else text


class _Script:
    """A logits processor that makes generation produce ``ids`` after the prompt, then ``eos``."""

    def __init__(self, prompt_len: int, ids: list[int], eos: int):
        self.prompt_len, self.ids, self.eos = prompt_len, ids, eos

    def __call__(self, input_ids, scores):
        i = input_ids.shape[1] - self.prompt_len
        want = self.ids[i] if i < len(self.ids) else self.eos
        scores[:] = -float("inf")
        scores[:, want] = 0.0
        return scores


def check_tokenizer(out: Path, llm: Path, plm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    llm_tok, plm_tok = AutoTokenizer.from_pretrained(llm), AutoTokenizer.from_pretrained(plm)
    # The bos goes in front exactly when the LLM's tokenizer puts its own there; a PLM with no bos apart from
    # its eos (GPT-2's one special token plays both) gets the LLM's bos string as one added token.
    adds_bos = llm_tok.bos_token_id is not None and llm_tok("a")["input_ids"][0] == llm_tok.bos_token_id
    added = _added_bos(llm_tok, plm_tok)
    assert len(tok) == len(plm_tok) + (added is not None)
    if added is not None:
        assert (tok.bos_token, tok.bos_token_id) == (added[0], len(plm_tok))
    for text in TEXTS:
        body = tok(text, add_special_tokens=False)["input_ids"]
        assert body == plm_tok(text, add_special_tokens=False)["input_ids"], (text, tok.convert_ids_to_tokens(body))
        assert tok.unk_token_id not in body, text
        full = tok(text)["input_ids"]
        assert full == ([tok.bos_token_id] if adds_bos else []) + body, (text, tok.convert_ids_to_tokens(full))
        whole = tok.decode(body)
        # WordPiece keeps no spaces: its decoders put one before every punctuation mark but , . ! ? (as the PLM's own).
        expected = plm_tok.decode(body).strip() if _family_of(plm_tok) == "wp" else _normalised(plm_tok, text)
        assert whole.strip() == expected, (text, whole)
        assert tok.decode(full, skip_special_tokens=True) == whole, (text, whole)
        # Additive over any split: generated tokens decoded alone append to the prompt's text.
        assert all(tok.decode(body[:i]) + tok.decode(body[i:]) == whole for i in range(1, len(body))), (
            text,
            [tok.decode(body[:i]) + "|" + tok.decode(body[i:]) for i in range(1, 4)],
        )


def check_config(out: Path) -> None:
    model, tok = _load(out)
    text = model.config.get_text_config()
    assert text.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    for conf in (model.config, text, model.generation_config):
        eos = conf.eos_token_id if isinstance(conf.eos_token_id, list) else [conf.eos_token_id]
        got = (eos[0], conf.bos_token_id, conf.pad_token_id)
        assert got == (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id), (type(conf).__name__, got)
    saved = json.loads((out / "config.json").read_text())
    nested = saved.get("text_config", saved)
    assert nested["vocab_size"] == len(tok)


def check_generation(out: Path, plm: Path) -> None:
    from transformers import AutoTokenizer, LogitsProcessorList, pipeline

    model, tok = _load(out)
    plm_tok = AutoTokenizer.from_pretrained(plm)
    prompt, rest = "Walk to the", " harbour"
    enc = tok(prompt, return_tensors="pt")
    n = enc["input_ids"].shape[1]
    body = tok(prompt + rest, add_special_tokens=False)["input_ids"]
    cont = body[len(tok(prompt, add_special_tokens=False)["input_ids"]) :]
    assert cont and tok.decode(cont).strip() == _normalised(plm_tok, rest).strip()
    eos = tok.eos_token_id
    with torch.no_grad():
        never_eos = LogitsProcessorList([_ForceAt(-1, eos, [eos])])
        free = model.generate(**enc, max_new_tokens=4, do_sample=False, logits_processor=never_eos)
        assert free.shape[1] == n + 4
        stop = model.generate(
            **enc, max_new_tokens=12, do_sample=False, logits_processor=LogitsProcessorList([_Script(n, cont, eos)])
        )
    assert stop[0, n:].tolist() == [*cont, eos]  # ends on the eos from generation_config
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    res = gen(prompt, max_new_tokens=12, do_sample=False, logits_processor=LogitsProcessorList([_Script(n, cont, eos)]))
    assert res[0]["generated_text"] == prompt + _normalised(plm_tok, rest), res


def check_rows(out: Path, llm: Path, plm: Path) -> None:
    from transformers import AutoTokenizer

    llm_model, llm_tok = _load(llm)
    new_model, _ = _load(out)
    overlap, counts = _expected_overlap(llm_tok, AutoTokenizer.from_pretrained(plm))
    report = json.loads((out / "salt_report.json").read_text())
    assert report["match_counts"] == counts, (report["match_counts"], counts)
    assert report["overlap"] == len(overlap) > 50, (report["overlap"], len(overlap))
    y_llm, y_new = _rows(llm_model), _rows(new_model)
    differ = [p for p, q in overlap.items() if not np.array_equal(y_new[p], y_llm[q])]
    assert not differ, [(p, overlap[p]) for p in differ[:10]]
    assert np.isfinite(y_new).all()


CHECKS = {"tokenizer": check_tokenizer, "config": check_config, "generation": check_generation, "rows": check_rows}


# ------------------------------------------------------------------------------------ tests


_IDS = [f"{llm}-x-{plm}" for llm, plm in RUNS]


@pytest.mark.parametrize(("llm", "plm"), RUNS, ids=_IDS)
def test_tokenizer_is_the_plms_and_decodes_additively(family_runs, family_models, llm, plm):
    check_tokenizer(family_runs(llm, plm), family_models(llm), family_models(plm))


@pytest.mark.parametrize(("llm", "plm"), RUNS, ids=_IDS)
def test_config_vocab_size_and_special_ids(family_runs, llm, plm):
    check_config(family_runs(llm, plm))


@pytest.mark.parametrize(("llm", "plm"), RUNS, ids=_IDS)
def test_generate_and_pipeline_stop_on_eos_unglued(family_runs, family_models, llm, plm):
    check_generation(family_runs(llm, plm), family_models(plm))


@pytest.mark.parametrize(("llm", "plm"), RUNS, ids=_IDS)
def test_overlap_rows_are_the_llms_and_counts_match(family_runs, family_models, llm, plm):
    check_rows(family_runs(llm, plm), family_models(llm), family_models(plm))


def test_byte_fallback_tokens_serve_only_bytes_without_an_ordinary_token(family_models):
    """Llama-2's <0x61> and its "a" spell the same byte: the PLM's "a" must get the row of "a"."""
    from transformers import AutoTokenizer

    from cltx.salt.matching import match_vocabularies

    llm_tok = AutoTokenizer.from_pretrained(family_models("llama2"))
    plm_tok = AutoTokenizer.from_pretrained(family_models("roberta"))
    m = match_vocabularies(llm_tok, plm_tok)
    llm_vocab = llm_tok.get_vocab()
    assert m.pairs[plm_tok.convert_tokens_to_ids("a")] == llm_vocab["a"] != llm_vocab["<0x61>"]
    # A byte with no ordinary token (0xC3, the lead byte of é) still matches the byte-fallback token.
    assert m.pairs[plm_tok.convert_tokens_to_ids("\u00c3")] == llm_vocab["<0xC3>"]


def test_qwen2_folder_reloads_its_own_tokenizer(family_runs, monkeypatch, tmp_path):
    """transformers rebuilds a qwen2 model's tokenizer as Qwen2Tokenizer from the vocabulary alone: the
    saved folder names a subclass that reads tokenizer.json as it is, with and without remote code."""
    import sys

    import transformers.dynamic_module_utils as dyn
    from transformers import AutoTokenizer

    out = family_runs("qwen2", "xlmr")
    for plm in ("xlmr", "roberta"):  # with RoBERTa: Qwen's regex split and NFC instead of the PLM's
        assert json.loads((family_runs("qwen2", plm) / "salt_report.json").read_text())["auto_tokenizer"] == "auto_map"
    assert json.loads((family_runs("llama2", "xlmr") / "salt_report.json").read_text())["auto_tokenizer"] == "as saved"
    assert not (family_runs("llama2", "xlmr") / "tokenization_cltx.py").exists()
    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # trust_remote_code copies the module
    monkeypatch.setattr(sys, "path", list(sys.path))
    expected = ["\u2581W", "alk", "\u2581to"]
    for trust in (None, True):
        tok = AutoTokenizer.from_pretrained(out, trust_remote_code=trust)
        assert tok.convert_ids_to_tokens(tok("Walk to")["input_ids"]) == expected, (trust, type(tok).__name__)


def _vocab_txt_folder(src: Path, plm: Path, tokenizer_config: str | None) -> None:
    import shutil

    from transformers import AutoTokenizer

    plm.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, plm / f)
    vocab = AutoTokenizer.from_pretrained(src).get_vocab()
    (plm / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    if tokenizer_config is not None:
        (plm / "tokenizer_config.json").write_text(tokenizer_config)


def test_bert_folder_with_only_vocab_txt(family_models, tmp_path):
    """BERTimbau-style folders ship vocab.txt and tokenizer_config.json, no tokenizer.json."""
    from cltx.salt import SaltConfig, transfer_vocabulary

    src, plm = family_models("bert-cased"), tmp_path / "bert-vocab-txt"
    _vocab_txt_folder(src, plm, '{"tokenizer_class": "BertTokenizer", "do_lower_case": false}')
    llm, out = family_models("llama-bbpe"), tmp_path / "out"
    transfer_vocabulary(SaltConfig(llm=str(llm), plm=str(plm), device="cpu", holdout=0, method="mean"), out)
    check_tokenizer(out, llm, plm)
    check_rows(out, llm, plm)
    assert not any("vocab.txt" in n for n in json.loads((out / "salt_report.json").read_text())["notes"])


@pytest.mark.parametrize("config", [None, '{"tokenizer_class": "BertTokenizer"}'])
def test_cased_vocab_txt_without_a_lower_case_setting_loads_cased(family_models, tmp_path, config):
    """A vocab.txt with capitalised entries and nothing saying do_lower_case: transformers' default would
    lower-case the input, so "Walk" could never become the PLM's "Walk" token; cltx loads it cased, says so."""
    from transformers import AutoTokenizer

    from cltx.salt import SaltConfig, transfer_vocabulary

    src, plm = family_models("bert-cased"), tmp_path / "bert-vocab-txt"
    _vocab_txt_folder(src, plm, config)
    assert AutoTokenizer.from_pretrained(plm).tokenize("Walk") != AutoTokenizer.from_pretrained(src).tokenize("Walk")
    llm, out = family_models("llama-bbpe"), tmp_path / "out"
    transfer_vocabulary(SaltConfig(llm=str(llm), plm=str(plm), device="cpu", holdout=0, method="mean"), out)
    check_tokenizer(out, llm, src)  # the cased tokenizer.json of the same vocabulary
    check_rows(out, llm, src)
    notes = json.loads((out / "salt_report.json").read_text())["notes"]
    assert any("vocab.txt" in n and "do_lower_case=False" in n for n in notes), notes


def test_sentencepiece_model_without_tokenizer_json_names_the_packages(family_models, tmp_path, monkeypatch):
    """Without sentencepiece and protobuf, transformers falls back to tiktoken and asks for it: the wrong fix."""
    import importlib.util
    import shutil

    from cltx.errors import CltxError
    from cltx.salt import SaltConfig, transfer_vocabulary

    plm = tmp_path / "xlmr-spm"
    plm.mkdir()
    shutil.copy(family_models("xlmr") / "config.json", plm / "config.json")
    (plm / "sentencepiece.bpe.model").write_bytes(b"\x0a\x0b\x0a\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name, *a)
    )
    if real("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed: transformers would read the file instead")
    cfg = SaltConfig(llm=str(family_models("llama-bbpe")), plm=str(plm), device="cpu")
    with pytest.raises(
        CltxError, match=r"plm=.*SentencePiece model \(sentencepiece.bpe.model.*fix: pip install sentencepiece"
    ):
        transfer_vocabulary(cfg, tmp_path / "out")


def test_sentencepiece_model_without_tokenizer_json_works_with_the_packages(family_models, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    import shutil

    from cltx.salt import SaltConfig, transfer_vocabulary

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus(1, PLM_ONLY)), encoding="utf-8")
    plm = tmp_path / "xlmr-spm"
    plm.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=200, model_type="unigram", minloglevel=2
    )
    shutil.copy(tmp_path / "sp.model", plm / "sentencepiece.bpe.model")
    import transformers as tf

    small = dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tf.XLMRobertaModel(tf.XLMRobertaConfig(vocab_size=202, max_position_embeddings=70, **small)).save_pretrained(plm)
    llm, out = family_models("llama-bbpe"), tmp_path / "out"
    transfer_vocabulary(SaltConfig(llm=str(llm), plm=str(plm), device="cpu", holdout=0, method="mean"), out)
    check_tokenizer(out, llm, plm)
    check_generation(out, plm)


def test_tokenizer_with_no_fast_version_is_refused_with_the_reason(family_models, tmp_path):
    """PhoBERT (Vietnamese) has only a slow tokenizer and no converter: saving it again does not help."""
    import shutil

    from cltx.errors import CltxError
    from cltx.salt import SaltConfig, transfer_vocabulary

    plm = tmp_path / "phobert"
    plm.mkdir()
    shutil.copy(family_models("roberta") / "config.json", plm / "config.json")
    (plm / "vocab.txt").write_text("the 10\nriver 5\nwa@@ 3\nlk 3\n")
    (plm / "bpe.codes").write_text("w a@@ 3\nt h 2\n")
    (plm / "tokenizer_config.json").write_text('{"tokenizer_class": "PhobertTokenizer"}')
    cfg = SaltConfig(llm=str(family_models("llama-bbpe")), plm=str(plm), device="cpu")
    with pytest.raises(CltxError, match=r"plm=.*\(PhobertTokenizer\).*only as a slow.*not supported; fix: pass a PLM"):
        transfer_vocabulary(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
