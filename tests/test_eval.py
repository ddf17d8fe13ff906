"""cltx eval: answer-language share (py3langid) and held-out NLL per language, models side by side."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import cltx.clo.evaluate as ev
from cltx.cli.main import app
from cltx.clo._tiny import tiny_chat_records, tiny_llama, tiny_records, tiny_tokenizer
from cltx.clo.data import DataSpec, PromptFormatter, _sequence, build_examples, tokenize_examples
from cltx.errors import CltxError


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_language_detection():
    assert ev.detect_language("The weather is lovely today and we are going to the beach.") == "en"
    assert ev.detect_language("O tempo está ótimo hoje e nós vamos à praia com os amigos.") == "pt"
    assert ev.detect_language("123 --- !!") is None


def _direct_nll(model, tok, recs, lang):
    """Token-mean NLL from the model's own full logits (independent of the fused loss)."""
    ex, rep = build_examples(recs)
    tex = tokenize_examples(ex, PromptFormatter(tok), 1024, rep)
    total, n = 0.0, 0
    for t in tex:
        ids, labels = _sequence(t.prompt_en, t.response_en) if lang == "en" else _sequence(t.prompt_tg, t.response_tg)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        lab = torch.tensor(labels)
        keep = lab != -100
        total -= float(torch.log_softmax(logits, -1)[keep].gather(1, lab[keep][:, None]).sum())
        n += int(keep.sum())
    return total / n


def test_two_models_side_by_side_with_json(tmp_path, tok):
    recs = tiny_records(6, seed=2)
    a, b = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    res = ev.evaluate_models([("base", a, tok), ("clo", b, tok)], recs, max_new_tokens=4, out=tmp_path / "e.json")
    assert res["tgt"] == "pt" and [m["model"] for m in res["models"]] == ["base", "clo"]
    for m, model in zip(res["models"], (a, b), strict=True):
        for lang in ("en", "tgt"):
            assert m[lang]["prompts"] == 6 and 0.0 <= m[lang]["in_prompt_language"] <= 1.0
            assert sum(m[lang]["detected"].values()) == 6
            assert m[lang]["nll"] == pytest.approx(_direct_nll(model, tok, recs, lang), rel=1e-5)
        assert len(m["samples"]) == 12 and {s["prompt_language"] for s in m["samples"]} == {"en", "pt"}
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["models"][1]["tgt"]["nll"] == res["models"][1]["tgt"]["nll"]
    rows = ev.summary_rows(res)
    assert [r["model"] for r in rows] == ["base", "clo"]


def test_share_counts_answers_in_the_prompt_language(tok, monkeypatch):
    answers = {
        # 3 English prompts: two English answers, one Portuguese
        "en": [
            "The cat is sleeping on the warm mat in the house.",
            "O gato está dormindo no tapete quente da casa.",
            "We walked to the big green tree near the river.",
        ],
        # 3 Portuguese prompts: one Portuguese answer, one English, one empty
        "pt": [
            "O cachorro correu para a casa vermelha hoje de manhã.",
            "The dog ran to the red house this morning.",
            "",
        ],
    }
    calls = iter(["en", "pt"])

    def fake_generate(model, tok_, prompts, max_new_tokens, batch_size, progress, task):
        return answers[next(calls)][: len(prompts)]

    monkeypatch.setattr(ev, "_generate", fake_generate)
    res = ev.evaluate_models([("m", tiny_llama(tok), tok)], tiny_records(3), max_new_tokens=2)
    m = res["models"][0]
    assert m["en"]["in_prompt_language"] == pytest.approx(2 / 3)
    assert m["tgt"]["in_prompt_language"] == pytest.approx(1 / 3)
    assert m["tgt"]["detected"] == {"pt": 1, "en": 1, "none": 1}


def test_bad_eval_input(tok):
    recs = [{k: v for k, v in r.items() if k != "_mt"} for r in tiny_records(3)]
    with pytest.raises(CltxError, match="--tgt"):
        ev.evaluate_models([("m", tiny_llama(tok), tok)], recs)
    with pytest.raises(CltxError, match="max_new_tokens"):
        ev.evaluate_models([("m", tiny_llama(tok), tok)], recs, tgt="pt", max_new_tokens=0)
    with pytest.raises(CltxError, match="no usable"):
        ev.evaluate_models([("m", tiny_llama(tok), tok)], [{"x": 1}], tgt="pt")


def test_cli_eval(tmp_path, tok):
    for name, seed in (("base", 0), ("tuned", 1)):
        tiny_llama(tok, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in tiny_records(4, seed=9)), encoding="utf-8")
    args = ["eval", "--model", str(tmp_path / "base"), "--model", str(tmp_path / "tuned"), "--data", str(data)]
    res = CliRunner().invoke(app, [*args, "--max-new-tokens", "3", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "base" in res.output and "tuned" in res.output and "NLL" in res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [m["model"] for m in rep["models"]] == [str(tmp_path / "base"), str(tmp_path / "tuned")]
    bad = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "base"), "--data", str(tmp_path / "no.jsonl")])
    assert bad.exit_code == 1 and "no such file" in bad.output


