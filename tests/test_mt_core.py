"""cltx mt core: Indicator Tokens, Catalyst Statements, length splitting, the pipeline (no real engine)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cltx.errors import CltxError
from cltx.mt import markers as its
from cltx.mt.catalyst import DEFAULT_SENTENCE, catalyst_for
from cltx.mt.engines import EngineWrapper, KeepNewlines
from cltx.mt.pipeline import MTConfig, Pipeline, translate_records
from cltx.mt.segment import pack

FIELDS = ["instruction", "input", "output", "question", "passage", "answer"]


class Identity:
    name = "identity"

    def __init__(self, max_input_len=None):
        self.max_input_len = max_input_len
        self.calls: list[list[str]] = []

    def translate(self, texts):
        self.calls.append(list(texts))
        return list(texts)


class Upper:
    """A deterministic 'translation' that keeps markers: upper-cases letters."""

    name = "upper"

    def translate(self, texts):
        return [t.upper() for t in texts]


# ----------------------------------------------------------------------------------- markers
@pytest.mark.parametrize(
    "translated",
    [
        "CS. [1] a b [2] c [3]",
        "CS. [ 1 ] a b [2]c[ 3 ]",
        "CS. ［1］ a b 【2】 c ［3］.",
        "[1]a b\n[2] c\n[3]",
    ],
)
def test_split_tolerates_spacing_and_full_width(translated):
    assert its.split(translated, 2, its.BRACKET) == ["a b", "c" + ("." if translated.endswith(".") else "")]


@pytest.mark.parametrize(
    ("translated", "why"),
    [
        ("[1] a [3]", "expected"),  # a marker dropped
        ("[1] a [2] b [2] [3]", "expected"),  # duplicated
        ("[2] b [1] a [3]", "expected"),  # reordered
        ("[1] a [2] [3]", "empty"),  # a field emptied
        ("[1] a [2] b [3] extra words", "closing marker"),
    ],
)
def test_split_rejects_broken_markers(translated, why):
    with pytest.raises(its.DecompositionError, match=why):
        its.split(translated, 2, its.BRACKET)


def test_style_fallback_when_text_contains_markers():
    assert its.choose_style(["plain text"]) is its.BRACKET
    assert its.choose_style(["see reference [3] above"]) is its.PAREN
    assert its.choose_style(["see ［3］ and (2)"]) is its.DOUBLE_BRACKET
    assert its.choose_style(["[[1]] (2) [3] |4|"]) is None


def test_parse_styles_names_and_errors():
    assert its.parse_styles("paren, bracket") == (its.PAREN, its.BRACKET)
    with pytest.raises(CltxError, match="--it-styles"):
        its.parse_styles("bracket,stars")


def test_itstyle_rejects_pattern_not_matching_template():
    with pytest.raises(ValueError, match="does not match"):
        its.ITStyle("bad", "<{i}>", r"\[(?P<n>\d+)\]")


# ----------------------------------------------------------------------------------- catalyst
def test_catalyst_templates_pick_by_fields():
    qa = catalyst_for(["question", "passage", "answer"])
    assert qa.startswith("The following are a question, a passage and the answer")
    assert "instruction" in catalyst_for(["instruction", "output"])
    assert "premise" in catalyst_for(["premise", "hypothesis"])
    assert "search query" in catalyst_for(["query", "title", "snippet"])
    assert catalyst_for(["foo"]) == DEFAULT_SENTENCE
    assert catalyst_for(["question"], "none") is None
    assert catalyst_for(["question"], "Two texts follow.") == "Two texts follow."
    assert "premise" in catalyst_for(["premise"], "kind:nli")
    with pytest.raises(CltxError, match="--catalyst"):
        catalyst_for(["x"], "kind:poetry")
    with pytest.raises(CltxError, match="--catalyst"):
        MTConfig(fields=["x"], catalyst="kind:poetry")  # checked when the settings are made


def test_catalyst_file_maps_field_lists(tmp_path):
    f = tmp_path / "cs.json"
    f.write_text(json.dumps({"question, answer": "Q then A.", "*": "Other."}))
    eng = Identity()
    cfg = MTConfig(fields=["question", "answer", "title"], catalyst=f"@{f}")
    translate_records([{"question": "q", "answer": "a"}, {"title": "t"}], eng, cfg)
    assert eng.calls[0] == ["Q then A. [1] q [2] a [3]", "Other. [1] t [2]"]
    f.write_text(json.dumps({"question,answer": ""}))  # empty: no CS; no "*": the automatic template
    assert catalyst_for(["question", "answer"], f"@{f}") is None
    assert catalyst_for(["premise"], f"@{f}").startswith("The following are a premise")
    f.write_text("[1, 2]")
    with pytest.raises(CltxError, match="one JSON object"):
        MTConfig(fields=["x"], catalyst=f"@{f}")
    with pytest.raises(CltxError, match="is not a file"):
        MTConfig(fields=["x"], catalyst=f"@{tmp_path}/nope.json")


# ----------------------------------------------------------------------------------- segment
@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*"ab .!?,;\n\t", "word", "Ünï", "。"]), max_size=120).map("".join), st.integers(1, 40))
def test_pack_is_lossless_and_within_limit(text, limit):
    pieces = pack(text, limit)
    assert "".join(pieces) == text
    assert all(len(p.strip()) <= limit for p in pieces)


def test_pack_prefers_sentence_boundaries():
    text = "One short sentence. Another short sentence. A third one here."
    pieces = pack(text, 45)
    assert pieces == ["One short sentence. Another short sentence. ", "A third one here."]


# ----------------------------------------------------------------------------------- pipeline
_field_text = st.lists(
    st.sampled_from([*"abc XYZ.,!?\n\t0123456789[]()|［］【】（）é中", "[1]", "(2)", "[[3]]", "|4|"]), max_size=30
).map("".join)
_record = st.fixed_dictionaries(
    {"kind": st.just("x")},
    optional={f: st.one_of(_field_text, st.none()) for f in FIELDS} | {"extra": st.integers()},
)


def _has_field(r):
    return any(isinstance(r.get(f), str) for f in FIELDS)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record.filter(_has_field), min_size=1, max_size=6), st.sampled_from([None, 12, 40]))
def test_identity_engine_round_trips_every_record(records, limit):
    cfg = MTConfig(fields=FIELDS, batch_records=4)
    for engine in (Identity(limit), KeepNewlines(Identity(limit))):
        out = translate_records(records, engine, cfg)
        assert len(out) == len(records)
        for rec, o in zip(records, out, strict=True):
            assert {k: v for k, v in o.items() if not k.startswith("_")} == rec
            assert o["_source"] == {f: rec[f] for f in FIELDS if isinstance(rec.get(f), str)}
            assert o["_mt"]["status"] in ("joint", "fallback", "empty")
            if o["_mt"]["status"] == "fallback":  # only when every style occurs in the text
                assert o["_mt"]["reason"] == "every IT style already occurs in the record"


class MarkerBreaker:
    """Translates like Upper, but breaks the markers of joint sequences in a chosen way."""

    def __init__(self, how):
        self.how = how
        self.name = f"breaker-{how}"

    def translate(self, texts):
        out = []
        for t in texts:
            nums = re.findall(r"\[(\d+)\]", t)
            if len(nums) >= 2:
                if self.how == "drop":
                    t = t.replace(f"[{nums[-1]}]", "", 1)
                elif self.how == "duplicate":
                    t = t + f" [{nums[0]}]"
                elif self.how == "reorder":
                    t = t.replace(f"[{nums[0]}]", "@@", 1).replace(f"[{nums[1]}]", f"[{nums[0]}]", 1)
                    t = t.replace("@@", f"[{nums[1]}]")
            out.append(t.upper())
        return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "question": st.text("abc de.", min_size=1, max_size=30),
                "answer": st.text("xyz w", min_size=1, max_size=20),
            }
        ).filter(lambda r: r["question"].strip() and r["answer"].strip()),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(["drop", "duplicate", "reorder"]),
)
def test_broken_markers_fall_back_and_lose_nothing(records, how):
    cfg = MTConfig(fields=["question", "answer"], styles=(its.BRACKET,))
    out = translate_records(records, MarkerBreaker(how), cfg)
    assert len(out) == len(records)
    for rec, o in zip(records, out, strict=True):
        assert o["_mt"]["status"] == "fallback"
        assert o["_mt"]["reason"]
        for f in ("question", "answer"):
            lead, core = rec[f][: len(rec[f]) - len(rec[f].lstrip())], rec[f].strip()
            assert o[f].startswith(lead) and core.upper() in o[f]
            assert o["_source"][f] == rec[f]


class BracketBreaker:
    """Drops square-bracket markers (keeps parenthesised ones)."""

    def translate(self, texts):
        return [re.sub(r"\[\d+\]", "", t).upper() if "[1]" in t else t.upper() for t in texts]


def test_failed_record_is_retried_with_the_next_style():
    rec = {"question": "Who?", "answer": "Ana"}
    out = translate_records([rec], BracketBreaker(), MTConfig(fields=FIELDS))[0]
    assert out["_mt"]["status"] == "joint" and out["_mt"]["it_style"] == "paren" and out["_mt"]["style_retries"] == 1
    assert "reason" not in out["_mt"]
    assert out["question"] == "WHO?" and out["answer"] == "ANA"
    out = translate_records([rec], BracketBreaker(), MTConfig(fields=FIELDS, style_retries=0))[0]
    assert out["_mt"]["status"] == "fallback" and out["_mt"]["it_style"] == "bracket"
    # text that already holds "(1)": the only other style is taken, so no retry is possible
    rec2 = {"question": "Who (1)?", "answer": "Ana"}
    out = translate_records([rec2], BracketBreaker(), MTConfig(fields=FIELDS, styles=(its.BRACKET, its.PAREN)))[0]
    assert out["_mt"]["status"] == "fallback" and "markers" in out["_mt"]["reason"]


def test_joint_mode_sends_one_sequence_per_record_with_catalyst():
    eng = Identity()
    recs = [
        {"question": "Who?", "passage": "Ana did it.", "answer": "Ana"},
        {"instruction": "Say hi.", "output": "Hi."},
    ]
    out = translate_records(recs, eng, MTConfig(fields=FIELDS))
    assert len(eng.calls) == 1 and len(eng.calls[0]) == 2
    assert eng.calls[0][0] == (
        "The following are a question, a passage and the answer to the question, quoted from the passage. "
        "[1] Who? [2] Ana did it. [3] Ana [4]"
    )
    assert [o["_mt"]["status"] for o in out] == ["joint", "joint"]
    assert all(o["_mt"]["it_style"] == "bracket" for o in out)


def test_separate_mode_translates_field_by_field():
    eng = Identity()
    recs = [{"question": "Who?", "passage": "Ana did it.", "answer": "Ana"}]
    out = translate_records(recs, eng, MTConfig(fields=FIELDS, mode="separate"))
    assert eng.calls == [["Who?", "Ana did it.", "Ana"]]
    assert out[0]["_mt"] == {"line": 1, "status": "separate"}


def test_long_field_is_split_not_truncated_and_recorded():
    eng = Identity(max_input_len=30)
    passage = "First sentence is here. Second sentence is here. Third one."
    out = translate_records([{"passage": passage, "answer": "here"}], Upper(), MTConfig(fields=FIELDS))
    assert out[0]["passage"] == passage.upper()
    for mode in ("joint", "separate"):
        out = translate_records([{"passage": passage, "answer": "here"}], eng, MTConfig(fields=FIELDS, mode=mode))
        assert out[0]["passage"] == passage
        assert out[0]["_mt"]["split"], out[0]["_mt"]
        assert all(len(t) <= 30 for call in eng.calls for t in call)


class Flaky:
    """Raises on any batch containing 'boom'."""

    name = "flaky"

    def translate(self, texts):
        if any("boom" in t for t in texts):
            raise RuntimeError("engine exploded")
        return [t.upper() for t in texts]


def test_engine_error_is_isolated_to_its_record():
    recs = [{"answer": "fine"}, {"answer": "boom"}, {"answer": "also fine"}]
    out = translate_records(recs, Flaky(), MTConfig(fields=["answer"], max_errors=5))
    assert [o["_mt"]["status"] for o in out] == ["joint", "failed", "joint"]
    assert out[1]["answer"] == "boom" and "engine exploded" in out[1]["_mt"]["error"]
    assert out[0]["answer"] == "FINE"


def test_error_budget_stops_the_run():
    recs = [{"answer": f"boom {i}"} for i in range(3)]
    with pytest.raises(CltxError, match="--max-errors=2"):
        translate_records(recs, Flaky(), MTConfig(fields=["answer"], max_errors=2))


def test_wrong_output_length_is_an_engine_error():
    class Short:
        def translate(self, texts):
            return texts[:-1]

    out = translate_records([{"answer": "a"}, {"answer": "b"}], Short(), MTConfig(fields=["answer"]))
    assert [o["_mt"]["status"] for o in out] == ["failed", "failed"]
    assert "returned 0 items for 1 texts" in out[0]["_mt"]["error"]


def test_hooks_see_every_record_and_extend_metadata():
    seen = []

    def flag(res):
        seen.append(res.line)
        res.meta["flags"] = ["checked"] if res.translated else []

    out = translate_records([{"answer": "a"}, {"answer": ""}], Upper(), MTConfig(fields=["answer"]), hooks=[flag])
    assert seen == [1, 2]
    assert out[0]["_mt"]["flags"] == ["checked"] and out[1]["_mt"]["status"] == "empty"


def test_wrappers_compose_and_forward_attributes():
    class Counting(EngineWrapper):
        n = 0

        def translate(self, texts):
            Counting.n += len(texts)
            return super().translate(texts)

    eng = Counting(KeepNewlines(Identity(max_input_len=99)))
    assert eng.max_input_len == 99 and eng.name == "identity"
    assert eng.translate(["a\n\nb", "c"]) == ["a\n\nb", "c"]
    assert Counting.n == 2


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"fields": []}, "--fields"),
        ({"fields": ["a", "a"]}, "--fields"),
        ({"fields": ["_mt"]}, "--fields"),
        ({"fields": ["a"], "mode": "both"}, "--mode"),
        ({"fields": ["a"], "max_errors": -1}, "--max-errors"),
    ],
)
def test_config_errors_name_the_option(kwargs, arg):
    with pytest.raises(CltxError, match=arg):
        MTConfig(**kwargs)


def test_pipeline_reads_limit_from_engine():
    pipe = Pipeline(KeepNewlines(Identity(max_input_len=7)), MTConfig(fields=["a"]))
    assert pipe.limit == 7


@pytest.mark.parametrize(
    ("returned", "needle"),
    [
        ([None], "item 1 of 1 as a NoneType (None), not a str"),
        (["ok", 5], "item 2 of 2 as a int (5), not a str"),
        ("A", "returned a str, not a list, for 1 texts"),
    ],
)
def test_non_string_engine_output_names_the_item_and_its_type(returned, needle):
    # [None] was reported as "returned 1 items for 1 texts", which hides what is wrong
    from cltx.mt.engines import EngineOutputError, checked_translate

    class Bad:
        name = "bad"

        def translate(self, texts):
            return returned

    texts = ["a"] if isinstance(returned, str) else ["a"] * len(returned)
    with pytest.raises(EngineOutputError) as e:
        checked_translate(Bad(), texts)
    assert needle in str(e.value) and "one str per input text" in str(e.value)
    out = translate_records([{"answer": "a"}], Bad(), MTConfig(fields=["answer"], mode="separate"))
    if len(texts) == 1:
        assert out[0]["_mt"]["status"] == "failed" and needle in out[0]["_mt"]["error"]


def test_existing_source_and_mt_are_kept_as_prev():
    # a cltx mt output translated again (back-translation) lost its _source/_mt silently
    rec = {"question": "x", "_mt": {"a": 1}, "_source": 5}
    out = translate_records([rec], Upper(), MTConfig(fields=["question"]))[0]
    assert out["_source_prev"] == 5 and out["_mt_prev"] == {"a": 1}
    assert out["_source"] == {"question": "x"} and out["_mt"]["status"] == "joint"
    # a third pass would overwrite the *_prev keys: refused, never silent
    with pytest.raises(CltxError, match=r"_source_prev.*fix: remove or rename"):
        translate_records([out], Upper(), MTConfig(fields=["question"]))
    with pytest.raises(CltxError, match="_mt_prev"):
        MTConfig(fields=["question", "_mt_prev"])
