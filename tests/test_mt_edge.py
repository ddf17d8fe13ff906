"""cltx mt on odd but realistic input: separators inside text, engines that misbehave."""

from __future__ import annotations

import json

import pytest

from cltx.mt.pipeline import MTConfig
from cltx.mt.runner import run_file
from tests.test_mt_run import InterruptAt, Upper


def test_resume_over_unicode_line_separators_in_text(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 raw; str.splitlines() cuts there,
    # so --resume used to read a written record as two torn lines and refuse the file.
    recs = [{"question": f"Q{i} one\u2028two\u2029three\x85four.", "answer": f"a{i}"} for i in range(6)]
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    lines.insert(2, '{"question": "broken\u2028json"')  # a reject whose raw text has one too
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = MTConfig(fields=["question", "answer"], batch_records=1)
    ref = tmp_path / "ref.jsonl"
    run_file(inp, ref, Upper(), cfg, skip_invalid=True)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_file(inp, out, InterruptAt(4), cfg, skip_invalid=True)
    assert 0 < len(out.read_bytes().split(b"\n")) - 1 < 6
    run_file(inp, out, Upper(), cfg, skip_invalid=True, resume=True)
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "out.rejects.jsonl").read_bytes() == (tmp_path / "ref.rejects.jsonl").read_bytes()


@pytest.mark.parametrize("text", ["???", "…", " - ", " "])
def test_unmask_keeps_a_text_without_spans_or_words(text):
    from cltx.mt.protect import mask, unmask

    m = mask(text)
    assert unmask(m.text, m) == text


def test_punctuation_only_field_beside_a_protected_span_is_kept():
    # The URL makes the record masked; "???" (no words, no spans) skipped the engine and came back empty.
    from cltx.mt.pipeline import translate_records

    recs = [
        {"question": "See https://x.com/a now please.", "answer": "???"},
        {"question": "Open https://x.com/b", "answer": "  …  "},
    ]
    out = translate_records(recs, Upper(), MTConfig(fields=["question", "answer"]))
    assert [r["answer"] for r in out] == ["???", "  …  "]
    assert out[0]["question"] == "SEE https://x.com/a NOW PLEASE."


class DropsMarkersRaisesAround:
    """Loses every protected-span marker; raises on a text about 'boom' sent without one (the
    field-by-field path's translation around the spans)."""

    name = "drops-markers"

    def translate(self, texts):
        import re

        rx = re.compile(r"(?i)XPH ?\d+ ?X")
        if any("boom" in t and not rx.search(t) for t in texts):
            raise RuntimeError("kaboom")
        return [rx.sub("", t).upper() for t in texts]


def test_engine_error_while_translating_around_spans_fails_only_its_record(tmp_path):
    inp = tmp_path / "in.jsonl"
    rows = [
        {"question": "See https://example.com/a for boom details, then go on.", "answer": "fine"},
        {"question": "See https://example.com/b for the details.", "answer": "ok"},
    ]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    report = run_file(inp, out, DropsMarkersRaisesAround(), MTConfig(fields=["question", "answer"]))
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["_mt"]["status"] for r in got] == ["failed", "fallback"]
    assert got[0]["question"] == rows[0]["question"] and "kaboom" in got[0]["_mt"]["error"]
    assert got[1]["question"] == "SEE https://example.com/b FOR THE DETAILS."
    assert report["failures"] == 1


class Limited(DropsMarkersRaisesAround):
    """Loses protected-span markers and declares an input limit, which it enforces."""

    max_input_len = 40

    def translate(self, texts):
        assert all(len(t) <= self.max_input_len for t in texts), texts
        return super().translate(texts)


def test_translating_around_spans_keeps_to_the_engine_input_limit():
    from cltx.mt.pipeline import translate_records

    q = "See https://example.com/a for the details of the long story that goes on and on. And some more words here."
    out = translate_records([{"question": q, "answer": "ok"}], Limited(), MTConfig(fields=["question", "answer"]))
    assert out[0]["_mt"]["status"] == "fallback", out[0]["_mt"]
    assert out[0]["question"] == q.upper().replace("HTTPS://EXAMPLE.COM/A", "https://example.com/a")


def test_a_record_holding_every_marker_form_is_translated_around_its_spans(tmp_path):
    # XPH1X, 0x0001 and MKR1MKR in the text leave no free protected-span marker form: the run used to
    # stop there with an error that named no line
    rows = [
        {"question": "Set XPH1X to 0x0001 (or MKR1MKR), see https://example.com/a for more.", "answer": "Fine."},
        {"question": "Another record.", "answer": "Yes."},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    run_file(inp, out, Upper(), MTConfig(fields=["question", "answer"]))
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got[0]["question"] == "SET XPH1X TO 0X0001 (OR MKR1MKR), SEE https://example.com/a FOR MORE."
    assert got[0]["answer"] == "FINE."
    assert got[0]["_mt"]["status"] == "fallback" and "marker form" in got[0]["_mt"]["reason"]
    assert got[1]["_mt"]["status"] == "joint"


class EmptiesAnswers:
    """Translates to upper case, but gives nothing back for a text mentioning 'Ana'."""

    name = "empties"

    def translate(self, texts):
        return ["" if "Ana" in t else t.upper() for t in texts]


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_an_empty_translation_of_a_field_fails_the_record_not_silently(mode):
    # joint: the emptied field fails the split and falls back; the field-by-field translation was
    # empty too and used to be written as "" with status fallback/separate and no flag or error
    from cltx.mt.pipeline import translate_records

    recs = [{"question": "Who built it?", "answer": "Ana"}, {"question": "Who?", "answer": "Bob"}]
    out = translate_records(recs, EmptiesAnswers(), MTConfig(fields=["question", "answer"], mode=mode))
    assert out[0]["_mt"]["status"] == "failed" and "answer: " in out[0]["_mt"]["error"]
    assert out[0]["answer"] == "Ana" and out[0]["question"] == "Who built it?"
    assert out[1]["answer"] == "BOB" and out[1]["_mt"]["status"] == ("joint" if mode == "joint" else "separate")


class Counting(Upper):
    def __init__(self):
        self.texts = 0

    def translate(self, texts):
        self.texts += len(texts)
        return super().translate(texts)


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        ('{"question": "A"}\nnot json\n{"question": "C"}\n', "refs.jsonl:2: malformed JSON"),
        ('[1, 2]\n{"question": "B"}\n{"question": "C"}\n', "refs.jsonl:1: expected a JSON object, got list"),
        ('{"question": "A"}\n', "1 records for 3 outputs"),
    ],
)
def test_bad_references_are_refused_before_any_translation(tmp_path, refs, message):
    from cltx.errors import CltxError

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"question": q}) + "\n" for q in "abc"))
    (tmp_path / "refs.jsonl").write_text(refs)
    eng, out = Counting(), tmp_path / "out.jsonl"
    with pytest.raises(CltxError, match=message):
        run_file(inp, out, eng, MTConfig(fields=["question"]), references=tmp_path / "refs.jsonl")
    assert eng.texts == 0 and not out.exists()


def test_rejects_may_not_name_the_report_file(tmp_path):
    # the report is written last, over the rejects: the rejected lines were lost
    from cltx.errors import CltxError

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"question": "a"}\n{broken\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(CltxError, match="--rejects.*report"):
        run_file(inp, out, Upper(), MTConfig(fields=["question"]), skip_invalid=True,
                 rejects_path=tmp_path / "out.report.json")  # fmt: skip
    assert not out.exists()
