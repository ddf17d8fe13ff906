"""Token matching across tokenizer families (byte-level BPE, SentencePiece, WordPiece)."""

from __future__ import annotations

import pytest

from cltx.salt.matching import (
    BYTE_BPE,
    SENTENCEPIECE,
    WORDPIECE,
    TokenForm,
    bytes_to_unicode,
    detect_family,
    match_vocabularies,
    normalize_token,
    unicode_to_bytes,
)


def _bl(text: str) -> str:
    """A string as GPT-2's byte-level alphabet shows it."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def test_byte_to_unicode_is_a_bijection_with_space_as_G_dot():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[0x20] == "\u0120" and table[ord("a")] == "a" and table[0x0A] == "\u010a"
    assert all(unicode_to_bytes()[c] == b for b, c in table.items())
    assert _bl("é") == "Ã©"


@pytest.mark.parametrize(
    ("token", "form"),
    [
        ("\u0120hello", TokenForm(True, b"hello")),
        ("hello", TokenForm(False, b"hello")),
        ("\u0120", TokenForm(False, b" ")),
        ("Ã©", TokenForm(False, "é".encode())),
        ("\u0120Ã©t", TokenForm(True, "ét".encode())),
        ("Ã", TokenForm(False, b"\xc3")),  # a lone byte of a two-byte character
        ("<|endoftext|>", TokenForm(False, b"<|endoftext|>")),  # added tokens stay verbatim
    ],
)
def test_normalize_byte_level_bpe(token, form):
    assert normalize_token(token, BYTE_BPE) == form


@pytest.mark.parametrize(
    ("token", "form"),
    [
        ("\u2581hello", TokenForm(True, b"hello")),
        ("llo", TokenForm(False, b"llo")),
        ("\u2581", TokenForm(False, b" ")),
        ("<0x41>", TokenForm(False, b"A", is_byte=True)),
        ("<0xC3>", TokenForm(False, b"\xc3", is_byte=True)),
        ("<0xZZ>", TokenForm(False, b"<0xZZ>")),
        ("\u2581New\u2581York", TokenForm(True, b"New York")),
    ],
)
def test_normalize_sentencepiece(token, form):
    assert normalize_token(token, SENTENCEPIECE) == form


@pytest.mark.parametrize(
    ("token", "form"),
    [
        ("##ing", TokenForm(False, b"ing")),
        ("the", TokenForm(True, b"the")),
        ("##", TokenForm(True, b"##")),
        ("über", TokenForm(True, "über".encode())),
    ],
)
def test_normalize_wordpiece(token, form):
    assert normalize_token(token, WORDPIECE) == form


# ------------------------------------------------------------------ tokenizers with fixed vocabularies


def _byte_bpe_llm():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<|endoftext|>", "<pad>"] + [_bl(t) for t in (" the", " The", "the", "ing", ",", " ,", "é", " ")]
    tokens += [bytes_to_unicode()[b] for b in (0xC3, 0xA9)] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


def _sentencepiece_plm():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "\u2581the", "\u2581The", "ing", "<0xC3>", "<0xA9>", "\u2581", "é", "\u2581zz"]
    tk = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0, byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _wordpiece_plm(lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "The", "##ing", ",", "x"]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def test_detect_family():
    assert detect_family(_byte_bpe_llm())[0] == BYTE_BPE
    assert detect_family(_sentencepiece_plm())[0] == SENTENCEPIECE
    assert detect_family(_wordpiece_plm(True)) == (WORDPIECE, "##")


def test_sentencepiece_plm_onto_byte_level_llm():
    llm, plm = _byte_bpe_llm(), _sentencepiece_plm()
    m = match_vocabularies(llm, plm)
    lv, pv = llm.get_vocab(), plm.get_vocab()
    assert m.pairs[pv["\u2581the"]] == lv[_bl(" the")] and m.kinds[pv["\u2581the"]] == "word_start"
    assert m.pairs[pv["\u2581The"]] == lv[_bl(" The")]
    assert m.pairs[pv["ing"]] == lv["ing"] and m.kinds[pv["ing"]] == "continuation"
    # Byte-fallback tokens match the byte-level alphabet's single bytes.
    assert m.pairs[pv["<0xC3>"]] == lv["Ã"] and m.kinds[pv["<0xC3>"]] == "byte"
    assert m.pairs[pv["<0xA9>"]] == lv["©"]
    assert m.pairs[pv["é"]] == lv["Ã©"]
    assert m.pairs[pv["\u2581"]] == lv["\u0120"] and m.kinds[pv["\u2581"]] == "space"
    assert pv["\u2581zz"] in m.new
    # Specials by role: the LLM's one <|endoftext|> serves eos and bos; it has no unk.
    eot = lv["<|endoftext|>"]
    assert m.pairs[pv["</s>"]] == eot and m.pairs[pv["<s>"]] == eot
    assert m.roles["eos"] == (pv["</s>"], eot) and "unk" not in m.roles
    assert m.unmapped_specials == [pv["<unk>"]]
    counts = m.counts()
    assert counts["special"] == 2 and counts["byte"] == 2 and counts["space"] == 1
    assert sum(counts.values()) == len(m.pairs)


def test_lowercasing_wordpiece_matches_only_the_identical_surface():
    llm, plm = _byte_bpe_llm(), _wordpiece_plm(lowercase=True)
    m = match_vocabularies(llm, plm)
    lv, pv = llm.get_vocab(), plm.get_vocab()
    assert m.plm_lowercase and m.plm_family == WORDPIECE
    # "the" starts a word: it matches " the", never " The" nor the unspaced "the".
    assert m.pairs[pv["the"]] == lv[_bl(" the")]
    assert m.pairs[pv["The"]] == lv[_bl(" The")]  # identical surface (a cased entry in this vocab)
    assert m.pairs[pv["##ing"]] == lv["ing"]
    # BERT splits punctuation off as a word; in running text it follows the word unspaced.
    assert m.pairs[pv[","]] == lv[","] and m.kinds[pv[","]] == "punctuation"
    assert pv["x"] in m.new  # the LLM has "x" but no " x"
    assert m.roles["bos"][0] == pv["[CLS]"] and m.roles["eos"][0] == pv["[SEP]"]
    assert m.roles["pad"] == (pv["[PAD]"], lv["<pad>"])
    assert set(m.unmapped_specials) == {pv["[MASK]"], pv["[UNK]"]}  # the byte-level LLM has no unk
    assert not match_vocabularies(llm, _wordpiece_plm(lowercase=False)).plm_lowercase


def test_summary_counts_every_kind():
    m = match_vocabularies(_byte_bpe_llm(), _wordpiece_plm(lowercase=True))
    s = m.summary()
    assert s["overlap"] == len(m.pairs) == sum(s["match_counts"].values())
    assert s["new_tokens"] + s["overlap"] + s["unmapped_specials"] == s["plm_vocab_size"]
    assert set(s["match_counts"]) == {"special", "word_start", "continuation", "punctuation", "byte", "space"}
