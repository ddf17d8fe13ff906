"""``--references`` on chat-format fields: BLEU/chrF turn by turn, under the field's name.

Each output turn is paired with the reference record's turn at the same position; the expected
scores are computed here with sacrebleu on the turn texts paired by hand. Turns with a null/empty
source are not scored; unpairable turns (other turn count, bad reference turn, string vs chat list)
are counted in ``skipped``.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import sacrebleu
from typer.testing import CliRunner

from cltx.mt.pipeline import MTConfig
from cltx.mt.report import reference_scores
from cltx.mt.runner import run_file


class Upper:
    name = "upper"

    def translate(self, texts):
        return [t.upper() for t in texts]


def _jsonl(path, records, blank_first=False):
    path.write_text(("\n" if blank_first else "") + "".join(json.dumps(r) + "\n" for r in records))
    return path


def _expected(hyp, ref, skipped=0):
    return {
        "n": len(hyp),
        "bleu": round(sacrebleu.corpus_bleu(hyp, [ref]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyp, [ref]).score, 2),
        "skipped": skipped,
    }


def _msgs(*texts, roles=("system", "user", "assistant", "user", "assistant")):
    return [{"role": roles[i % len(roles)], "content": t} for i, t in enumerate(texts)]


SOURCES = [
    {
        "id": "a",
        "messages": _msgs(
            "You are a helpful assistant.",
            "Where is the train station?",
            None,  # a tool-call turn: not translated, not scored
            "",  # an empty turn: not translated, not scored
            "Turn left at the old bank and walk on.",
        ),
    },
    {"id": "b", "messages": _msgs("Be brief.", "What colour is the sky today?", "The sky is blue and clear.")},
]
# hand-written references: close to, but not the same as, the upper-cased output
REFS = [
    {
        "id": "a",
        "messages": _msgs(
            "YOU ARE A HELPFUL ASSISTANT.",
            "WHERE IS THE STATION?",
            "IGNORED: THE SOURCE TURN IS NULL",
            "IGNORED: THE SOURCE TURN IS EMPTY",
            "TURN LEFT AT THE BANK AND WALK ON.",
        ),
    },
    {"id": "b", "messages": _msgs("BE SHORT.", "WHAT COLOUR IS THE SKY TODAY?", "THE SKY IS BLUE.")},
]


def test_chat_field_is_scored_turn_by_turn(tmp_path):
    inp = _jsonl(tmp_path / "in.jsonl", SOURCES)
    refs = _jsonl(tmp_path / "refs.jsonl", REFS)
    report = run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["messages"]), references=refs)
    hyp, ref = [], []
    for s, r in zip(SOURCES, REFS, strict=True):
        for st, rt in zip(s["messages"], r["messages"], strict=True):
            if st["content"]:
                hyp.append(st["content"].upper())
                ref.append(rt["content"])
    assert len(hyp) == 6
    assert report["scores"]["messages"] == _expected(hyp, ref)
    assert 0 < report["scores"]["messages"]["bleu"] < 100  # the pairs really differ


def test_other_turn_counts_and_bad_reference_turns_are_counted(tmp_path):
    outputs = [
        {"id": 1, "messages": _msgs("ONE TWO THREE FOUR", "FIVE SIX SEVEN EIGHT")},
        # the reference lacks the system turn: positions no longer line up, the record's 2 turns are skipped
        {"id": 2, "messages": _msgs("NINE TEN ELEVEN", "TWELVE THIRTEEN")},
        {"id": 3, "messages": _msgs("A B C D", "E F G H", "I J K L", "M N O P", "Q R S T")},
        {"id": 4, "messages": _msgs("LAST ONE HERE")},
    ]
    ref_turns = [
        {"role": "system", "content": "A B C D"},
        {"role": "user", "content": None},  # null reference text
        {"role": "assistant", "content": 5},  # not a string
        {"role": "user"},  # no content/value key
        "Q R S T",  # not a turn object
    ]
    refs = _jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": 1, "messages": _msgs("ONE TWO THREE FIVE", "FIVE SIX SEVEN")},
            {"id": 2, "messages": _msgs("TWELVE THIRTEEN", roles=("user",))},
            {"id": 3, "messages": ref_turns},
            {"id": 4, "messages": _msgs("LAST ONE", "EXTRA TURN")},  # longer reference: skipped too
        ],
    )
    got = reference_scores(outputs, refs, ["messages"])
    hyp = ["ONE TWO THREE FOUR", "FIVE SIX SEVEN EIGHT", "A B C D"]
    ref = ["ONE TWO THREE FIVE", "FIVE SIX SEVEN", "A B C D"]
    assert got["messages"] == _expected(hyp, ref, skipped=2 + 4 + 1)


def test_all_turns_skipped_still_reports_the_count(tmp_path):
    outputs = [{"messages": _msgs("HELLO THERE", "GOOD DAY")}]
    refs = _jsonl(tmp_path / "refs.jsonl", [{"messages": _msgs("HELLO THERE")}])
    assert reference_scores(outputs, refs, ["messages"]) == {
        "messages": {"n": 0, "bleu": None, "chrf": None, "skipped": 2}
    }


def test_sharegpt_conversations(tmp_path):
    src = [
        {
            "conversations": [
                {"from": "human", "value": "Name a colour of the sea."},
                {"from": "gpt", "value": "The sea is often blue."},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "Count to three."},
                {"from": "gpt", "value": "One, two, three."},
            ]
        },
    ]
    ref = [
        {"conversations": [{"from": "human", "value": "NAME A COLOUR OF THE OCEAN."}, {"from": "gpt", "value": x}]}
        for x in ("THE SEA IS BLUE.",)
    ] + [
        # a reference in HF format for a ShareGPT output: each side's text is read with its own key
        {
            "conversations": [
                {"role": "user", "content": "COUNT TO THREE."},
                {"role": "assistant", "content": "1, 2, 3."},
            ]
        }
    ]
    inp = _jsonl(tmp_path / "in.jsonl", src)
    refs = _jsonl(tmp_path / "refs.jsonl", ref)
    report = run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["conversations"]), references=refs)
    hyp = [t["value"].upper() for r in src for t in r["conversations"]]
    refs_text = ["NAME A COLOUR OF THE OCEAN.", "THE SEA IS BLUE.", "COUNT TO THREE.", "1, 2, 3."]
    assert report["scores"]["conversations"] == _expected(hyp, refs_text)


def test_alignment_by_id_with_chat_and_string_fields(tmp_path):
    src = [
        {"id": 1, "question": "Who came first?", "messages": _msgs("Hello there friend.", "Hi to you too.")},
        {"id": 2, "question": "Why is it late?", "messages": _msgs("Good morning to all.", "Morning, everyone.")},
        {"id": 3, "question": "Which one?", "messages": _msgs("Not in the references.", "Left out.")},
    ]
    # shuffled, a subset (no id 3)
    ref = [
        {"id": 2, "question": "WHY IS IT SO LATE?", "messages": _msgs("GOOD MORNING ALL.", "MORNING, EVERYONE.")},
        {"id": 1, "question": "WHO CAME FIRST?", "messages": _msgs("HELLO FRIEND.", "HI TO YOU.")},
    ]
    inp = _jsonl(tmp_path / "in.jsonl", src)
    refs = _jsonl(tmp_path / "refs.jsonl", ref)
    report = run_file(inp, tmp_path / "o.jsonl", Upper(), MTConfig(fields=["question", "messages"]), references=refs)
    hyp = ["HELLO THERE FRIEND.", "HI TO YOU TOO.", "GOOD MORNING TO ALL.", "MORNING, EVERYONE."]
    assert report["scores"]["messages"] == _expected(
        hyp, ["HELLO FRIEND.", "HI TO YOU.", "GOOD MORNING ALL.", "MORNING, EVERYONE."]
    )
    # the string field is scored as before, on the same alignment
    assert report["scores"]["question"] == _expected(
        ["WHO CAME FIRST?", "WHY IS IT LATE?"], ["WHO CAME FIRST?", "WHY IS IT SO LATE?"]
    )


def test_string_vs_chat_list_is_a_counted_skip_with_a_warning(tmp_path, caplog):
    outputs = [
        {"messages": _msgs("SAME SHAPE HERE", "YES")},
        {"messages": _msgs("ONE", "TWO", "THREE")},  # reference is a string: 3 turns skipped
        {"messages": "A PLAIN STRING"},  # reference is a chat list: 1 skipped
    ]
    refs = _jsonl(
        tmp_path / "refs.jsonl",
        [
            {"messages": _msgs("SAME SHAPE HERE", "YES")},
            {"messages": "ONE TWO THREE"},
            {"messages": _msgs("A PLAIN STRING")},
        ],
        blank_first=True,  # line numbers are the file's: the string reference is on line 3
    )
    with caplog.at_level(logging.WARNING, logger="cltx.mt.report"):
        got = reference_scores(outputs, refs, ["messages"])
    assert got["messages"] == _expected(["SAME SHAPE HERE", "YES"], ["SAME SHAPE HERE", "YES"], skipped=4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "line 3" in warnings[0] and "'messages'" in warnings[0] and "2 record(s)" in warnings[0]


ENGINE = "def translate(texts, tgt):\n    return [t.upper() for t in texts]\n"


@pytest.mark.parametrize("mismatch", [False, True])
def test_cli_shows_the_chat_row(tmp_path, mismatch):
    from cltx.cli.main import app

    (tmp_path / "eng.py").write_text(ENGINE)
    inp = _jsonl(tmp_path / "in.jsonl", SOURCES)
    ref = [dict(r) for r in REFS]
    if mismatch:
        ref[1] = {"id": "b", "messages": ref[1]["messages"][:2]}  # 3 turns skipped
    refs = _jsonl(tmp_path / "refs.jsonl", ref)
    args = [
        "mt",
        inp,
        tmp_path / "o.jsonl",
        "--fields",
        "messages",
        "--engine",
        f"python:{tmp_path / 'eng.py'}:translate",
    ]
    r = CliRunner().invoke(app, [*map(str, args), "--references", str(refs)])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "o.report.json").read_text())["scores"]["messages"]
    assert rep["n"] == (3 if mismatch else 6) and rep["skipped"] == (3 if mismatch else 0)
    row = rf"messages\W+{rep['n']}\W+{rep['bleu']:.2f}\W+{rep['chrf']:.2f}"
    assert re.search(row + (r"\W+3\b" if mismatch else r"\W*$"), r.output, re.M), r.output
    assert ("skipped" in r.output) == mismatch
