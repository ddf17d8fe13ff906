"""XGLM as the LLM: its tokenizer prepends its eos ``</s>``, not its bos ``<s>``.

SALT's paper (arXiv 2505.10945) uses XGLM-1.7B. XGLM was trained with ``</s>`` at the start of every
document, and transformers' ``XGLMTokenizer`` builds its post-processor as ``</s> $A`` (its bos ``<s>``
is never prepended). The new model must start every text the same way: the new tokenizer prepends the
new-vocabulary token that carries the LLM's ``</s>`` row — the PLM's eos (BERT's ``[SEP]``, GPT-2's
``<|endoftext|>``, XLM-R's ``</s>``) — names it the bos (config and generation config too), still stops
generating on it, and bits per byte condition each document on it (the LLM's own score on ``</s>``).

The XGLM tokenizer here is transformers' own ``XGLMTokenizer`` over a Unigram vocabulary trained in the
test; the other models come from ``test_salt_families``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_salt_families import (
    TEXTS,
    _load,
    _rows,
    _save_llm,
    _train_unigram,
    build_llm,
    build_plm,
    check_generation,
    check_rows,
)
from test_salt_pipeline import _ForceAt, corpus, llm_tokenizer, plm_tokenizer

XGLM_EOS = 2  # </s>: what XGLM prepends (its <s> is id 0)


def xglm_tokenizer():
    """XGLM: SentencePiece Unigram, Metaspace with ``▁`` prepended, ``<s> <pad> </s> <unk>`` first, seven
    ``<madeupwordN>`` specials last, and ``</s> $A`` as the post-processor (transformers' own class)."""
    from transformers import XGLMTokenizer

    pieces = _train_unigram(vocab_size=300, lines=corpus(0, []))
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    return XGLMTokenizer(vocab=[(t, 0.0) for t in specials] + [p for p in pieces if p[0] not in specials])


def build_xglm(path: Path) -> Path:
    from transformers import XGLMConfig, XGLMForCausalLM

    tok = xglm_tokenizer()
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = XGLMConfig(
        vocab_size=len(tok), d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=256, **ids
    )
    return _save_llm(path, XGLMForCausalLM(cfg), tok)


@pytest.fixture(scope="module")
def xglm_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("xglm-models")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = build_xglm(root / name) if name == "xglm" else build_plm(root / name, name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def xglm_runs(xglm_models, tmp_path_factory):
    from cltx.salt import SaltConfig, transfer_vocabulary

    root = tmp_path_factory.mktemp("xglm-out")
    cache: dict[tuple, Path] = {}

    def get(plm: str, **kw) -> Path:
        key = (plm, *sorted(kw.items()))
        if key not in cache:
            out = root / f"xglm--{plm}--{len(cache)}"
            cfg = SaltConfig(llm=str(xglm_models("xglm")), plm=str(xglm_models(plm)), device="cpu", holdout=0, **kw)
            transfer_vocabulary(cfg, out)
            cache[key] = out
        return cache[key]

    return get


def test_the_tiny_xglm_prepends_its_eos_like_the_real_one(xglm_models):
    """The fixture's guard: the saved tokenizer reloads as XGLM's and puts ``</s>`` (not ``<s>``) first."""
    from transformers import AutoTokenizer, XGLMTokenizer

    tok = AutoTokenizer.from_pretrained(xglm_models("xglm"))
    assert isinstance(tok, XGLMTokenizer)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == ("<s>", 0, "</s>", XGLM_EOS)
    for text in TEXTS:
        assert tok(text)["input_ids"] == [XGLM_EOS, *tok(text, add_special_tokens=False)["input_ids"]]


def test_start_token_is_what_each_llm_tokenizer_prepends():
    """bos for Llama/Gemma-style tokenizers, eos for XGLM, nothing for Qwen2 or a Llama without a bos."""
    from test_salt_families import gemma_tokenizer, qwen2_tokenizer

    from cltx.salt.tokenizer import llm_start_token

    gemma = gemma_tokenizer()
    assert llm_start_token(xglm_tokenizer()) == XGLM_EOS
    assert llm_start_token(gemma) == gemma.bos_token_id != gemma.eos_token_id
    assert llm_start_token(llm_tokenizer()) == llm_tokenizer().bos_token_id
    assert llm_start_token(llm_tokenizer(add_bos=False)) is None
    assert llm_start_token(qwen2_tokenizer()) is None


def _start_of(plm_tok) -> int:
    """The PLM token that plays eos (BERT's [SEP]): the one with the LLM's ``</s>`` row."""
    return plm_tok.eos_token_id if plm_tok.eos_token_id is not None else plm_tok.sep_token_id


def _check_xglm_run(out: Path, llm: Path, plm: Path) -> dict:
    """Everything a user relies on when the new model must start each text with XGLM's ``</s>`` row."""
    from transformers import AutoTokenizer

    model, tok = _load(out)
    llm_model, llm_tok = _load(llm)
    plm_tok = AutoTokenizer.from_pretrained(plm)
    start = _start_of(plm_tok)
    # Nothing is added: a PLM token already carries the </s> row, and it is the new model's bos.
    assert len(tok) == len(plm_tok)
    assert (tok.bos_token_id, tok.bos_token) == (start, plm_tok.convert_ids_to_tokens(start))
    assert tok.eos_token_id == start
    assert np.array_equal(_rows(model)[start], _rows(llm_model)[XGLM_EOS])
    for conf in (model.config, model.generation_config):
        assert conf.bos_token_id == start, type(conf).__name__
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["bos_token_id"] == start, name
    # Prepended exactly once, in front of the PLM's own tokenisation; skip_special_tokens drops it.
    for text in TEXTS:
        body = plm_tok(text, add_special_tokens=False)["input_ids"]
        assert tok(text)["input_ids"] == [start, *body], (text, tok.convert_ids_to_tokens(tok(text)["input_ids"]))
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == tok.decode(body)
    # XGLM builds its position table from config.pad_token_id: the config names no pad unless it is the LLM's
    # own (a new one past the table made the model fail to load); the generation config names the tokenizer's.
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert (model.config.eos_token_id, model.generation_config.pad_token_id) == (start, tok.pad_token_id)
    assert model.config.pad_token_id == (tok.pad_token_id if tok.pad_token_id == llm_tok.pad_token_id else None)
    pos, llm_pos = model.model.embed_positions, llm_model.model.embed_positions
    assert torch.equal(pos.weights[pos.offset :], llm_pos.weights[llm_pos.offset :])  # every position it uses
    # Overlap rows, and generate/pipeline stopping on the eos (from generation_config).
    check_rows(out, llm, plm)
    check_generation(out, plm)
    # The prompt starts with the eos, yet generation does not end at step 0: only generated tokens count.
    never_eos = [_ForceAt(-1, start, [start])]
    with torch.no_grad():
        only_start = tok("", return_tensors="pt")
        assert only_start["input_ids"].tolist() == [[start]]
        got = model.generate(**only_start, max_new_tokens=3, do_sample=False, logits_processor=never_eos)
        assert got.shape == (1, 4) and got[0, 0].item() == start
        bare = model.generate(max_new_tokens=3, do_sample=False, logits_processor=never_eos)  # starts from the bos
        assert bare.shape == (1, 4) and bare[0, 0].item() == start
    # The report says what is prepended and why.
    rep = json.loads((out / "salt_report.json").read_text())
    token = tok.bos_token
    assert rep["prepends"] == {"id": start, "token": token, "llm_id": XGLM_EOS, "llm_token": "</s>"}
    assert rep["special_roles"]["bos"] == {"plm_id": start, "llm_id": XGLM_EOS}
    assert rep["special_roles"]["eos"] == {"plm_id": start, "llm_id": XGLM_EOS}
    assert rep["added_tokens"] == [] and rep["new_model_vocab_size"] == rep["plm_vocab_size"] == len(plm_tok)
    assert any("'</s>'" in n and repr(token) in n for n in rep["notes"]), rep["notes"]
    return rep


@pytest.mark.parametrize("plm", ["bert-cased", "gpt2", "xlmr"])  # [SEP]; <|endoftext|> (bos = eos); </s> beside <s>
def test_xglm_start_is_the_plm_token_with_the_eos_row(xglm_runs, xglm_models, plm):
    _check_xglm_run(xglm_runs(plm, method="mean"), xglm_models("xglm"), xglm_models(plm))


def test_bits_per_byte_condition_on_the_start_token(xglm_runs, xglm_models, tmp_path):
    """``--eval-text``: the new model scores each document after [SEP], the untouched XGLM after its ``</s>``."""
    docs = ["walk to the harbour", "The old kettle by the river", "a meadow, then the ferry!"]
    text = tmp_path / "eval.txt"
    text.write_text("\n".join(docs) + "\n", encoding="utf-8")
    out = xglm_runs("bert-cased", eval_text=str(text))
    plm_tok_start = _start_of(_load(xglm_models("bert-cased"))[1])
    _check_xglm_run(out, xglm_models("xglm"), xglm_models("bert-cased"))

    def loss(path: Path, start: int) -> tuple[float, int]:
        model, tok = _load(path)
        nll = n = 0
        for doc in docs:
            ids = torch.tensor([[start, *tok(doc, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
            nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
        return nll / n, n

    rep = json.loads((out / "salt_report.json").read_text())
    new, n = loss(out, plm_tok_start)
    cls = _load(xglm_models("bert-cased"))[1].cls_token_id
    assert rep["eval"]["tokens"] == n and rep["eval"]["loss"] == pytest.approx(new, rel=1e-5)
    assert abs(loss(out, cls)[0] - new) > 1e-3  # the start token matters here
    table = json.loads((out / "bits_per_byte.json").read_text())
    llm, n = loss(xglm_models("xglm"), XGLM_EOS)
    assert table["llm_eval"]["tokens"] == n and table["llm_eval"]["loss"] == pytest.approx(llm, rel=1e-5)
    assert abs(loss(xglm_models("xglm"), 0)[0] - llm) > 1e-3


def test_other_llms_report_what_they_prepend():
    """Llama-style: the PLM's [CLS] (its bos row) as before; Qwen2-style (no bos): nothing."""
    from test_salt_families import qwen2_tokenizer

    from cltx.salt.matching import match_vocabularies

    plm = plm_tokenizer()
    llama = llm_tokenizer()
    m = match_vocabularies(llama, plm)
    cls = plm.cls_token_id
    assert m.roles["bos"] == (cls, llama.bos_token_id) and m.added == {} and not m.notes
    assert m.summary()["prepends"] == {"id": cls, "token": "[CLS]", "llm_id": llama.bos_token_id, "llm_token": "<s>"}
    assert match_vocabularies(qwen2_tokenizer(), plm).summary()["prepends"] is None
    assert match_vocabularies(llm_tokenizer(add_bos=False), plm).summary()["prepends"] is None


def test_cli_says_what_is_prepended(xglm_models, tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    out = tmp_path / "cli"
    llm, plm = xglm_models("xglm"), xglm_models("gpt2")
    args = ["salt", "--llm", str(llm), "--plm", str(plm), "--out", str(out), "--method", "mean", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "note: bos:" in text and "'</s>'" in text and "'<|endoftext|>'" in text, text


def test_gemma_with_gpt2_still_adds_its_bos(tmp_path):
    """The added-bos path is the one for a start token no PLM token carries (unchanged)."""
    from cltx.salt import SaltConfig, transfer_vocabulary

    llm, plm = build_llm(tmp_path / "gemma", "gemma"), build_plm(tmp_path / "gpt2", "gpt2")
    transfer_vocabulary(SaltConfig(llm=str(llm), plm=str(plm), device="cpu", holdout=0, method="mean"), tmp_path / "o")
    rep = json.loads((tmp_path / "o" / "salt_report.json").read_text())
    bos = rep["special_roles"]["bos"]["plm_id"]
    assert rep["prepends"] == {
        "id": bos,
        "token": "<bos>",
        "llm_id": rep["special_roles"]["bos"]["llm_id"],
        "llm_token": "<bos>",
    }
    assert [a["id"] for a in rep["added_tokens"]] == [bos]
