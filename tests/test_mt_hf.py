"""The hf: engine with a tiny random Marian model (built from MarianConfig, tokenizer trained here).

Its output is gibberish: these tests check plumbing — batching under a token budget, order,
length splitting, and that the pipeline falls back and loses nothing when markers do not survive.
"""

from __future__ import annotations

import json

import pytest

from cltx.mt.engines import make_engine
from cltx.mt.pipeline import MTConfig
from cltx.mt.runner import run_file
from cltx.paths import data_file

FIELDS = ["instruction", "input", "output", "question", "passage", "answer"]


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    texts = [json.loads(line) for line in data_file("sample_en.jsonl").read_text().splitlines()]
    corpus = [r[f] for r in texts for f in FIELDS if r.get(f)]
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = MarianConfig(
        vocab_size=fast.vocab_size,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = MarianMTModel(cfg).eval()
    path = tmp_path_factory.mktemp("tiny-marian")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_batches_respect_the_token_budget_and_keep_order(tiny_marian):
    # max_length caps every output at 20 new tokens: random weights never stop on their own, and the
    # cap must not depend on the batch for outputs to be comparable
    opts = {"batch_tokens": 64, "max_length": 20}
    eng = make_engine(f"hf:{tiny_marian}", "en", "pt", options=opts, keep_newlines=False)
    texts = ["a short one", "The bridge was built in 1850 by local workers and repaired twice since then.", "b", "c d"]
    lengths = [eng.length(t) + 2 for t in texts]
    batches = eng._batches([eng.length(t) for t in texts])
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    assert all(max(lengths[i] for i in b) * len(b) <= 64 or len(b) == 1 for b in batches)
    assert len(batches) > 1
    together = eng.translate(texts)
    alone = [eng.translate([t])[0] for t in texts]
    assert together == alone  # padding and sorting do not change any output
    assert all(isinstance(t, str) for t in together)


def test_tiny_marian_end_to_end(tiny_marian, tmp_path):
    lines = data_file("sample_en.jsonl").read_text().splitlines()[:6]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    eng = make_engine(
        f"hf:{tiny_marian}", "en", "pt", options={"batch_tokens": 4096, "max_input_len": 40, "max_length": 16}
    )
    assert eng.max_input_len == 38
    report = run_file(inp, out, eng, MTConfig(fields=FIELDS, batch_records=4))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    src = [json.loads(x) for x in lines]
    assert [r["_mt"]["line"] for r in rows] == list(range(1, 7))
    assert [r["id"] for r in rows] == [s["id"] for s in src]
    for r, s in zip(rows, src, strict=True):
        assert r["_mt"]["status"] in ("joint", "fallback")  # random weights: markers rarely survive
        assert r["_source"] == {f: s[f] for f in FIELDS if f in s}
        assert set(r) - {"_source", "_mt"} == set(s)
    assert report["records"] == 6 and report["failures"] == 0
    assert report["split_records"] > 0  # the long passages went through the sentence splitter


def test_language_codes_for_nllb_style_vocab(tiny_marian):
    # a Marian model has no language codes: nothing forced, no prefix; an explicit tgt_code is a prefix
    eng = make_engine(f"hf:{tiny_marian}", "en", "pt", keep_newlines=False)
    assert eng.forced_bos_token_id is None and eng.prefix == ""
    eng2 = make_engine(f"hf:{tiny_marian}", "en", "pt", options={"tgt_code": ">>por<<"}, keep_newlines=False)
    assert eng2.prefix == ">>por<< "


@pytest.mark.gpu
def test_hf_engine_on_gpu_uses_half_precision_and_matches_batching(tiny_marian):
    import torch

    eng = make_engine(f"hf:{tiny_marian}", "en", "pt", options={"max_length": 12}, keep_newlines=False)
    assert eng.device.type == "cuda"
    assert next(eng.model.parameters()).dtype in (torch.bfloat16, torch.float16)
    texts = ["The bridge was built in 1850.", "A short one", "b"]
    out = eng.translate(texts)
    assert len(out) == 3 and all(isinstance(t, str) and t for t in out)


def _tiny_m2m(path, lang_tokens):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "</s>", "<unk>", "<s>", *lang_tokens]
    tok.train_from_iterator(
        ["the bridge was built by local workers in 1850 ."], trainers.WordLevelTrainer(special_tokens=specials)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    torch.manual_seed(0)
    cfg = M2M100Config(
        vocab_size=fast.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=1,
    )  # fmt: skip
    M2M100ForConditionalGeneration(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return fast.get_vocab()


@pytest.mark.parametrize(
    ("lang_tokens", "forced"), [(["eng_Latn", "por_Latn"], "por_Latn"), (["__en__", "__pt__"], "__pt__")]
)
def test_nllb_and_m2m100_force_the_target_language_token(tmp_path, lang_tokens, forced):
    vocab = _tiny_m2m(tmp_path, lang_tokens)
    eng = make_engine(f"hf:{tmp_path}", "en", "pt", options={"max_length": 6}, keep_newlines=False)
    assert eng.forced_bos_token_id == vocab[forced]
    enc = eng.tokenizer(["the bridge"], return_tensors="pt")
    gen = eng.model.generate(**enc, forced_bos_token_id=eng.forced_bos_token_id, max_new_tokens=4)
    assert gen[0, 1].item() == vocab[forced]  # first generated token after the decoder start
    assert len(eng.translate(["the bridge was built", "by local workers"])) == 2


def _no_model_load(monkeypatch):
    import transformers

    class NoLoad:
        @staticmethod
        def from_pretrained(*a, **k):
            raise AssertionError("the model loaded before --engine-option device was checked")

    monkeypatch.setattr(transformers, "AutoModelForSeq2SeqLM", NoLoad)


@pytest.mark.parametrize(
    ("device", "cuda_count", "needle"),
    [
        ("gpu0", 1, "--engine-option device='gpu0': use cpu, cuda, cuda:N"),
        ("cuda:x", 1, "--engine-option device='cuda:x': use cpu, cuda, cuda:N"),
        ("meta", 1, "--engine-option device='meta': use cpu, cuda, cuda:N"),
        (-1, 1, "--engine-option device=-1: use cpu, cuda, cuda:N"),
        ("cuda", 0, "no CUDA GPU is visible here"),
        ("cuda:3", 2, "device='cuda:3': 2 CUDA GPU(s) are visible: use cuda:0 to cuda:1"),
        (2, 2, "device='cuda:2': 2 CUDA GPU(s) are visible"),
    ],
)
def test_bad_device_is_a_user_error_before_the_model_loads(tiny_marian, monkeypatch, device, cuda_count, needle):
    # device=gpu0 was a torch RuntimeError traceback after the model had loaded
    import torch

    from cltx.errors import CltxError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
    _no_model_load(monkeypatch)
    with pytest.raises(CltxError) as e:
        make_engine(f"hf:{tiny_marian}", "en", "pt", options={"device": device})
    assert needle in str(e.value)


def test_device_cpu_and_cli_error_line(tiny_marian, tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    eng = make_engine(f"hf:{tiny_marian}", "en", "pt", options={"device": "cpu"}, keep_newlines=False)
    assert eng.device.type == "cpu"
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"question": "Who?"}\n')
    args = ["mt", str(inp), str(tmp_path / "o.jsonl"), "--fields", "question", "--engine", f"hf:{tiny_marian}"]
    r = CliRunner().invoke(app, [*args, "--engine-option", "device=gpu0"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: --engine-option device='gpu0'")
    # a folder without a saved model was a multi-line ValueError traceback from the tokenizer
    empty = tmp_path / "empty"
    empty.mkdir()
    args[-1] = f"hf:{empty}"
    r = CliRunner().invoke(app, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "has no config.json" in lines[0], r.output
