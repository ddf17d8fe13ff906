"""cltx pretrain: packing, bits per byte, and a tiny Llama whose loss falls and whose output reloads."""

from __future__ import annotations

import json
import math

import pytest

from cltx.errors import CltxError

TEXT = [
    "o gato dorme no sofá da sala durante a tarde",
    "a menina lê um livro sobre o mar e os peixes",
    "o menino corre no parque com o seu cão",
    "nós comemos pão com queijo ao pequeno almoço",
    "a chuva cai devagar sobre a cidade antiga",
    "os pássaros cantam nas árvores do jardim",
] * 6


def _tiny_llama(path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_pack_blocks_covers_stream(tiny):
    from transformers import AutoTokenizer

    from cltx.pretrain import pack_blocks

    tok = AutoTokenizer.from_pretrained(tiny)
    blocks = pack_blocks(TEXT[:6], tok, 16)
    stream = []
    for ids in tok(TEXT[:6], add_special_tokens=False)["input_ids"]:
        stream += ids + [tok.eos_token_id]
    assert all(len(b) == 16 for b in blocks)
    assert sum(blocks, []) == stream[: 16 * len(blocks)]
    assert len(stream) - 16 * len(blocks) < 16
    short = pack_blocks(TEXT[:1], tok, 1000)
    assert len(short) == 1 and short[0][-1] == tok.eos_token_id


def test_bits_per_byte_matches_manual(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cltx.pretrain import bits_per_byte

    tok = AutoTokenizer.from_pretrained(tiny)
    lm = AutoModelForCausalLM.from_pretrained(tiny)
    docs = TEXT[:3]
    got = bits_per_byte(lm, tok, docs, max_length=64, batch_size=2)
    nll = 0.0
    for d in docs:
        ids = torch.tensor([[tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(lm(ids).logits[0, :-1].double(), -1)
        nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
    n_bytes = sum(len(d.encode()) for d in docs)
    assert got["bytes"] == n_bytes
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-4)


def test_pretrain_loss_falls_and_output_reloads(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cltx.pretrain import REPORT_NAME, pretrain

    text = tmp_path / "train.txt"
    text.write_text("\n".join(TEXT), encoding="utf-8")
    held = tmp_path / "held.jsonl"
    held.write_text("\n".join(json.dumps({"text": t, "_meta": "x"}) for t in TEXT[:6]), encoding="utf-8")
    out = tmp_path / "out"
    rep = pretrain(
        str(tiny), text, out, eval_text=held, max_steps=30, block_size=32, batch_size=4, lr=3e-3, seed=1, device="cpu"
    )
    curve = rep["loss_curve"]
    assert len(curve) == 30 and [c["step"] for c in curve] == list(range(1, 31))
    assert curve[1]["tokens"] == 2 * 4 * 32
    first, last = sum(c["loss"] for c in curve[:3]) / 3, sum(c["loss"] for c in curve[-3:]) / 3
    assert last < first - 0.5, (first, last)
    assert rep["eval_after"]["bits_per_byte"] < rep["eval_before"]["bits_per_byte"]
    assert json.loads((out / REPORT_NAME).read_text())["steps"] == 30
    assert (out / "model.safetensors").exists()
    lm = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(TEXT[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = float(lm(ids, labels=ids).loss)
    assert math.isfinite(loss)
    # The reloaded weights are the trained ones: they differ from the start model's.
    start = AutoModelForCausalLM.from_pretrained(tiny)
    assert not torch.equal(start.model.embed_tokens.weight, lm.model.embed_tokens.weight)


def test_pretrain_resume_continues_from_checkpoint(tiny, tmp_path):
    from cltx.pretrain import pretrain

    text = tmp_path / "train.txt"
    text.write_text("\n".join(TEXT), encoding="utf-8")
    out = tmp_path / "out"
    pretrain(str(tiny), text, out, max_steps=4, block_size=16, batch_size=2, save_steps=4, device="cpu")
    assert (out / "checkpoint-4").is_dir()
    rep = pretrain(str(tiny), text, out, resume=True, max_steps=6, block_size=16, batch_size=2, device="cpu")
    assert rep["resumed_from"].endswith("checkpoint-4")
    assert rep["steps"] == 6
    assert [c["step"] for c in rep["loss_curve"]][-2:] == [5, 6]


def test_pretrain_bad_input(tiny, tmp_path):
    from cltx.pretrain import pretrain, read_documents

    with pytest.raises(CltxError, match="text="):
        pretrain(str(tiny), tmp_path / "missing.txt", tmp_path / "o", max_steps=1)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CltxError, match="no text"):
        read_documents(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(CltxError, match="line 2"):
        read_documents(bad)
    with pytest.raises(CltxError, match="max_steps"):
        pretrain(str(tiny), bad, tmp_path / "o", max_steps=0)
    with pytest.raises(CltxError, match="block_size"):
        pretrain(str(tiny), bad, tmp_path / "o", block_size=1)


def test_cli_pretrain(tiny, tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    text = tmp_path / "t.txt"
    text.write_text("\n".join(TEXT[:12]), encoding="utf-8")
    out = tmp_path / "o"
    args = ["pretrain", "--model", str(tiny), "--text", str(text), "--out", str(out), "--max-steps", "2"]
    res = CliRunner().invoke(app, [*args, "--block-size", "16", "--batch-size", "2", "--eval-text", str(text)])
    assert res.exit_code == 0, res.output
    assert "tokens trained" in res.output and "eval_after bits/byte" in res.output
    assert (out / "model.safetensors").exists()
    res = CliRunner().invoke(
        app, ["pretrain", "--model", str(tiny), "--text", str(tmp_path / "nope.txt"), "--out", "x"]
    )
    assert res.exit_code == 1 and "text=" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        app, [*args[:6], str(tmp_path / "e"), *args[7:], "--block-size", "16", "--train", "embeddings"]
    )
    assert res.exit_code == 0, res.output
    assert (
        "embeddings (" in res.output
        and json.loads((tmp_path / "e" / "pretrain_report.json").read_text())["train"] == "embeddings"
    )
    assert CliRunner().invoke(app, [*args, "--train", "attention"]).exit_code == 2


def test_read_documents_json_suffixes_encoding_and_fields(tmp_path):
    # .json / .JSONL were read as plain text (each line of JSON syntax a training document), a
    # --text-field on a .txt was ignored, and a non-UTF-8 byte was a UnicodeDecodeError traceback
    from cltx.pretrain import read_documents

    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([{"q": "Olá", "_mt": {"status": "joint"}}, {"q": "Tchau", "a": "x"}]))
    assert read_documents(arr) == ["Olá", "Tchau\nx"]
    upper = tmp_path / "b.JSONL"
    upper.write_text('{"q": "Oi", "n": 3}\n\n{"q": "Até"}\n')
    assert read_documents(upper) == ["Oi", "Até"]
    assert read_documents(upper, text_fields=["q"]) == ["Oi", "Até"]
    with pytest.raises(CltxError, match=r"no text \(no record has a text field among \['title'\]\)"):
        read_documents(upper, text_fields=["title"])
    txt = tmp_path / "t.txt"
    txt.write_text("linha um\nlinha dois\n")
    with pytest.raises(CltxError, match="text_fields=.*plain text"):
        read_documents(txt, text_fields=["q"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nbad \xff byte\n")
    with pytest.raises(CltxError, match="eval_text=.*not UTF-8"):
        read_documents(bad, argument="eval_text")
    with pytest.raises(CltxError, match="text=.*a folder"):
        read_documents(tmp_path)


def test_pretrain_options_checked_before_the_model_loads(tmp_path, monkeypatch):
    # --warmup-steps -1 was a ValueError traceback from transformers, --save-steps -1 was accepted,
    # --out naming a file failed (FileExistsError traceback) only after the model had loaded, and a
    # missing --eval-text was reported as text=
    import cltx.models
    from cltx.pretrain import pretrain

    def no_load(*a, **k):
        raise AssertionError("the model loaded before the options were checked")

    monkeypatch.setattr(cltx.models, "load_causal_lm", no_load)
    text = tmp_path / "t.txt"
    text.write_text("\n".join(TEXT[:4]))
    for kw, match in (
        ({"warmup_steps": -1}, "warmup_steps=-1"),
        ({"save_steps": -1}, "save_steps=-1"),
        ({"eval_text": tmp_path / "nope.txt"}, "eval_text=.*no such file"),
    ):
        with pytest.raises(CltxError, match=match):
            pretrain("m", text, tmp_path / "o", max_steps=1, **kw)
    with pytest.raises(CltxError, match="out=.*is a file"):
        pretrain("m", text, text, max_steps=1)


def test_resume_without_checkpoints_or_save_steps_is_an_error_before_the_model_loads(tiny, tmp_path, monkeypatch):
    # --resume without --save-steps silently trained from step 0: there was nothing to resume from
    import cltx.models
    from cltx.pretrain import pretrain

    def no_load(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(cltx.models, "load_causal_lm", no_load)
    text = tmp_path / "t.txt"
    text.write_text("\n".join(TEXT[:4]))
    out = tmp_path / "o"
    with pytest.raises(CltxError, match=r"resume=True: there is no checkpoint-N folder .* fix: pass --save-steps"):
        pretrain(str(tiny), text, out, resume=True, max_steps=1)
    (out / "checkpoint-oops").mkdir(parents=True)  # not a Trainer checkpoint: ignored, not a ValueError
    with pytest.raises(CltxError, match="resume=True"):
        pretrain(str(tiny), text, out, resume=True, max_steps=1)
    # with --save-steps a run stopped before its first checkpoint restarts (the model loads)
    with pytest.raises(AssertionError, match="the model loaded"):
        pretrain(str(tiny), text, out, resume=True, max_steps=1, save_steps=5)
    monkeypatch.undo()

    from typer.testing import CliRunner

    from cltx.cli.main import app

    args = ["pretrain", "--model", str(tiny), "--text", str(text), "--out", str(tmp_path / "o2"), "--resume"]
    res = CliRunner().invoke(app, args)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: resume=True"), res.output


def test_library_call_draws_no_bars_and_names_a_misspelt_option(tiny, tmp_path, capfd, request):
    # transformers' own "Loading weights"/"Writing model shards" tqdm bars went to the caller's
    # stderr (only the CLI turned them off), and max_step=… was a bare TypeError from PretrainConfig.
    from transformers.utils import logging as hf_logging

    from cltx.pretrain import pretrain

    text = tmp_path / "t.txt"
    text.write_text("\n".join(TEXT))
    with pytest.raises(CltxError, match=r"max_step=2: not an option of pretrain; fix: did you mean max_steps"):
        pretrain(str(tiny), text, tmp_path / "bad", max_step=2)
    was = hf_logging.is_progress_bar_enabled()  # an in-process CLI test turns them off for good
    hf_logging.enable_progress_bar()
    request.addfinalizer(lambda: was or hf_logging.disable_progress_bar())
    capfd.readouterr()
    for k in range(2):  # twice in one process
        rep = pretrain(str(tiny), text, tmp_path / f"o{k}", max_steps=2, block_size=16, batch_size=2, device="cpu")
        assert rep["steps"] == 2
        captured = capfd.readouterr()
        assert captured.out == ""
        assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err, captured.err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is restored


def test_train_embeddings_only_changes_only_the_embeddings(tiny, tmp_path):
    """--train embeddings: the input embeddings and the (untied) LM head learn, every other weight stays
    bit-identical; a tied model trains its one matrix once."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from cltx.pretrain import pretrain, set_trainable

    text = tmp_path / "train.txt"
    text.write_text("\n".join(TEXT), encoding="utf-8")
    rep = pretrain(str(tiny), text, tmp_path / "emb", max_steps=3, block_size=16, batch_size=2, lr=1e-2,
                   device="cpu", train="embeddings")  # fmt: skip
    start = dict(AutoModelForCausalLM.from_pretrained(tiny).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "emb").named_parameters())
    changed = {n for n in start if not torch.equal(start[n], after[n])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}
    v, h = start["lm_head.weight"].shape
    assert rep["train"] == "embeddings" and rep["trainable_parameters"] == 2 * v * h
    # the full mode trains the body too
    full = pretrain(str(tiny), text, tmp_path / "full", max_steps=1, block_size=16, batch_size=2, lr=1e-2, device="cpu")
    after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "full").named_parameters())
    assert not torch.equal(start["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert full["train"] == "full" and full["trainable_parameters"] == sum(p.numel() for p in start.values())
    tied = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, tie_word_embeddings=True))  # fmt: skip
    got = set_trainable(tied, "embeddings")
    assert got["parameters"] == 50 * 16 and [n for n, p in tied.named_parameters() if p.requires_grad] == got["names"]
    with pytest.raises(CltxError, match="train"):
        pretrain(str(tiny), text, tmp_path / "bad", max_steps=1, train="lora")
