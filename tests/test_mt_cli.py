"""`cltx mt` through Typer's CliRunner: success output, user errors as one line and exit code 1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cltx.cli.main import app

ENGINE = "def translate(texts, tgt):\n    return [tgt + ':' + t.upper() for t in texts]\n"


@pytest.fixture
def files(tmp_path):
    eng = tmp_path / "eng.py"
    eng.write_text(ENGINE)
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"id": 1, "question": "Who?", "passage": "Ana did.", "answer": "Ana"}\n'
        '{"id": 2, "instruction": "Say hi.", "input": "", "output": "Hi."}\n'
    )
    return tmp_path, inp, f"python:{eng}:translate"


def _run(*args):
    return CliRunner().invoke(app, ["mt", *map(str, args)])


def _error_line(result):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_translates_and_reports(files):
    tmp, inp, eng = files
    out = tmp / "out.jsonl"
    r = _run(inp, out, "--fields", "instruction,input,output,question,passage,answer", "--engine", eng)
    assert r.exit_code == 0, r.output
    assert "joint success rate" in r.output and "100.0%" in r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["answer"] == "ANA" and rows[1]["input"] == "" and rows[1]["output"] == "HI."
    assert rows[1]["_source"] == {"instruction": "Say hi.", "input": "", "output": "Hi."}
    rep = json.loads((tmp / "out.report.json").read_text())
    assert rep["status"] == {"joint": 2} and rep["session"]["records_per_s"] > 0


def test_cli_separate_mode(files):
    tmp, inp, eng = files
    r = _run(inp, tmp / "o.jsonl", "--fields", "question,answer,instruction", "--engine", eng, "--mode", "separate")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp / "o.jsonl").read_text().splitlines()]
    assert rows[0]["answer"] == "pt:ANA" and rows[0]["_mt"]["status"] == "separate"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--fields", "title"], "in.jsonl:1: record has none of the fields title"),
        (["--fields", "question", "--require-all"], "in.jsonl:2: record lacks field(s) 'question'"),
        (["--fields", "question", "--engine", "nope"], "--engine='nope'"),
        (["--fields", "question", "--engine", "python:no_such_mod_xyz:f"], "cannot import"),
        (["--fields", "question", "--it-styles", "stars"], "--it-styles"),
        (["--fields", "question", "--engine", "bergamot", "--tgt", "de"], "en->pt and pt->en"),
        (["--fields", "question", "--engine-option", "oops"], "--engine-option"),
        (["--fields", ""], "--fields"),
    ],
)
def test_cli_user_errors_are_one_red_line(files, extra, needle):
    tmp, inp, eng = files
    args = [inp, tmp / "o.jsonl", *extra]
    if "--engine" not in extra:
        args += ["--engine", eng]
    r = _run(*args)
    assert r.exit_code == 1
    assert needle in _error_line(r)


def test_cli_malformed_line_and_skip_invalid(files):
    tmp, inp, eng = files
    inp.write_text(inp.read_text() + '{"question": 3}\n')
    r = _run(inp, tmp / "o.jsonl", "--fields", "question,answer,output", "--engine", eng)
    assert r.exit_code == 1 and "in.jsonl:3: field 'question' is a int (3)" in _error_line(r)
    r = _run(inp, tmp / "o.jsonl", "--fields", "question,answer,output", "--engine", eng, "--skip-invalid", "-q")
    assert r.exit_code == 0, r.output
    rej = [json.loads(x) for x in (tmp / "o.rejects.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rej] == [3]


def test_cli_existing_output_needs_resume_or_overwrite(files):
    tmp, inp, eng = files
    out = tmp / "o.jsonl"
    assert _run(inp, out, "--fields", "question,output", "--engine", eng, "-q").exit_code == 0
    r = _run(inp, out, "--fields", "question,output", "--engine", eng)
    assert r.exit_code == 1 and "--resume" in _error_line(r)
    assert _run(inp, out, "--fields", "question,output", "--engine", eng, "--resume", "-q").exit_code == 0
    assert _run(inp, out, "--fields", "question,output", "--engine", eng, "--overwrite", "-q").exit_code == 0
    assert len(out.read_text().splitlines()) == 2


def test_cli_resume_refuses_other_engine_options(files):
    # the engine's options and --keep-newlines reach the resume check (they change the translation)
    tmp, inp, _ = files
    eng = tmp / "stop.py"
    eng.write_text("def translate(texts, tgt):\n    raise KeyboardInterrupt\n")
    out = tmp / "o.jsonl"
    r = _run(inp, out, "--fields", "question,output", "--engine", f"python:{eng}:translate", "--batch-records", "1")
    assert r.exit_code == 130 and (tmp / "o.jsonl.run.json").exists()
    eng.write_text(ENGINE)
    for extra, needle in ((["--engine-option", "max_input_len=80"], "engine_options"),
                          (["--no-keep-newlines"], "keep_newlines")):  # fmt: skip
        args = ["--fields", "question,output", "--engine", f"python:{eng}:translate", "--resume", *extra]
        r = _run(inp, out, *args)
        assert r.exit_code == 1 and needle in _error_line(r)
    r = _run(inp, out, "--fields", "question,output", "--engine", f"python:{eng}:translate", "--resume", "-q")
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize("where", ["input", "output"])
def test_cli_folder_given_as_a_file_is_one_red_line(files, where):
    tmp, inp, eng = files
    (tmp / "d").mkdir()
    args = (tmp / "d", tmp / "o.jsonl") if where == "input" else (inp, tmp / "d", "--overwrite")
    r = _run(*args, "--fields", "question", "--engine", eng)
    assert r.exit_code == 1 and "is a folder" in _error_line(r)


def test_cli_missing_input_file(tmp_path):
    r = _run(tmp_path / "nope.jsonl", tmp_path / "o.jsonl", "--fields", "question")
    assert r.exit_code == 1 and "nope.jsonl" in _error_line(r)


@pytest.mark.integration
def test_readme_main_command_on_the_sample_data(tmp_path, monkeypatch):
    """The README's main job, verbatim (output under tmp_path): every sample record translated."""
    from cltx.paths import data_file

    monkeypatch.chdir(tmp_path)
    sample = data_file("sample_en.jsonl")
    fields = "instruction,input,output,question,passage,answer"
    r = _run(sample, "runs/sample_pt.jsonl", "--fields", fields, "--src", "en", "--tgt", "pt", "--engine", "bergamot")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "runs/sample_pt.jsonl").read_text().splitlines()]
    src = [json.loads(x) for x in sample.read_text().splitlines()]
    assert [x["id"] for x in rows] == [x["id"] for x in src]
    rep = json.loads((tmp_path / "runs/sample_pt.report.json").read_text())
    assert rep["failures"] == 0 and rep["joint_success_rate"] >= 0.8
    assert all(x["_mt"]["status"] in ("joint", "fallback") for x in rows)


