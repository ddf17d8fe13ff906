"""A bos for the new model when the LLM prepends one and the PLM has no token to play it.

SALT's paper (arXiv 2505.10945) pairs Gemma / XGLM with BERT-, GPT- and T5-style PLMs. A GPT-2-style
PLM's only special token ``<|endoftext|>`` plays bos, eos and unk at once and a T5-style PLM has no
bos at all, so with an LLM whose tokenizer prepends a bos (Llama, Gemma) the new model had none: the
PLM's token went to the eos role and nothing was prepended. The new vocabulary now gets one added
token, the LLM's bos string, whose rows are the LLM's bos rows; the tokenizer prepends it. An LLM that
prepends nothing (Qwen2) and a PLM with a bos of its own keep the earlier behaviour.

Models and tokenizers come from ``test_salt_families`` (trained here, wrapped in transformers' classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_salt_families import TEXTS, _load, _rows, _Script, _train_unigram, build_llm, build_plm
from test_salt_pipeline import PLM_ONLY, corpus

SAY = "Walk to the", " harbour"


def t5_plm(path: Path) -> Path:
    """A T5-style PLM: SentencePiece Unigram, eos ``</s>``, pad, unk, sentinel tokens, no bos at all."""
    import transformers as tf

    pieces = _train_unigram(vocab_size=300, lines=corpus(1, PLM_ONLY))
    specials = ["<pad>", "</s>", "<unk>"]
    tok = tf.T5Tokenizer(vocab=[(t, 0.0) for t in specials] + [p for p in pieces if p[0] not in specials], extra_ids=2)
    torch.manual_seed(2)
    cfg = tf.T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    tf.T5Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bos_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bos-models")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name == "t5":
                cache[name] = t5_plm(root / name)
            elif name == "gpt2":
                cache[name] = build_plm(root / name, name)
            else:
                cache[name] = build_llm(root / name, name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def bos_runs(bos_models, tmp_path_factory):
    from cltx.salt import SaltConfig, transfer_vocabulary

    root = tmp_path_factory.mktemp("bos-out")
    cache: dict[tuple, Path] = {}

    def get(llm: str, plm: str, **kw) -> Path:
        key = (llm, plm, *sorted(kw.items()))
        if key not in cache:
            out = root / f"{llm}--{plm}--{len(cache)}"
            cfg = SaltConfig(llm=str(bos_models(llm)), plm=str(bos_models(plm)), device="cpu", holdout=0, **kw)
            transfer_vocabulary(cfg, out)
            cache[key] = out
        return cache[key]

    return get


def _check_added_bos(out: Path, llm: Path, plm: Path) -> dict:
    """Everything a user relies on when the new model got the LLM's bos as an added token."""
    from transformers import AutoTokenizer, LogitsProcessorList

    model, tok = _load(out)
    llm_model, llm_tok = _load(llm)
    plm_tok = AutoTokenizer.from_pretrained(plm)
    bos, llm_bos = tok.bos_token_id, llm_tok.bos_token_id
    assert tok.bos_token == llm_tok.bos_token and bos is not None and bos != tok.eos_token_id
    assert plm_tok.convert_tokens_to_ids(tok.bos_token) in (None, plm_tok.unk_token_id)  # not a PLM token
    # One token more than the PLM's; the model's rows (input, output, config) cover it.
    assert bos == len(plm_tok) and len(tok) == len(plm_tok) + 1
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.config.get_text_config().vocab_size
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    # Its rows are the LLM's bos rows, bit for bit (input, and output when untied).
    assert np.array_equal(_rows(model)[bos], _rows(llm_model)[llm_bos])
    for conf in (model.config, model.config.get_text_config(), model.generation_config):
        assert conf.bos_token_id == bos, type(conf).__name__
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["bos_token_id"] == bos, name
    # Prepended exactly once, in front of the PLM's own tokenisation; skip_special_tokens drops it.
    for text in TEXTS:
        body = plm_tok(text, add_special_tokens=False)["input_ids"]
        ids = tok(text)["input_ids"]
        assert ids == [bos, *body], (text, tok.convert_ids_to_tokens(ids))
        assert tok.decode(ids, skip_special_tokens=True) == tok.decode(body)
        assert tok.bos_token not in tok.decode(ids, skip_special_tokens=True)
    # generate starts from the bos and stops on the eos.
    enc = tok(SAY[0], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    cont = tok(SAY[0] + SAY[1], add_special_tokens=False)["input_ids"][n - 1 :]
    with torch.no_grad():
        got = model.generate(
            **enc,
            max_new_tokens=12,
            do_sample=False,
            logits_processor=LogitsProcessorList([_Script(n, cont, tok.eos_token_id)]),
        )
    assert got[0, 0].item() == bos and got[0, n:].tolist() == [*cont, tok.eos_token_id]
    assert tok.decode(got[0], skip_special_tokens=True) == tok.decode(tok(SAY[0] + SAY[1])["input_ids"][1:])
    # The report says what was added and why; the bos is neither fitted nor anyone's neighbour.
    rep = json.loads((out / "salt_report.json").read_text())
    assert rep["plm_vocab_size"] == len(plm_tok) and rep["new_model_vocab_size"] == len(tok)
    assert rep["added_tokens"] == [
        {"id": bos, "token": tok.bos_token, "role": "bos", "llm_id": llm_bos, "llm_token": llm_tok.bos_token}
    ]
    assert rep["special_roles"]["bos"] == {"plm_id": bos, "llm_id": llm_bos, "added": True}
    assert any("bos" in note and tok.bos_token in note for note in rep["notes"]), rep["notes"]
    assert rep["new_tokens"] + rep["overlap"] + rep["unmapped_specials"] == len(tok)
    assert bos not in [e["id"] for e in rep["tokens"]]
    assert all(bos not in e.get("neighbors", []) for e in rep["tokens"])
    return rep


@pytest.mark.parametrize("llm", ["gemma", "llama2"])  # tied with <bos>; untied with <s>
def test_gpt2_plm_gets_the_llms_bos(bos_runs, bos_models, llm):
    _check_added_bos(bos_runs(llm, "gpt2"), bos_models(llm), bos_models("gpt2"))


def test_t5_plm_without_any_bos_gets_the_llms_bos(bos_runs, bos_models):
    rep = _check_added_bos(bos_runs("gemma", "t5", method="mean"), bos_models("gemma"), bos_models("t5"))
    assert rep["special_roles"]["eos"]["plm_id"] == 1  # T5's </s>


def test_every_method_keeps_the_bos_row_and_eval_conditions_on_it(bos_runs, bos_models, tmp_path):
    """``--method all --eval-text``: each folder has the bos, and bits per byte score each document after it."""
    from cltx.salt import METHODS

    docs = ["walk to the harbour", "The old kettle by the river", "a meadow, then the ferry!"]
    text = tmp_path / "eval.txt"
    text.write_text("\n".join(docs) + "\n", encoding="utf-8")
    out = bos_runs("llama2", "gpt2", method="all", eval_text=str(text))
    for method in METHODS:
        rep = _check_added_bos(out / method, bos_models("llama2"), bos_models("gpt2"))
        assert rep["method"] == method
    # An independent recomputation of one method's loss: each document after the bos, every token once.
    model, tok = _load(out / "mean")
    rep = json.loads((out / "mean" / "salt_report.json").read_text())
    total = {}
    for start in (tok.bos_token_id, tok.eos_token_id):
        nll = n = 0
        for doc in docs:
            ids = torch.tensor([[start, *tok(doc, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
            nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
        total[start] = nll / n
    assert rep["eval"]["tokens"] == n
    assert rep["eval"]["loss"] == pytest.approx(total[tok.bos_token_id], rel=1e-5)
    assert abs(total[tok.bos_token_id] - total[tok.eos_token_id]) > 1e-3  # the start token matters here


def test_vectors_never_make_the_bos_a_neighbour(bos_runs, bos_models, tmp_path):
    from transformers import AutoTokenizer

    plm_tok = AutoTokenizer.from_pretrained(bos_models("gpt2"))
    words = sorted({t.lstrip("\u0120") for t in plm_tok.get_vocab() if t.lstrip("\u0120").isalpha()})
    words = [w for w in words if w not in PLM_ONLY] + ["<bos>", "<|endoftext|>"]
    rng = np.random.default_rng(0)
    vec = tmp_path / "w.vec"
    vec.write_text(
        f"{len(words)} 5\n" + "".join(w + " " + " ".join(f"{v:.4f}" for v in rng.normal(size=5)) + "\n" for w in words)
    )
    rep = _check_added_bos(bos_runs("gemma", "gpt2", vectors=str(vec)), bos_models("gemma"), bos_models("gpt2"))
    assert rep["similarity_space"] == "vectors"


def test_llm_that_prepends_nothing_gets_no_added_token(bos_runs, bos_models):
    """Qwen2 has no bos: with a GPT-2-style PLM nothing is added and nothing prepended, as before."""
    from transformers import AutoTokenizer

    out = bos_runs("qwen2", "gpt2", method="mean")
    _, tok = _load(out)
    plm_tok = AutoTokenizer.from_pretrained(bos_models("gpt2"))
    assert len(tok) == len(plm_tok) and tok.bos_token is None
    assert tok(TEXTS[0])["input_ids"] == plm_tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    rep = json.loads((out / "salt_report.json").read_text())
    assert rep["added_tokens"] == [] and "bos" not in rep["special_roles"]
    assert rep["new_model_vocab_size"] == rep["plm_vocab_size"] == len(plm_tok)


# ------------------------------------------------------------------------------ matching only


def _gpt2_like(extra: tuple[str, ...] = ()):
    from test_salt_families import gpt2_tokenizer
    from transformers import GPT2Tokenizer

    tok = gpt2_tokenizer()
    if not extra:
        return tok
    vocab = dict(tok.get_vocab())
    for t in extra:
        vocab.setdefault(t, len(vocab))
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def test_bos_string_already_in_the_plm_vocabulary_is_reused():
    """A PLM vocabulary that holds the LLM's bos string as an ordinary token: that token becomes the bos."""
    from test_salt_pipeline import llm_tokenizer

    from cltx.salt.matching import match_vocabularies

    llm, plm = llm_tokenizer(), _gpt2_like(("<s>",))
    pid = plm.get_vocab()["<s>"]
    m = match_vocabularies(llm, plm)
    assert m.roles["bos"] == (pid, llm.bos_token_id) and m.pairs[pid] == llm.bos_token_id
    assert m.added == {} and m.vocab_size == m.plm_size == len(plm)
    assert pid not in m.basis and pid not in m.new


def test_llm_whose_bos_is_its_eos_prepends_the_plms_eos():
    """OPT-style: the LLM prepends ``</s>``, which is also its eos; the PLM's eos plays both, nothing is added."""
    from test_salt_pipeline import llm_tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from cltx.salt.matching import match_vocabularies
    from cltx.salt.tokenizer import causal_tokenizer

    backend = llm_tokenizer(add_bos=False).backend_tokenizer
    eos = backend.token_to_id("</s>")
    backend.post_processor = TemplateProcessing(single="</s> $A", pair="</s> $A $B:1", special_tokens=[("</s>", eos)])
    llm = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="</s>", eos_token="</s>", unk_token="<unk>")
    plm = _gpt2_like()
    m = match_vocabularies(llm, plm)
    end = plm.eos_token_id
    assert m.roles["bos"] == m.roles["eos"] == (end, eos) and m.added == {}
    tok = causal_tokenizer(plm, llm, m.roles, LlamaConfig(), prepend=m.prepends is not None, added=m.added)
    assert tok("walk to")["input_ids"] == [end, *plm("walk to")["input_ids"]]


def test_cli_says_the_bos_was_added(bos_models, tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    out = tmp_path / "cli"
    llm, plm = bos_models("llama2"), bos_models("gpt2")
    args = ["salt", "--llm", str(llm), "--plm", str(plm), "--out", str(out), "--method", "mean", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "note: bos:" in text and "added '<s>' as token" in text and "plays bos and eos at once" in text, text
