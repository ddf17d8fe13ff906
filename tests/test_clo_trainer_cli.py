"""`cltx clo` through typer's CliRunner on a tiny model folder and a cltx-mt-style file."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import LlamaModel
from typer.testing import CliRunner

import cltx.clo.api as clo_api
import cltx.clo.trainer as clo_trainer
from cltx.cli.main import app
from cltx.clo._tiny import tiny_chat_records, tiny_llama, tiny_records, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


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
        # numbers transformers / torch would answer with a traceback, or with a silent 0-step run
        (["--grad-accum", "0"], "grad_accum=0"),
        (["--lr", "-1"], "lr=-1.0"),
        (["--warmup-steps", "-1"], "warmup_steps=-1"),
        (["--logging-steps", "0"], "logging_steps=0"),
        (["--seed", "-1"], "seed=-1"),
        (["--max-steps", "-5"], "max_steps=-5"),
        (["--max-steps", "0", "--epochs", "0"], "epochs=0.0"),
        (["--save-steps", "-1"], "save_steps=-1"),
        (["--beta", "inf"], "beta=inf"),
    ]
    for extra, msg in cases:
        args = {"--model": str(files / "model"), "--data": str(files / "mt.jsonl"), "--out": str(tmp_path / "o")}
        args.update(dict(zip(extra[::2], extra[1::2], strict=True)))
        flat = [x for kv in args.items() for x in kv]
        if "--max-steps" not in args:
            flat += ["--max-steps", "1"]
        res = CliRunner().invoke(app, ["clo", *flat])
        assert res.exit_code == 1, (extra, res.output)
        assert msg in res.output and "Traceback" not in res.output, (extra, res.output)


def test_max_length_is_bounded_by_the_model_context(files, tmp_path):
    res = _clo(files, tmp_path / "ctx", "--max-length", "100000")
    assert res.exit_code == 0, res.output
    assert "context 256" in res.output


def test_resume_refuses_another_run_and_fresh_runs_keep_old_checkpoints(files, tmp_path):
    out = tmp_path / "run"
    first = _clo(files, out, "--save-steps", "1")
    assert first.exit_code == 0, first.output
    assert (out / "checkpoints" / "checkpoint-2" / "clo_run.json").exists()
    # other data: the checkpoint's step count would silently apply to different micro-batches
    other = files / "other.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in tiny_records(9, seed=7)), encoding="utf-8")
    calls = clo_trainer.REF_FORWARD_CALLS
    res = _clo(files, out, "--resume", "--data", str(other), "--max-steps", "3")
    assert res.exit_code == 1 and "not the run that wrote the checkpoint" in res.output, res.output
    assert "micro-batches" in res.output and "Traceback" not in res.output
    assert clo_trainer.REF_FORWARD_CALLS == calls  # refused before the reference pass over the new data
    # another --train: the optimizer state would not fit (a bare ValueError before)
    res = _clo(files, out, "--resume", "--train", "full", "--max-steps", "3")
    assert res.exit_code == 1 and "train 'attention' → 'full'" in res.output, res.output
    # a fresh run into the same --out would leave checkpoint-2 of this run for a later --resume
    res = _clo(files, out)
    assert res.exit_code == 1 and "holds checkpoints of an earlier run" in res.output, res.output
    # the same run continues
    res = _clo(files, out, "--resume", "--max-steps", "3")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "clo_report.json").read_text())
    assert rep["steps"] == 3 and rep["resumed_from"].endswith("checkpoint-2")


def test_resume_with_another_model_is_refused_before_it_loads(files, tmp_path, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))  # no reference cache hit for the other model
    out = tmp_path / "run"
    assert _clo(files, out, "--save-steps", "1").exit_code == 0
    tok = tiny_tokenizer()
    tiny_llama(tok, seed=1).save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    loads = []
    real_load = clo_api.load_policy
    monkeypatch.setattr(clo_api, "load_policy", lambda name: loads.append(name) or real_load(name))
    calls = clo_trainer.REF_FORWARD_CALLS
    res = _clo(files, out, "--resume", "--model", str(tmp_path / "other"), "--max-steps", "3")
    assert res.exit_code == 1 and "not the run that wrote the checkpoint" in res.output, res.output
    assert "--model's files" in res.output and "Traceback" not in res.output
    assert loads == [] and clo_trainer.REF_FORWARD_CALLS == calls  # neither the load nor the reference pass ran
    # the same model under another path (a copy of its folder) is the same run
    shutil.copytree(files / "model", tmp_path / "copy")
    res = _clo(files, out, "--resume", "--model", str(tmp_path / "copy"), "--max-steps", "3")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "clo_report.json").read_text())["steps"] == 3


def test_resume_without_checkpoints(files, tmp_path):
    # no checkpoint and no --save-steps: nothing could ever be resumed; refused before the model loads
    # (the bare model body would fail the LM-head check once loaded)
    res = _clo(files, tmp_path / "none", "--resume", "--model", str(files / "body"))
    assert res.exit_code == 1 and "resume=True" in res.output and "--save-steps" in res.output, res.output
    assert "LM head" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "none" / "clo_report.json").exists()
    # with --save-steps, a run stopped before its first checkpoint restarts from step 0
    res = _clo(files, tmp_path / "early", "--resume", "--save-steps", "5")
    assert res.exit_code == 0, res.output
    assert "starting from step 0" in res.output
    rep = json.loads((tmp_path / "early" / "clo_report.json").read_text())
    assert rep["steps"] == 2 and rep["resumed_from"] is None


def test_short_run_reports_its_loss(files, tmp_path):
    # --logging-steps 5 (the default) > --max-steps 1: the first (and last) step is logged anyway
    res = _clo(files, tmp_path / "short", "--max-steps", "1")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "short" / "clo_report.json").read_text())
    assert rep["first_log"]["step"] == 1 and rep["last_log"]["step"] == 1
    assert rep["first_log"]["loss"] > 0 and rep["first_log"]["rewards/margins"] == 0.0
    assert "loss first → last log" in res.output
    # a run past the logging grid logs its last step too
    res = _clo(files, tmp_path / "seven", "--max-steps", "7", "--logging-steps", "5")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "seven" / "clo_report.json").read_text())
    assert [h["step"] for h in rep["log_history"] if "loss" in h] == [1, 5, 7] and rep["last_log"]["step"] == 7


def test_cli_clo_chat_turns(files, tmp_path):
    """--chat-turns reaches the data: all exchanges by default (the table says how many), or the last only."""
    chat = tiny_chat_records(4)
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat), encoding="utf-8")
    args = ["clo", "--model", str(files / "model"), "--data", str(data), "--max-steps", "1", "--method", "sft"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "all" / "clo_report.json").read_text())["data_report"]
    assert (rep["used"], rep["examples"]) == (4, 8) and "examples (chat exchanges)" in res.output
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "last"), "--chat-turns", "last"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "last" / "clo_report.json").read_text())["data_report"]
    assert (rep["used"], rep["examples"]) == (4, 4)
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--chat-turns", "every"])
    assert bad.exit_code == 2 and "every" in bad.output
