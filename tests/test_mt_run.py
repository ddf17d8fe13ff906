"""cltx mt on files: output format, python engine, resume after an interruption, bad input, sharding."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cltx.errors import CltxError
from cltx.mt.engines import make_engine
from cltx.mt.pipeline import MTConfig
from cltx.mt.runner import run_file
from cltx.paths import data_file

SAMPLE = data_file("sample_en.jsonl")
FIELDS = ["instruction", "input", "output", "question", "passage", "answer"]

ENGINE_PY = textwrap.dedent(
    '''
    import os, signal

    calls = {"n": 0}

    def translate(texts, src, tgt):
        """Upper-case 'translation'; dies (SIGKILL) once it has seen MT_KILL_AT texts, if set."""
        kill = int(os.environ.get("MT_KILL_AT", "0"))
        out = []
        for t in texts:
            calls["n"] += 1
            if kill and calls["n"] >= kill:
                os.kill(os.getpid(), signal.SIGKILL)
            out.append(f"{tgt}:" + t.upper())
        return out

    def plain(texts):
        return [t[::-1] for t in texts]
    '''
)


@pytest.fixture
def engine_file(tmp_path):
    p = tmp_path / "fake_mt.py"
    p.write_text(ENGINE_PY)
    return p


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _sample(tmp_path, n):
    lines = SAMPLE.read_text().splitlines()[:n]
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


class Upper:
    name = "upper"

    def translate(self, texts):
        return [t.upper() for t in texts]


def test_sample_data_shape():
    rows = _rows(SAMPLE)
    assert 90 <= len(rows) <= 120
    kinds = {r["kind"] for r in rows}
    assert kinds == {"instruction", "qa"}
    for r in rows:
        if r["kind"] == "qa":
            assert r["answer"] in r["passage"], r["id"]
        else:
            assert r["instruction"].strip() and r["output"].strip() and isinstance(r["input"], str)
    assert len({r["id"] for r in rows}) == len(rows)


def test_python_engine_end_to_end(tmp_path, engine_file):
    inp = _sample(tmp_path, 12)
    out = tmp_path / "out.jsonl"
    eng = make_engine(f"python:{engine_file}:translate", "en", "pt")
    report = run_file(inp, out, eng, MTConfig(fields=FIELDS, batch_records=5))
    src, got = _rows(inp), _rows(out)
    assert [g["_mt"]["line"] for g in got] == list(range(1, 13))
    for s, g in zip(src, got, strict=True):
        assert g["id"] == s["id"] and g["kind"] == s["kind"]
        assert g["_mt"]["status"] == "joint"
        for f, text in g["_source"].items():
            assert text == s[f]
            # each field came back from the one joint call: the prefix went to the dropped CS
            assert g[f] == (text.upper() if text.strip() else text)
    assert report["records"] == 12 and report["joint_success_rate"] == 1.0
    assert json.loads((tmp_path / "out.report.json").read_text())["records"] == 12


def test_python_engine_signature_without_languages(tmp_path, engine_file):
    eng = make_engine(f"python:{engine_file}:plain", "en", "pt", keep_newlines=False)
    assert eng.translate(["abc"]) == ["cba"]
    with pytest.raises(CltxError, match="has no callable"):
        make_engine(f"python:{engine_file}:nothing", "en", "pt")
    with pytest.raises(CltxError, match="MODULE:FUNCTION"):
        make_engine("python:justamodule", "en", "pt")
    with pytest.raises(CltxError, match="--engine"):
        make_engine("google", "en", "pt")


class InterruptAt:
    """Upper-cases, but raises KeyboardInterrupt when it reaches the k-th text."""

    name = "upper"

    def __init__(self, k):
        self.k, self.seen = k, 0

    def translate(self, texts):
        self.seen += len(texts)
        if self.seen >= self.k:
            raise KeyboardInterrupt
        return [t.upper() for t in texts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, seed):
    inp = _sample(tmp_path, 30)
    # invalid lines in between, so rejects take part in the resume bookkeeping
    lines = inp.read_text().splitlines()
    lines.insert(7, "{broken json")
    lines.insert(19, json.dumps({"id": "x", "unrelated": "field"}))
    inp.write_text("\n".join(lines) + "\n")
    cfg = MTConfig(fields=FIELDS, batch_records=4)
    ref = tmp_path / "ref.jsonl"
    run_file(inp, ref, Upper(), cfg, skip_invalid=True)

    out = tmp_path / "out.jsonl"
    k = random.Random(seed).randint(2, 25)
    with pytest.raises(KeyboardInterrupt):
        run_file(inp, out, InterruptAt(k), cfg, skip_invalid=True)
    assert len(_rows(out)) < 30
    with open(out, "a") as fh:  # a torn line, as a crash in the middle of a write leaves
        fh.write('{"id": "en-0')
    with pytest.raises(CltxError, match="--resume"):
        run_file(inp, out, Upper(), cfg, skip_invalid=True)
    report = run_file(inp, out, Upper(), cfg, skip_invalid=True, resume=True)
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "out.rejects.jsonl").read_bytes() == (tmp_path / "ref.rejects.jsonl").read_bytes()
    assert report["records"] == 30 and report["rejected"] == 2
    assert not (tmp_path / "out.jsonl.run.json").exists()


def test_resume_refuses_other_settings(tmp_path):
    inp = _sample(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_file(inp, out, InterruptAt(3), MTConfig(fields=FIELDS, batch_records=1))
    with pytest.raises(CltxError, match="other settings"):
        run_file(inp, out, Upper(), MTConfig(fields=FIELDS, mode="separate"), resume=True)


def _cli(args, env=None, check=True):
    e = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    r = subprocess.run([sys.executable, "-m", "cltx.cli.main", "mt", *args], capture_output=True, text=True, env=e)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_resume_after_process_killed(tmp_path, engine_file):
    inp = _sample(tmp_path, 20)
    common = ["--fields", ",".join(FIELDS), "--engine", f"python:{engine_file}:translate", "--batch-records", "3", "-q"]
    _cli([str(inp), str(tmp_path / "ref.jsonl"), *common])
    out = tmp_path / "out.jsonl"
    r = _cli([str(inp), str(out), *common], env={"MT_KILL_AT": str(random.Random(5).randint(5, 15))}, check=False)
    assert r.returncode == -9
    assert 0 < len(_rows(out)) < 20
    _cli([str(inp), str(out), *common, "--resume"])
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_two_process_sharding_merges_in_order(tmp_path, engine_file):
    inp = _sample(tmp_path, 25)
    lines = inp.read_text().splitlines()
    lines.insert(4, "not json")
    inp.write_text("\n".join(lines) + "\n")
    common = ["--fields", ",".join(FIELDS), "--engine", f"python:{engine_file}:translate", "--batch-records", "3"]
    common += ["-q", "--skip-invalid"]
    _cli([str(inp), str(tmp_path / "one.jsonl"), *common])
    out = tmp_path / "two.jsonl"
    procs = []
    for rank in (1, 0):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RANK": str(rank), "WORLD_SIZE": "2"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cltx.cli.main", "mt", str(inp), str(out), *common],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert out.read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "two.rejects.jsonl").read_bytes() == (tmp_path / "one.rejects.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if "shard" in p.name) == []
    report = json.loads((tmp_path / "two.report.json").read_text())
    assert report["records"] == 25 and report["session"]["world_size"] == 2 and report["session"]["records"] == 25


# ----------------------------------------------------------------------------------- bad input
def _write(tmp_path, text, name="bad.jsonl"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "ok", "answer": "a"}\n{"question": "oops",\n', r"bad.jsonl:2: malformed JSON"),
        ('{"question": "ok"}\n\n["a", "list"]\n', r"bad.jsonl:3: expected a JSON object, got list"),
        ('{"question": 42}\n', r"bad.jsonl:1: field 'question' is a int \(42\), not a string"),
        (
            '{"question": "q"}\n{"title": "t", "body": "b"}\n',
            r"bad.jsonl:2: record has none of the fields question, answer; it has 'title', 'body'",
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, message):
    inp = _write(tmp_path, content)
    with pytest.raises(CltxError, match=message):
        run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["question", "answer"]))
    assert not (tmp_path / "o.jsonl").exists()  # nothing is translated before the input is checked


def test_require_all_reports_missing_field(tmp_path):
    inp = _write(tmp_path, '{"question": "q", "answer": "a"}\n{"question": "q2", "id": 7}\n')
    cfg = MTConfig(fields=["question", "answer"], require_all=True)
    with pytest.raises(CltxError, match=r"bad.jsonl:2: record lacks field\(s\) 'answer'; it has 'question', 'id'"):
        run_file(inp, tmp_path / "o.jsonl", Upper(), cfg)
    # without --require-all the record is translated on the fields it has
    run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["question", "answer"]))
    rows = _rows(tmp_path / "o.jsonl")
    assert rows[1]["question"] == "Q2" and "answer" not in rows[1] and rows[1]["_source"] == {"question": "q2"}


def test_skip_invalid_every_line_lands_exactly_once(tmp_path):
    content = "\n".join(
        [
            '{"question": "a"}',
            "{bad",
            '{"question": null, "answer": "b"}',
            '{"question": ["x"]}',
            "",
            '{"other": 1}',
            '{"answer": "c", "keep": {"nested": true}}',
        ]
    )
    inp = _write(tmp_path, content + "\n")
    out = tmp_path / "o.jsonl"
    report = run_file(inp, out, Upper(), MTConfig(fields=["question", "answer"]), skip_invalid=True)
    good = _rows(out)
    bad = _rows(tmp_path / "o.rejects.jsonl")
    assert [g["_mt"]["line"] for g in good] == [1, 3, 7]
    assert [b["line"] for b in bad] == [2, 4, 6]
    assert bad[0]["raw"] == "{bad" and "malformed JSON" in bad[0]["error"]
    assert good[1]["question"] is None and good[1]["answer"] == "B"
    assert good[2]["keep"] == {"nested": True}
    assert report["input_records"] == 6 and report["rejected"] == 3


def test_json_array_input(tmp_path):
    inp = _write(tmp_path, json.dumps([{"question": "a"}, {"question": "b", "n": 2}]), "arr.json")
    run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["question"]))
    assert [r["question"] for r in _rows(tmp_path / "o.jsonl")] == ["A", "B"]
    bad = _write(tmp_path, '[{"question": "a"},\n {"question": }]', "bad.json")
    with pytest.raises(CltxError, match=r"bad.json:2: invalid JSON"):
        run_file(bad, tmp_path / "o2.jsonl", Upper(), MTConfig(fields=["question"]))


def test_references_give_bleu_and_chrf_per_field(tmp_path):
    q1, q2 = "the cat sat on the mat", "a dog ran in the park"
    inp = _write(tmp_path, f'{{"id": 1, "question": "{q1}"}}\n{{"id": 2, "question": "{q2}"}}\n', "in.jsonl")
    refs = _write(
        tmp_path, f'{{"id": 2, "question": "{q2.upper()}"}}\n{{"id": 1, "question": "{q1.upper()}"}}\n', "refs.jsonl"
    )
    report = run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["question"]), references=refs)
    assert report["scores"]["question"]["n"] == 2
    assert report["scores"]["question"]["bleu"] == pytest.approx(100.0)
    assert report["scores"]["question"]["chrf"] == pytest.approx(100.0)
    bad_refs = _write(tmp_path, '{"question": "X"}\n', "r2.jsonl")
    with pytest.raises(CltxError, match="--references"):
        run_file(inp, tmp_path / "o3.jsonl", Upper(), MTConfig(fields=["question"]), references=bad_refs)


@pytest.mark.integration
def test_bergamot_engine_on_a_few_sample_records(tmp_path):
    inp = _sample(tmp_path, 6)
    out = tmp_path / "pt.jsonl"
    eng = make_engine("bergamot", "en", "pt")
    report = run_file(inp, out, eng, MTConfig(fields=FIELDS))
    rows = _rows(out)
    assert len(rows) == 6 and report["failures"] == 0
    assert report["joint_success_rate"] >= 0.5
    for r in rows:
        assert r["_mt"]["status"] in ("joint", "fallback")
        for f, en in r["_source"].items():
            if en.strip():
                assert r[f].strip(), (f, en)
            if len(en.split()) >= 4:  # names may stay as they are; sentences may not
                assert r[f] != en, (f, en)
    # Portuguese words show up (language id, not exact strings: the engine may change)
    import py3langid

    text = " ".join(r[f] for r in rows for f in r["_source"] if r[f].strip())
    assert py3langid.classify(text)[0] == "pt"
    with pytest.raises(CltxError, match="en->pt and pt->en"):
        make_engine("bergamot", "en", "de")
    # line breaks survive a sentence-level engine (it would join the lines otherwise)
    from cltx.mt.pipeline import translate_records

    rec = {"instruction": "List the steps.", "output": "1. Fill a pot with soil.\n2. Water it gently."}
    got = translate_records([rec], eng, MTConfig(fields=FIELDS))[0]
    assert got["output"].count("\n") == 1 and got["output"].startswith("1.")


def test_utf8_bom_is_accepted(tmp_path):
    inp = tmp_path / "bom.jsonl"
    inp.write_bytes('\ufeff{"question": "a"}\n{"question": "b"}\n'.encode())
    run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["question"]))
    assert [r["question"] for r in _rows(tmp_path / "o.jsonl")] == ["A", "B"]
    arr = tmp_path / "bom.json"
    arr.write_bytes('\ufeff[{"question": "c"}]'.encode())
    run_file(arr, tmp_path / "o2.jsonl", Upper(), MTConfig(fields=["question"]))
    assert _rows(tmp_path / "o2.jsonl")[0]["question"] == "C"


def test_sharded_resume_in_process(tmp_path):
    """Ranks run one after the other in this process (rank 0 last: it merges)."""
    inp = _sample(tmp_path, 17)
    cfg = MTConfig(fields=FIELDS, batch_records=2)
    ref = tmp_path / "ref.jsonl"
    run_file(inp, ref, Upper(), cfg)
    out = tmp_path / "out.jsonl"
    assert run_file(inp, out, Upper(), cfg, rank=1, world_size=3) is None
    assert run_file(inp, out, Upper(), cfg, rank=2, world_size=3) is None
    with pytest.raises(KeyboardInterrupt):  # rank 0 dies half-way: nothing merged yet
        run_file(inp, out, InterruptAt(4), cfg, rank=0, world_size=3)
    assert not out.exists()
    for rank in (1, 2):  # the finished ranks have nothing left to do
        run_file(inp, out, InterruptAt(1), cfg, rank=rank, world_size=3, resume=True)
    report = run_file(inp, out, Upper(), cfg, rank=0, world_size=3, resume=True, merge_timeout=30)
    assert out.read_bytes() == ref.read_bytes()
    assert report["records"] == 17
    assert not [p.name for p in tmp_path.iterdir() if "shard" in p.name]
    # resuming a finished sharded run changes nothing and translates nothing
    for rank in (1, 2):
        run_file(inp, out, InterruptAt(1), cfg, rank=rank, world_size=3, resume=True)
    run_file(inp, out, InterruptAt(1), cfg, rank=0, world_size=3, resume=True, merge_timeout=30)
    assert out.read_bytes() == ref.read_bytes()


class Lower:
    name = "lower"

    def translate(self, texts):
        return [t.lower() for t in texts]


def test_resume_refuses_another_engine_engine_options_or_input(tmp_path):
    # Output positions are input line numbers: resuming with another engine (or its options) or
    # over an edited input would silently mix two translations in one file.
    inp = _sample(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    cfg = MTConfig(fields=FIELDS, batch_records=1)
    with pytest.raises(KeyboardInterrupt):
        run_file(inp, out, InterruptAt(3), cfg, settings={"engine_options": {}})
    before = out.read_bytes()
    with pytest.raises(CltxError, match="other settings.*'engine'"):
        run_file(inp, out, Lower(), cfg, resume=True, settings={"engine_options": {}})
    with pytest.raises(CltxError, match="other settings.*'engine_options'"):
        run_file(inp, out, Upper(), cfg, resume=True, settings={"engine_options": {"threads": 2}})
    edited = tmp_path / "edited.jsonl"
    edited.write_text(inp.read_text().replace("Summarize", "Shorten"))
    with pytest.raises(CltxError, match="other settings.*'input_size_sha256'"):
        run_file(edited, out, Upper(), cfg, resume=True, settings={"engine_options": {}})
    assert out.read_bytes() == before
    same = tmp_path / "copy.jsonl"  # the same content under another name resumes
    same.write_bytes(inp.read_bytes())
    run_file(same, out, Upper(), cfg, resume=True, settings={"engine_options": {}})
    assert [r["_mt"]["line"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6]


def test_folders_and_conflicting_flags_are_user_errors(tmp_path):
    inp = _write(tmp_path, '{"question": "q"}\n', "in.jsonl")
    folder = tmp_path / "d"
    folder.mkdir()
    cfg = MTConfig(fields=["question"])
    with pytest.raises(CltxError, match="INPUT=.*is a folder"):
        run_file(folder, tmp_path / "o.jsonl", Upper(), cfg)
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(CltxError, match="OUTPUT=.*is a folder"):
            run_file(inp, folder, Upper(), cfg, **kw)
    assert folder.is_dir()
    run_file(inp, tmp_path / "o.jsonl", Upper(), cfg)
    with pytest.raises(CltxError, match="--resume/--overwrite"):
        run_file(inp, tmp_path / "o.jsonl", Upper(), cfg, resume=True, overwrite=True)


def test_a_non_utf8_line_at_the_top_is_one_reject(tmp_path):
    # the first 4 KB are sniffed for a JSON array: a bad byte there must not fail the whole file
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'\xef\xbb\xbf{"question": "a"}\n{"question": "b \xff"}\n{"question": "c"}\n')
    out = tmp_path / "o.jsonl"
    with pytest.raises(CltxError, match=r"in.jsonl:2: not UTF-8"):
        run_file(inp, out, Upper(), MTConfig(fields=["question"]))
    run_file(inp, out, Upper(), MTConfig(fields=["question"]), skip_invalid=True)
    assert [r["question"] for r in _rows(out)] == ["A", "C"]
    assert [r["line"] for r in _rows(tmp_path / "o.rejects.jsonl")] == [2]


def test_rejects_path_never_destroys_a_file(tmp_path):
    # --rejects naming the input deleted the input (a new run clears its rejects file first); naming
    # any other existing file silently replaced it; naming the output mixed rejects into the output
    inp = _write(tmp_path, '{"question": "q"}\n{"other": 1}\n', "in.jsonl")
    original = inp.read_bytes()
    cfg = MTConfig(fields=["question"])
    out = tmp_path / "o.jsonl"
    for rej, needle in ((inp, "is the INPUT file"), (out, "is the OUTPUT file"), (tmp_path, "is a folder")):
        with pytest.raises(CltxError, match=f"--rejects=.*{needle}"):
            run_file(inp, out, Upper(), cfg, skip_invalid=True, rejects_path=rej, overwrite=True)
    assert inp.read_bytes() == original
    notes = _write(tmp_path, "my notes\n", "notes.txt")
    with pytest.raises(CltxError, match="--rejects=.*exists"):
        run_file(inp, out, Upper(), cfg, skip_invalid=True, rejects_path=notes)
    assert notes.read_text() == "my notes\n" and not out.exists()
    run_file(inp, out, Upper(), cfg, skip_invalid=True, rejects_path=notes, overwrite=True)
    assert [r["line"] for r in _rows(notes)] == [2]
    with pytest.raises(CltxError, match="--references=.*not a file"):
        run_file(inp, tmp_path / "o2.jsonl", Upper(), cfg, skip_invalid=True, references=tmp_path)
    report_named = _write(tmp_path, '{"question": "q"}\n', "x.report.json")
    with pytest.raises(CltxError, match="would replace the input"):
        run_file(report_named, tmp_path / "x.jsonl", Upper(), cfg)


def test_back_translation_keeps_the_first_runs_source_and_mt(tmp_path):
    # translating a cltx mt output again replaced its _source/_mt: the English original was lost
    inp = _write(tmp_path, '{"id": 1, "question": "who?"}\n{"id": 2, "question": "why?"}\n', "en.jsonl")
    run_file(inp, tmp_path / "pt.jsonl", Upper(), MTConfig(fields=["question"]))
    back = MTConfig(fields=["question"], src="pt", tgt="en", mode="separate")
    run_file(tmp_path / "pt.jsonl", tmp_path / "en2.jsonl", Upper(), back)
    rows = _rows(tmp_path / "en2.jsonl")
    assert [r["_source_prev"] for r in rows] == [{"question": "who?"}, {"question": "why?"}]
    assert [r["_mt_prev"]["status"] for r in rows] == ["joint", "joint"]
    assert rows[0]["_source"] == {"question": "WHO?"} and rows[0]["_mt"]["status"] == "separate"
    # a third pass would overwrite _source_prev/_mt_prev: refused before any work, naming line and fix
    with pytest.raises(CltxError, match=r"en2.jsonl:1: record already has _source_prev and _mt_prev.*jq"):
        run_file(tmp_path / "en2.jsonl", tmp_path / "pt3.jsonl", Upper(), MTConfig(fields=["question"]))
    assert not (tmp_path / "pt3.jsonl").exists()
    run_file(tmp_path / "en2.jsonl", tmp_path / "pt3.jsonl", Upper(), MTConfig(fields=["question"]), skip_invalid=True)
    assert [json.loads(r["raw"])["_source_prev"] for r in _rows(tmp_path / "pt3.rejects.jsonl")] == [
        {"question": "who?"},
        {"question": "why?"},
    ]


@pytest.mark.parametrize(("content", "name"), [("", "e.jsonl"), ("\n  \n\n", "blank.jsonl"), ("[]", "e.json")])
def test_an_input_without_records_is_a_user_error(tmp_path, content, name):
    # an empty input wrote an empty output and exited 0 without a word
    inp = _write(tmp_path, content, name)
    out = tmp_path / "o.jsonl"
    out.write_text('{"kept": true}\n')
    for kw in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(CltxError, match=rf"INPUT='.*{name}': holds no records.*fix: check the path"):
            run_file(inp, out, Upper(), MTConfig(fields=["question"]), **kw)
    assert out.read_text() == '{"kept": true}\n'  # refused before the output is touched


def test_rank_zero_says_which_ranks_it_waits_for(tmp_path, monkeypatch, caplog):
    # A rank that died (killed, or failed at start) left rank 0 waiting for its shard in silence.
    import cltx.mt.runner as runner

    monkeypatch.setattr(runner, "WAIT_WARNING_S", 0.0)
    inp = _sample(tmp_path, 6)
    cfg = MTConfig(fields=FIELDS, batch_records=2)
    with caplog.at_level("WARNING", logger="cltx.mt.runner"), pytest.raises(CltxError, match="waited"):
        run_file(inp, tmp_path / "out.jsonl", Upper(), cfg, rank=0, world_size=3, merge_timeout=0.3)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "waiting for rank(s) 1, 2 of 3" in warnings[0] and "--resume" in warnings[0]
    # the missing ranks finish: rank 0's rerun with --resume merges everything
    for rank in (1, 2):
        run_file(inp, tmp_path / "out.jsonl", Upper(), cfg, rank=rank, world_size=3)
    rep = run_file(inp, tmp_path / "out.jsonl", Upper(), cfg, rank=0, world_size=3, resume=True, merge_timeout=30)
    assert rep["records"] == 6 and [r["_mt"]["line"] for r in _rows(tmp_path / "out.jsonl")] == list(range(1, 7))


def test_every_rank_refuses_an_existing_output(tmp_path):
    """Rank 0 refused an existing OUTPUT, but the other ranks translated their whole share beside it and left
    their shard files behind."""
    inp = _sample(tmp_path, 6)
    cfg = MTConfig(fields=FIELDS, batch_records=2)
    out = tmp_path / "out.jsonl"
    run_file(inp, out, Upper(), cfg)
    before = out.read_bytes()
    for rank in (0, 1):
        with pytest.raises(CltxError, match="exists; pass --resume"):
            run_file(inp, out, Upper(), cfg, rank=rank, world_size=2)
    assert out.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if "shard" in p.name]


def test_bad_rank_environment_names_the_fix(monkeypatch):
    from cltx.mt.runner import dist_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(CltxError, match=r"RANK=1 WORLD_SIZE=1 \(WORLD_SIZE is not set: 1 assumed\).*fix: set both"):
        dist_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_env() == (1, 2)
