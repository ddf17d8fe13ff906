"""`cltx clo` through typer's CliRunner on a tiny model folder and a cltx-mt-style file."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaModel
from typer.testing import CliRunner

from cltx.cli.main import app
from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clo-cli")
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    LlamaModel(model.config).save_pretrained(d / "body")
    tok.save_pretrained(d / "body")
    recs = tiny_records(6) + [{"instruction": "x", "output": "y"}]  # one record without English
    (d / "mt.jsonl").write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    (d / "bad.jsonl").write_text(json.dumps({"title": "no known fields"}) + "\n", encoding="utf-8")
    return d


def _clo(files, out, *extra):
    args = ["clo", "--model", str(files / "model"), "--data", str(files / "mt.jsonl"), "--out", str(out)]
    return CliRunner().invoke(app, [*args, "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3", *extra])


def test_cli_clo_trains_and_saves(files, tmp_path, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))  # the first run must compute the reference
    res = _clo(files, tmp_path / "out", "--train", "attention", "--lam", "0.5", "--beta", "0.1", "--seed", "3")
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "config.json", "tokenizer.json", "clo_report.json"):
        assert (tmp_path / "out" / name).exists(), name
    rep = json.loads((tmp_path / "out" / "clo_report.json").read_text())
    assert rep["steps"] == 2 and rep["method"] == "clo" and rep["train"] == "attention"
    assert rep["data_report"]["used"] == 6 and rep["data_report"]["skipped"] == {"missing_english": 1}
    assert rep["reference"]["cache_hit"] is False and rep["tokens_per_second"] > 0
    assert "missing_english" in res.output and "steps" in res.output
    # same model and data again: the reference log-probs come from the cache
    again = _clo(files, tmp_path / "out2", "--train", "attention", "--seed", "3")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out2" / "clo_report.json").read_text())["reference"]["cache_hit"] is True


def test_cli_sft_and_full(files, tmp_path):
    res = _clo(files, tmp_path / "sft", "--method", "sft", "--train", "full", "--grad-accum", "2")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "sft" / "clo_report.json").read_text())
    assert rep["method"] == "sft" and rep["reference"] == {} and rep["steps"] == 2


def test_cli_bad_input_is_one_red_line(files, tmp_path):
    cases = [
        (["--model", str(files / "body")], "LM head"),
        (["--data", str(files / "bad.jsonl")], "none of the 1 records"),
        (["--lam", "2"], "lam=2.0"),
        (["--data", str(tmp_path / "missing.jsonl")], "no such file"),
    ]
    for extra, msg in cases:
        args = {"--model": str(files / "model"), "--data": str(files / "mt.jsonl"), "--out": str(tmp_path / "o")}
        args.update(dict(zip(extra[::2], extra[1::2], strict=True)))
        flat = [x for kv in args.items() for x in kv]
        res = CliRunner().invoke(app, ["clo", *flat, "--max-steps", "1"])
        assert res.exit_code == 1, (extra, res.output)
        assert msg in res.output and "Traceback" not in res.output, (extra, res.output)


def test_max_length_is_bounded_by_the_model_context(files, tmp_path):
    res = _clo(files, tmp_path / "ctx", "--max-length", "100000")
    assert res.exit_code == 0, res.output
    assert "context 256" in res.output
