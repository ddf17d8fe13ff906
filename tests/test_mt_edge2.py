"""cltx mt edge cases: --resume of a completed run, a JSONL file that opens with an array line,
position-aligned --references beside --on-flag reject."""

from __future__ import annotations

import json
import logging

import pytest

from cltx.errors import CltxError
from cltx.mt.pipeline import MTConfig
from cltx.mt.records import read_items
from cltx.mt.runner import run_file

FIELDS = ["question", "answer"]


class Counting:
    """Upper-cases and counts the texts it was sent."""

    name = "upper"

    def __init__(self) -> None:
        self.texts = 0

    def translate(self, texts):
        self.texts += len(texts)
        return [t.upper() for t in texts]


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


RECS = [{"question": f"Who wrote book {i}?", "answer": f"Ana {i}."} for i in range(5)]


# ------------------------------------------------------------------------------ --resume of a completed run
@pytest.fixture
def completed(tmp_path):
    inp = _write(tmp_path / "in.jsonl", RECS)
    out = tmp_path / "out.jsonl"
    run_file(inp, out, Counting(), MTConfig(fields=FIELDS, batch_records=2))
    assert not (tmp_path / "out.jsonl.run.json").exists()  # a completed run leaves no sidecar
    return inp, out


@pytest.mark.parametrize("edit", ["changed", "appended", "removed"])
def test_resume_of_a_completed_run_refuses_an_edited_input(completed, edit):
    inp, out = completed
    recs = [dict(r) for r in RECS]
    if edit == "changed":  # same number of lines: only the content hash tells
        recs[2]["question"] = "Who painted the wall?"
    elif edit == "appended":
        recs.append({"question": "A new one?", "answer": "Yes."})
    else:
        recs.pop()
    _write(inp, recs)
    before = out.read_bytes(), out.with_name("out.report.json").read_bytes()
    eng = Counting()
    with pytest.raises(CltxError) as e:
        run_file(inp, out, eng, MTConfig(fields=FIELDS, batch_records=2), resume=True)
    msg = str(e.value)
    assert "--resume" in msg and "INPUT" in msg and str(inp) in msg and "--overwrite" in msg, msg
    assert eng.texts == 0
    assert (out.read_bytes(), out.with_name("out.report.json").read_bytes()) == before
    # --overwrite is the way out, as the message says
    rep = run_file(inp, out, Counting(), MTConfig(fields=FIELDS), overwrite=True)
    assert rep["records"] == len(recs)


def test_resume_of_a_completed_run_refuses_other_settings(completed):
    inp, out = completed
    with pytest.raises(CltxError, match="other settings.*--overwrite"):
        run_file(inp, out, Counting(), MTConfig(fields=FIELDS, mode="separate"), resume=True)


def test_resume_of_an_unchanged_completed_run_is_a_no_op(completed, caplog):
    inp, out = completed
    report_file = out.with_name("out.report.json")
    before = out.read_bytes(), report_file.read_bytes()
    eng = Counting()
    with caplog.at_level(logging.WARNING, logger="cltx.mt.runner"):
        rep = run_file(inp, out, eng, MTConfig(fields=FIELDS, batch_records=2), resume=True)
    assert eng.texts == 0
    assert (out.read_bytes(), report_file.read_bytes()) == before  # nothing rewritten, the report included
    assert not out.with_name("out.jsonl.run.json").exists()
    assert any("already complete" in r.getMessage() for r in caplog.records), caplog.text
    assert rep["already_complete"] is True and rep["records"] == 5 and rep["session"]["records"] == 0


def test_resume_of_an_interrupted_run_names_the_edited_input(tmp_path):
    from tests.test_mt_run import InterruptAt

    inp = _write(tmp_path / "in.jsonl", RECS)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_file(inp, out, InterruptAt(5), MTConfig(fields=FIELDS, batch_records=1))
    _write(inp, RECS[::-1])  # same size, other order
    msg = r"--resume: INPUT=.*changed since OUTPUT .* was started.*'input_size_sha256'.*--overwrite"
    with pytest.raises(CltxError, match=msg):
        run_file(inp, out, Counting(), MTConfig(fields=FIELDS), resume=True)