@pytest.mark.parametrize("content", ["", "[]"])
def test_cli_empty_input_is_one_red_line(files, content):
    # exited 0 with an empty output and no word
    tmp, _, eng = files
    inp = tmp / "e.jsonl"
    inp.write_text(content)
    r = _run(inp, tmp / "o.jsonl", "--fields", "question", "--engine", eng)
    assert r.exit_code == 1
    assert "holds no records" in _error_line(r)
    assert not (tmp / "o.jsonl").exists()


def test_cli_retranslating_an_output_keeps_its_source_and_mt(files):
    tmp, inp, eng = files
    r = _run(inp, tmp / "pt.jsonl", "--fields", "question,instruction", "--engine", eng, "-q")
    assert r.exit_code == 0, r.output
    r = _run(tmp / "pt.jsonl", tmp / "en.jsonl", "--fields", "question,instruction", "--engine", eng, "-q")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp / "en.jsonl").read_text().splitlines()]
    assert rows[0]["_source_prev"] == {"question": "Who?"} and rows[0]["_mt_prev"]["line"] == 1
    assert rows[0]["_source"] == {"question": "WHO?"}  # joint: the "pt:" went with the Catalyst Statement
    r = _run(tmp / "en.jsonl", tmp / "pt2.jsonl", "--fields", "question,instruction", "--engine", eng, "-q")
    assert r.exit_code == 1
    assert "en.jsonl:1: record already has _source_prev and _mt_prev" in _error_line(r)


def test_cli_bad_rank_is_reported_before_the_engine_loads(tmp_path, monkeypatch):
    """With an hf: engine the model loaded before a bad RANK/WORLD_SIZE was reported."""
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"question": "a"}\n')
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = _run(inp, tmp_path / "o.jsonl", "--fields", "question", "--engine", f"hf:{tmp_path / 'no-model'}")
    assert res.exit_code == 1
    assert "RANK=3 WORLD_SIZE=2" in res.output and "no-model" not in res.output
