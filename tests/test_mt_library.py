"""The cltx.mt library API as the README documents it: bad arguments are CltxErrors that name the
argument and the fix, found before any engine call (they were AttributeErrors deep in the pipeline,
or silent 'empty'/'failed' records)."""

from __future__ import annotations

import pytest

from cltx.errors import CltxError
from cltx.mt import MTConfig, translate_records


class Counting:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def translate(self, texts):
        self.calls += 1
        return [t.upper() for t in texts]


CFG = MTConfig(fields=["question", "answer"])


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ({"question": "q"}, r"records=\{'question': 'q'\}: give a list of dicts"),
        ("question", r"records='question': give a list of dicts"),
        ([{"question": "q"}, "a string"], r"records\[1\]: expected a JSON object, got str"),
        ([{"question": 5}], r"records\[0\]: field 'question' is a int \(5\), not a string; fix:"),
        ([{"question": "q"}, {"title": "t"}, {"x": 1}], r"records\[1\]: record has none of the fields .*1 more"),
    ],
)
def test_bad_records_are_named_before_any_engine_call(records, message):
    eng = Counting()
    with pytest.raises(CltxError, match=message):
        translate_records(records, eng, CFG)
    assert eng.calls == 0


def test_require_all_is_checked_per_record():
    with pytest.raises(CltxError, match=r"records\[0\]: record lacks field\(s\) 'answer'"):
        translate_records([{"question": "q"}], Counting(), MTConfig(fields=["question", "answer"], require_all=True))


@pytest.mark.parametrize(
    ("engine", "config", "hooks", "message"),
    [
        (None, CFG, (), r"engine=None: give an engine"),
        ("bergamot", CFG, (), r"engine='bergamot': give an engine object, e\.g\. make_engine\('bergamot'"),
        (Counting(), {"fields": ["question"]}, (), r"config=\{'fields'.*give an MTConfig"),
        (Counting(), CFG, [print, 1], r"hooks=1: each hook must be a callable"),
        (Counting(), CFG, print, r"hooks=<built-in function print>: give a list of callables"),
    ],
)
def test_bad_engine_config_or_hooks(engine, config, hooks, message):
    with pytest.raises(CltxError, match=message):
        translate_records([{"question": "q"}], engine, config, hooks=hooks)


def test_field_names_must_be_strings():
    with pytest.raises(CltxError, match=r"--fields=\[1\]: give field names as strings"):
        MTConfig(fields=[1])


def test_valid_records_still_translate_and_twice_in_one_process():
    recs = [{"question": "who?", "answer": "me"}, {"answer": ""}]
    for _ in range(2):
        out = translate_records(recs, Counting(), CFG)
        assert out[0]["question"] == "WHO?" and out[0]["_mt"]["line"] == 1
        assert out[1]["_mt"]["status"] == "empty"
    assert recs[0] == {"question": "who?", "answer": "me"}  # the caller's records are not changed