def test_cli_eval_passes_the_system_prompt(tmp_path, tok, monkeypatch):
    """A model trained with ``cltx clo --system-prompt`` is evaluated with the same system message."""
    made = []
    real = ev.PromptFormatter

    def spy(*a, **kw):
        made.append(kw.get("system_prompt"))
        return real(*a, **kw)

    monkeypatch.setattr(ev, "PromptFormatter", spy)
    tiny_llama(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in tiny_records(2, seed=9)), encoding="utf-8")
    args = ["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--max-new-tokens", "2"]
    res = CliRunner().invoke(app, [*args, "--system-prompt", "Answer briefly"])
    assert res.exit_code == 0, res.output
    assert "Answer briefly" in made


def test_cli_eval_chat_turns(tmp_path, tok):
    tiny_llama(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    recs = tiny_chat_records(2, seed=9)
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    args = ["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--max-new-tokens", "2"]
    for turns_opt, usable, turn in (("all", 4, {1, 3}), ("first", 2, {1}), ("last", 2, {3})):
        res = CliRunner().invoke(app, [*args, "--chat-turns", turns_opt, "--json", str(tmp_path / f"{turns_opt}.json")])
        assert res.exit_code == 0, res.output
        rep = json.loads((tmp_path / f"{turns_opt}.json").read_text())
        assert rep["usable"] == usable and {s["turn"] for s in rep["models"][0]["samples"]} == turn
        assert f"{usable} held-out examples (chat exchanges)" in res.output


def test_target_language_from_the_mt_report(tmp_path, tok, monkeypatch):
    recs = [{k: v for k, v in r.items() if k != "_mt"} for r in tiny_records(2)]
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    (tmp_path / "held.report.json").write_text(json.dumps({"src": "en", "tgt": "pt"}), encoding="utf-8")
    monkeypatch.setattr(ev, "_generate", lambda model, tok_, prompts, *a: ["o gato"] * len(prompts))
    res = ev.evaluate_models([("m", tiny_llama(tok), tok)], data)
    assert res["tgt"] == "pt" and res["models"][0]["tgt"]["language"] == "pt"


def test_target_language_must_be_measurable(tok):
    recs = tiny_records(2)
    m = ("m", tiny_llama(tok), tok)
    for bad, msg in (("xx", "py3langid"), ("por", "ISO 639-1"), ("en", "English")):
        with pytest.raises(CltxError, match=rf"^tgt='{bad}'.*{msg}"):
            ev.evaluate_models([m], recs, tgt=bad)
    with pytest.raises(CltxError, match="^batch_size=0"):
        ev.evaluate_models([m], recs, tgt="pt", batch_size=0)


def test_models_answer_the_same_prompts_and_skips_are_shown(tmp_path, tok, monkeypatch):
    recs = tiny_records(4, seed=3)
    long_ = {
        "instruction": "o gato " * 30,
        "output": "o cao",
        "_source": {"instruction": "the cat " * 30, "output": "a"},
    }
    recs.insert(1, long_)  # fits a 256-token context, not a 32-token one
    recs.insert(3, {"instruction": "o gato", "output": "", "_source": {"instruction": "the cat", "output": "dog"}})
    short = tiny_llama(tok, seed=1)
    short.config.max_position_embeddings = 32
    monkeypatch.setattr(ev, "_generate", lambda model, tok_, prompts, *a: ["o gato"] * len(prompts))
    res = ev.evaluate_models([("long", tiny_llama(tok), tok), ("short", short, tok)], recs, limit=3)
    assert res["usable"] == 3 and [m["en"]["prompts"] for m in res["models"]] == [3, 3]
    assert [s["record"] for s in res["models"][0]["samples"]][:3] == [1, 3, 5]  # the same records for both
    assert [s["record"] for s in res["models"][1]["samples"]][:3] == [1, 3, 5]
    assert res["skipped"] == {"empty_response": 1, "prompt_too_long": 1}
    assert res["skipped_first_lines"] == {"empty_response": [4], "prompt_too_long": [2]}
    # on the screen: the skipped records, with their lines (the JSON alone was easy to miss)
    tok.save_pretrained(tmp_path / "m")
    tiny_llama(tok).save_pretrained(tmp_path / "m")
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    out = CliRunner().invoke(
        app, ["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--max-new-tokens", "2"]
    )
    assert out.exit_code == 0, out.output
    assert "skipped 1 of 6 records: 1 empty_response (first lines [4])" in " ".join(out.output.split())
    assert "5 held-out records" in out.output


def test_chat_records_evaluate_every_exchange_after_its_history(tok):
    """A two-exchange conversation is two held-out prompts per language; the second is asked after the
    first exchange (its own language's), and each sample says which turn it is."""
    recs = tiny_chat_records(3, seed=4)
    model = tiny_llama(tok, seed=0)
    res = ev.evaluate_models([("base", model, tok)], recs, max_new_tokens=2)
    m = res["models"][0]
    assert res["usable"] == 6 and m["en"]["prompts"] == m["tgt"]["prompts"] == 6
    assert sorted(
        (s["record"], s["turn"], s["history_turns"]) for s in m["samples"] if s["prompt_language"] == "en"
    ) == [(i, t, h) for i in (1, 2, 3) for t, h in ((1, 0), (3, 2))]
    # the NLL is the model's own over each exchange's response given the conversation before it
    assert m["tgt"]["nll"] == pytest.approx(_direct_nll(model, tok, recs, "tgt"), rel=1e-5)
    first = ev.evaluate_models([("base", model, tok)], recs, max_new_tokens=2, spec=DataSpec(chat_turns="first"))
    assert first["usable"] == 3 and {s["turn"] for s in first["models"][0]["samples"]} == {1}
