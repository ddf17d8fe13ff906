"""cltx mt on chat-format fields: a list of turns ({"role", "content"} or ShareGPT {"from", "value"}).

Each turn's text is one segment of the record's joint sequence, in order, exactly as a plain string
field would be; the output keeps the list's structure with the texts translated and ``_source``
keeps the original list.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from cltx.errors import CltxError
from cltx.mt import markers as its
from cltx.mt.pipeline import MTConfig, Pipeline, translate_records
from cltx.mt.runner import run_file

CHAT = {
    "id": 7,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Where is the station?"},
        {"role": "assistant", "content": "  Turn left at the bank.\n", "name": "bot"},
        {"role": "user", "content": ""},
    ],
}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Name a colour."},
        {"from": "gpt", "value": "Blue."},
    ]
}


class Identity:
    name = "identity"

    def __init__(self):
        self.calls: list[list[str]] = []

    def translate(self, texts):
        self.calls.append(list(texts))
        return list(texts)


class Upper:
    name = "upper"

    def __init__(self):
        self.calls: list[list[str]] = []

    def translate(self, texts):
        self.calls.append(list(texts))
        return [t.upper() for t in texts]


class DropLastMarker(Upper):
    """Loses the last Indicator Token of every joint sequence: the split fails."""

    def translate(self, texts):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            nums = re.findall(r"\[(\d+)\]", t)
            if len(nums) >= 2:
                t = t.replace(f"[{nums[-1]}]", "", 1)
            out.append(t.upper())
        return out


def _upper_turns(turns, key):
    return [{**t, key: t[key].upper()} for t in turns]


def test_turns_are_segments_of_one_joint_sequence():
    eng = Identity()
    out = translate_records([CHAT], eng, MTConfig(fields=["messages"]))[0]
    assert len(eng.calls) == 1 and len(eng.calls[0]) == 1
    seq = eng.calls[0][0]
    # three non-empty turns, in order, one marker each; the empty turn is not sent
    body = seq[seq.index("[1]") :]
    assert body == "[1] You are a helpful assistant. [2] Where is the station? [3] Turn left at the bank. [4]"
    assert out["_mt"]["status"] == "joint" and out["_mt"]["it_style"] == "bracket"
    assert out["messages"] == CHAT["messages"]
    assert out["_source"] == {"messages": CHAT["messages"]}


def test_output_keeps_the_structure_with_translated_texts():
    rec = copy.deepcopy(CHAT)
    out = translate_records([rec], Upper(), MTConfig(fields=["messages"]))[0]
    assert rec == CHAT  # the input is not modified
    assert out["messages"] == [
        {"role": "system", "content": "YOU ARE A HELPFUL ASSISTANT."},
        {"role": "user", "content": "WHERE IS THE STATION?"},
        {"role": "assistant", "content": "  TURN LEFT AT THE BANK.\n", "name": "bot"},  # whitespace kept
        {"role": "user", "content": ""},  # empty turn kept as it is
    ]
    assert out["id"] == 7 and out["_source"]["messages"] == CHAT["messages"]
    out = translate_records([SHAREGPT], Upper(), MTConfig(fields=["conversations"]))[0]
    assert out["conversations"] == _upper_turns(SHAREGPT["conversations"], "value")
    assert out["_mt"]["status"] == "joint"


def test_chat_and_string_fields_share_the_sequence_in_field_order():
    eng = Identity()
    rec = {"instruction": "Answer briefly.", "messages": [{"role": "user", "content": "Hi?"}], "output": "Hello."}
    translate_records([rec], eng, MTConfig(fields=["instruction", "messages", "output"]))
    seq = eng.calls[0][0]
    assert seq[seq.index("[1]") :] == "[1] Answer briefly. [2] Hi? [3] Hello. [4]"


def test_separate_mode_translates_turn_by_turn():
    eng = Upper()
    out = translate_records([CHAT], eng, MTConfig(fields=["messages"], mode="separate"))[0]
    assert eng.calls == [["You are a helpful assistant.", "Where is the station?", "Turn left at the bank."]]
    assert out["_mt"]["status"] == "separate"
    assert out["messages"][1] == {"role": "user", "content": "WHERE IS THE STATION?"}


def test_failed_split_falls_back_turn_by_turn():
    eng = DropLastMarker()
    out = translate_records([CHAT], eng, MTConfig(fields=["messages"], styles=(its.BRACKET,)))[0]
    assert out["_mt"]["status"] == "fallback" and out["_mt"]["reason"]
    assert eng.calls[-1] == ["You are a helpful assistant.", "Where is the station?", "Turn left at the bank."]
    assert [t["content"] for t in out["messages"]] == [
        "YOU ARE A HELPFUL ASSISTANT.", "WHERE IS THE STATION?", "  TURN LEFT AT THE BANK.\n", "",
    ]  # fmt: skip
    assert [t["role"] for t in out["messages"]] == ["system", "user", "assistant", "user"]


def test_protected_spans_inside_a_turn_come_back_byte_for_byte():
    rec = {"messages": [{"role": "user", "content": "Open https://example.org/Path?q=A and `run()` it."},
                        {"role": "assistant", "content": "`ls -la`"}]}  # fmt: skip
    out = translate_records([rec], Upper(), MTConfig(fields=["messages"]))[0]
    assert out["messages"][0]["content"] == "OPEN https://example.org/Path?q=A AND `run()` IT."
    assert out["messages"][1]["content"] == "`ls -la`"  # only a protected span: never sent
    assert out["_mt"]["protected"] >= 3


def test_quality_flags_name_the_turn():
    from cltx.mt.quality import QualityConfig, QualityGate

    class Looper(Upper):
        def translate(self, texts):
            return [t.upper().replace("BANK.", "BANK NA NA NA NA NA NA.") for t in texts]

    gate = QualityGate(QualityConfig(src="en", tgt="pt", checks=frozenset({"repetition"})), "keep")
    pipe = Pipeline(Looper(), MTConfig(fields=["messages"]), quality=gate)
    res = pipe.translate_batch([(1, CHAT)])[0]
    assert set(res.meta["flags"]) == {"messages[2]"}
    assert gate.summary.fields == 3  # the non-empty turns


def test_status_empty_when_every_turn_is_empty():
    rec = {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}
    eng = Identity()
    out = translate_records([rec], eng, MTConfig(fields=["messages"]))[0]
    assert out["_mt"]["status"] == "empty" and out["messages"] == rec["messages"] and eng.calls == []


@pytest.mark.parametrize(
    "value, needle",
    [
        (["hello", "world"], r'item 1 is a str \("hello"\), not a turn object'),
        ([{"role": "user"}], r"item 1 has no 'content' \(nor 'value'\)"),
        ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], r"item 1's 'content' is a list"),
        ([{"role": "user", "content": "ok"}, 5], r"item 2 is a int"),
    ],
)
def test_a_list_that_is_not_chat_turns_is_a_clear_error(value, needle):
    with pytest.raises(CltxError, match=r"records\[0\]: field 'messages' " + needle + r".*fix: "):
        translate_records([{"messages": value}], Identity(), MTConfig(fields=["messages"]))


def test_file_errors_name_the_line(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(CHAT) + "\n" + json.dumps({"messages": ["hi"]}) + "\n")
    with pytest.raises(CltxError, match=r"in.jsonl:2: field 'messages' item 1 is a str .*fix: "):
        run_file(inp, tmp_path / "out.jsonl", Upper(), MTConfig(fields=["messages"]))


class InterruptAfter(Upper):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def translate(self, texts):
        if len(self.calls) >= self.k:
            raise KeyboardInterrupt
        return super().translate(texts)


def test_resume_of_a_chat_file_equals_an_uninterrupted_run(tmp_path):
    recs = []
    for i in range(6):
        r = copy.deepcopy(CHAT if i % 2 else SHAREGPT)
        r["id"] = i
        recs.append(r)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = MTConfig(fields=["messages", "conversations"], batch_records=2)
    ref = tmp_path / "ref.jsonl"
    report = run_file(inp, ref, Upper(), cfg)
    assert report["records"] == 6
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_file(inp, out, InterruptAfter(1), cfg)
    run_file(inp, out, Upper(), cfg, resume=True)
    assert out.read_bytes() == ref.read_bytes()
    rows = [json.loads(x) for x in ref.read_text().splitlines()]
    assert rows[0]["conversations"] == _upper_turns(SHAREGPT["conversations"], "value")
    assert rows[1]["_source"] == {"messages": CHAT["messages"]}


def test_cli_translates_chat_records_through_the_cache(tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    eng = tmp_path / "eng.py"
    eng.write_text(
        "import pathlib\n"
        f"LOG = pathlib.Path({str(tmp_path / 'calls.txt')!r})\n"
        "def translate(texts, tgt):\n"
        "    with LOG.open('a') as fh:\n"
        "        fh.write(str(len(texts)) + '\\n')\n"
        "    return [t.upper() for t in texts]\n"
    )
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(CHAT) + "\n" + json.dumps(SHAREGPT) + "\n")
    args = ["mt", str(inp), str(tmp_path / "out.jsonl"), "--fields", "messages,conversations",
            "--engine", f"python:{eng}:translate", "--cache", str(tmp_path / "cache")]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][2]["content"] == "  TURN LEFT AT THE BANK.\n"
    assert rows[1]["conversations"][0] == {"from": "human", "value": "NAME A COLOUR."}
    n_calls = len((tmp_path / "calls.txt").read_text().splitlines())
    r = CliRunner().invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == n_calls  # all from the cache
    assert [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()] == rows


@pytest.mark.integration
def test_embedded_engine_translates_a_conversation_turn_by_turn():
    from cltx.mt.engines import make_engine

    rec = {
        "messages": [
            {"role": "system", "content": "You are a friendly travel guide."},
            {"role": "user", "content": "What is the best time to visit Lisbon?"},
            {"role": "assistant", "content": "Spring is the best time, because the weather is mild."},
        ]
    }
    eng = make_engine("bergamot", "en", "pt")
    out = translate_records([rec], eng, MTConfig(fields=["messages"], src="en", tgt="pt"))[0]
    assert out["_mt"]["status"] == "joint", out["_mt"]
    assert [t["role"] for t in out["messages"]] == ["system", "user", "assistant"]
    texts = [t["content"] for t in out["messages"]]
    assert all(t and t != s["content"] for t, s in zip(texts, rec["messages"], strict=True))
    assert "Lisboa" in texts[1] and "?" in texts[1]
    assert "primavera" in texts[2].lower()
    assert not any(re.search(r"\[\d\]", t) for t in texts)