def test_cli_resume_of_a_completed_run(tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    eng = tmp_path / "eng.py"
    eng.write_text("def translate(texts):\n    return [t.upper() for t in texts]\n")
    inp = _write(tmp_path / "in.jsonl", RECS)
    args = ["mt", str(inp), str(tmp_path / "o.jsonl"), "--fields", ",".join(FIELDS),
            "--engine", f"python:{eng}:translate", "--no-cache"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "translated this session" in r.output and "already complete" in r.output
    flat = " ".join(r.output.split())
    assert "nothing translated, nothing rewritten" in flat and "wrote " not in flat, r.output
    _write(inp, RECS[:3])
    r = CliRunner().invoke(app, [*args, "--resume"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "INPUT" in lines[0] and "--overwrite" in lines[0]


# ------------------------------------------------------------------------------ JSONL that opens with an array
def test_jsonl_whose_first_line_is_an_array_is_read_line_by_line(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('[1, 2]\n{"question": "q1"}\n\n{"question": "q2"}\n', encoding="utf-8")
    items = list(read_items(p, FIELDS))
    assert [i.line for i in items] == [1, 2, 4]
    assert items[0].error == f"{p}:1: expected a JSON object, got list"
    assert [i.error for i in items[1:]] == [None, None]
    assert [i.record for i in items[1:]] == [{"question": "q1"}, {"question": "q2"}]


def test_jsonl_opening_with_an_array_line_stops_or_goes_to_rejects(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('[{"question": "q0"}]\n{"question": "q1"}\n{"question": "q2"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(CltxError, match=r"in\.jsonl:1: expected a JSON object, got list.*--skip-invalid"):
        run_file(inp, out, Counting(), MTConfig(fields=FIELDS))
    rep = run_file(inp, out, Counting(), MTConfig(fields=FIELDS), skip_invalid=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["_mt"]["line"] for r in rows] == [2, 3] and rows[0]["question"] == "Q1"
    rej = [json.loads(x) for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rej] == [1] and rej[0]["raw"] == '[{"question": "q0"}]'
    assert rep["records"] == 2 and rep["rejected"] == 1


@pytest.mark.parametrize(
    "text",
    [
        '[{"question": "q1"}, {"question": "q2"}]\n',  # one line
        '\ufeff[{"question": "q1"},\n {"question": "q2"}]\n\n',  # pretty-printed, with a BOM
        '\n  [\n  {"question": "q1"},\n  {"question": "q2"}\n]',  # leading blank line, no final newline
    ],
)
def test_a_whole_file_json_array_is_still_an_array(tmp_path, text):
    p = tmp_path / "in.json"
    p.write_text(text, encoding="utf-8")
    items = list(read_items(p, FIELDS))
    assert [(i.line, i.record, i.error) for i in items] == [
        (1, {"question": "q1"}, None),
        (2, {"question": "q2"}, None),
    ]


def test_a_broken_multi_line_json_array_is_reported_as_one(tmp_path):
    p = tmp_path / "in.json"
    p.write_text('[\n  {"question": "q1"},\n  {"question": "q2"\n]\n', encoding="utf-8")
    with pytest.raises(CltxError, match=r"in\.json:4: invalid JSON"):
        list(read_items(p, FIELDS))


# ------------------------------------------------------------------------------ --references with --on-flag reject
class LoopsOn:
    """Upper-cases; a text holding ``word`` comes back with a word loop (the repetition flag)."""

    name = "loops"

    def __init__(self, word: str = "LOOP") -> None:
        self.word, self.texts = word, 0

    def translate(self, texts):
        self.texts += len(texts)
        out = []
        for t in texts:
            u = t.upper()
            out.append(u.replace(".", " NA NA NA NA NA NA.") if self.word in u else u)
        return out


@pytest.fixture
def repetition_only(monkeypatch):
    import cltx.mt.quality as q

    full = q.QualityConfig
    monkeypatch.setattr(q, "QualityConfig", lambda **kw: full(**{**kw, "checks": frozenset({"repetition"})}))


QA = [
    {"question": "Loop here, where is the old mill by the river.", "answer": "Loop the mill."},
    {"question": "Where is the red house near the bridge?", "answer": "Near the green river bank."},
    "{broken",
    {"question": "Who wrote the long book about the sea?", "answer": "Ana wrote the whole book."},
    {"question": "Loop again, who built the tower in the town.", "answer": "Loop the builder."},
    {"question": "When did the small boat reach the harbour?", "answer": "Late in the cold evening."},
]


def _qa_input(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in QA), encoding="utf-8")
    valid = [r for r in QA if isinstance(r, dict)]
    return inp, valid


def test_position_references_align_with_input_records_under_reject(tmp_path, repetition_only):
    inp, valid = _qa_input(tmp_path)
    # one reference per valid input record, in input order: the perfect translation of each (the
    # rejected ones' references are deliberately wrong, so scoring them would lower the scores)
    refs = tmp_path / "refs.jsonl"
    _write(refs, [{f: "nothing alike at all" if "Loop" in r["question"] else r[f].upper() for f in FIELDS}
                  for r in valid])  # fmt: skip
    out = tmp_path / "out.jsonl"
    cfg = MTConfig(fields=FIELDS, quality=True, on_flag="reject", batch_records=2)
    rep = run_file(inp, out, LoopsOn(), cfg, skip_invalid=True, references=refs)
    kept = [json.loads(x)["_mt"]["line"] for x in out.read_text().splitlines()]
    assert kept == [2, 4, 6] and rep["quality"]["rejected"] == 2
    for f in FIELDS:
        assert rep["scores"][f]["n"] == 3
        assert rep["scores"][f]["bleu"] == 100.0 and rep["scores"][f]["chrf"] == 100.0, rep["scores"]


def test_position_references_count_is_checked_up_front_under_reject(tmp_path, repetition_only):
    inp, valid = _qa_input(tmp_path)
    refs = _write(tmp_path / "refs.jsonl", [{"question": "x", "answer": "y"}] * (len(valid) - 2))
    eng = LoopsOn()
    cfg = MTConfig(fields=FIELDS, quality=True, on_flag="reject")
    with pytest.raises(CltxError, match=r"--references=.*3 records for 5 .*fix"):
        run_file(inp, tmp_path / "out.jsonl", eng, cfg, skip_invalid=True, references=refs)
    assert eng.texts == 0 and not (tmp_path / "out.jsonl").exists()
