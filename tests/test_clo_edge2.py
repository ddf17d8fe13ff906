"""More odd but realistic input to `cltx clo` / `cltx eval`: multimodal-format chat content, honest eval
counts for chat records, --max-length checks in eval, and JSONL files that start with an array line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import cltx.clo.evaluate as ev
from cltx.cli.main import app
from cltx.clo._tiny import tiny_chat_records, tiny_llama, tiny_records, tiny_tokenizer
from cltx.clo.data import (
    SKIP_REASONS,
    PromptFormatter,
    build_examples,
    describe_skips,
    read_records,
    read_records_with_lines,
    tokenize_examples,
)
from cltx.errors import CltxError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _parts(*texts: str) -> list[dict]:
    return [{"type": "text", "text": t} for t in texts]


def _rec(en: list[tuple[str, object]], pt: list[tuple[str, object]], key: str = "content") -> dict:
    role = "role" if key == "content" else "from"
    return {
        "messages": [{role: r, key: t} for r, t in pt],
        "_source": {"messages": [{role: r, key: t} for r, t in en]},
        "_mt": {"tgt": "pt"},
    }


# 1. chat content given as a list of parts (OpenAI / HF multimodal format)


def test_chat_content_of_text_parts_is_joined_like_a_chat_template_renders_it(tok):
    en = [("user", _parts("the cat", " sat")), ("assistant", "a dog"), ("user", "red"), ("assistant", _parts("blue"))]
    pt = [("user", _parts("o gato", " sentou")), ("assistant", "um cao"), ("user", "vermelho"),
          ("assistant", _parts("az", "ul"))]  # fmt: skip
    ex, rep = build_examples([_rec(en, pt)])
    assert not rep.skipped and (rep.used, rep.examples) == (1, 2)
    assert [(e.prompt_en, e.response_en, e.prompt_tg, e.response_tg) for e in ex] == [
        ("the cat sat", "a dog", "o gato sentou", "um cao"),
        ("red", "blue", "vermelho", "azul"),
    ]
    assert ex[1].history_en == (("user", "the cat sat"), ("assistant", "a dog"))
    # ShareGPT turns with a list "value" read the same way
    ex2, _ = build_examples([_rec([("human", _parts("the ", "cat")), ("gpt", "a dog")],
                                  [("human", _parts("o ", "gato")), ("gpt", "um cao")], key="value")])  # fmt: skip
    assert [(e.prompt_en, e.prompt_tg) for e in ex2] == [("the cat", "o gato")]
    # the joined text is what the chat template renders
    tex = tokenize_examples(ex, PromptFormatter(tok), 256, rep)
    assert tok.convert_ids_to_tokens(tex[0].prompt_en) == ["<|user|>", "the", "cat", "sat", "<|end|>", "<|assistant|>"]


def test_chat_content_with_a_non_text_part_skips_the_record_with_its_reason():
    image = {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    ok_en, ok_pt = [("user", "the cat"), ("assistant", "a dog")], [("user", "o gato"), ("assistant", "um cao")]
    recs = [
        # an image in a later turn: the conversation used to end silently before it, keeping exchange 1
        _rec(
            ok_en + [("user", [*_parts("what is"), image]), ("assistant", "a cat")],
            ok_pt + [("user", [*_parts("o que e"), image]), ("assistant", "um gato")],
        ),  # fmt: skip
        # audio in the first turn, target side only: used to be the vague not_text
        _rec(ok_en, [("user", [{"type": "input_audio", "input_audio": {"data": "UklG"}}]), ("assistant", "um cao")]),
        _rec(ok_en, ok_pt),
    ]
    ex, rep = build_examples(recs, lines=[3, 5, 6])
    assert [e.index for e in ex] == [2]
    assert dict(rep.skipped) == {"non_text_content": 2} and not rep.exchanges_skipped
    assert rep.as_dict()["skipped_first_lines"] == {"non_text_content": [3, 5]}
    assert "non_text_content" in SKIP_REASONS and "image" in describe_skips(rep)
    # a null text (a tool call) still only ends the conversation, as before
    ex, rep = build_examples([_rec(ok_en + [("assistant", None)], ok_pt + [("assistant", None)])])
    assert len(ex) == 1 and not rep.skipped


# 2. cltx eval: records, evaluated examples and skipped exchanges counted apart


def _chat_with_a_long_second_prompt() -> list[dict]:
    recs = tiny_chat_records(3, seed=5)
    for view, words in ((recs[1]["_source"], "the cat "), (recs[1], "o gato ")):
        view["messages"][2]["content"] = words * 30  # exchange 2's own prompt cannot fit 32 tokens
    return recs


def test_eval_counts_skipped_exchanges_apart_from_records(tok, monkeypatch):
    monkeypatch.setattr(ev, "_generate", lambda model, tok_, prompts, *a: ["o gato"] * len(prompts))
    recs = _chat_with_a_long_second_prompt()
    res = ev.evaluate_models([("m", tiny_llama(tok), tok)], recs, max_length=32)
    # every record is evaluated (record 2 with its first exchange): none is a skipped record
    assert res["records"] == 3 and res["records_evaluated"] == 3 and res["usable"] == 5
    assert res["skipped"] == {} and res["skipped_first_lines"] == {}
    assert res["exchanges_skipped"] == {"prompt_too_long": 1}
    # an exchange unusable in the data (identical responses) is counted the same way, not lost
    same = tiny_chat_records(2, seed=6)
    same[0]["messages"][1]["content"] = same[0]["_source"]["messages"][1]["content"]
    res = ev.evaluate_models([("m", tiny_llama(tok), tok)], same)
    assert (res["records_evaluated"], res["usable"], res["skipped"]) == (2, 3, {})
    assert res["exchanges_skipped"] == {"same_response": 1}


def test_a_record_skipped_for_length_takes_its_skipped_exchanges_with_it(tok):
    """exchanges_skipped counts exchanges of used records: once the record's last exchange is too long for
    max_length, the record is the skip and its identical-response exchange is no longer counted apart."""
    en = [("user", "the cat"), ("assistant", "print"), ("user", "the cat " * 30), ("assistant", "a dog")]
    pt = [("user", "o gato"), ("assistant", "print"), ("user", "o gato " * 30), ("assistant", "um cao")]
    ex, rep = build_examples([_rec(en, pt)])
    assert [e.turn for e in ex] == [3] and dict(rep.exchanges_skipped) == {"same_response": 1}
    assert tokenize_examples(ex, PromptFormatter(tok), 32, rep) == []
    assert dict(rep.skipped) == {"prompt_too_long": 1} and rep.as_dict()["exchanges_skipped"] == {}


def test_eval_limit_counts_evaluated_examples(tok, monkeypatch):
    monkeypatch.setattr(ev, "_generate", lambda model, tok_, prompts, *a: ["o gato"] * len(prompts))
    res = ev.evaluate_models([("m", tiny_llama(tok), tok)], tiny_chat_records(3, seed=5), limit=3)
    assert res["usable"] == 3 and res["models"][0]["en"]["prompts"] == 3
    assert res["records_evaluated"] == 2 and res["examples_beyond_limit"] == 3
    assert res["skipped"] == {} and res["exchanges_skipped"] == {}


def test_cli_eval_reports_records_and_exchanges_honestly(tmp_path, tok):
    tiny_llama(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _chat_with_a_long_second_prompt()), encoding="utf-8")
    args = ["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--max-new-tokens", "1"]
    res = CliRunner().invoke(app, [*args, "--max-length", "32", "--limit", "4"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "4 held-out examples (chat exchanges)" in text
    assert "skipped 1 of 3 records" not in text  # the exchange was counted as a record
    assert "skipped 1 chat exchange" in text and "prompt_too_long" in text
    assert "--limit 4: evaluated 4 of 5 usable examples" in text


# 3. cltx eval --max-length is checked like cltx clo's


@pytest.mark.parametrize("bad", [0, -5, 7, 1.5, True])
def test_eval_max_length_is_checked(tok, bad, monkeypatch):
    monkeypatch.setattr(ev, "_tokenizer_view", lambda entry: pytest.fail("checked before any model is read"))
    with pytest.raises(CltxError, match=rf"^max_length={bad!r}: .*fix:"):
        ev.evaluate_models([("m", tiny_llama(tok), tok)], tiny_records(2), max_length=bad)


def test_cli_eval_max_length_is_one_red_line(tmp_path):
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in tiny_records(2)), encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "none"), "--data", str(data),
                                   "--max-length", "0"])  # fmt: skip
    assert res.exit_code == 1 and "max_length=0" in res.output and "--max-length" in res.output
    assert "Traceback" not in res.output


# 4. JSON array vs JSONL


def test_jsonl_whose_first_line_is_an_array_is_jsonl(tmp_path):
    recs = tiny_records(2)
    p = tmp_path / "d.jsonl"
    p.write_text("[1, 2]\n" + "\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    with pytest.raises(CltxError, match=r"^data='.*d\.jsonl' line 1: expected a JSON object, got list; fix:"):
        read_records(p)
    # an array of objects on line 1 of a JSONL is no whole-file array either
    p.write_text(json.dumps(recs[:1]) + "\n\n" + json.dumps(recs[1]) + "\n", encoding="utf-8")
    with pytest.raises(CltxError, match=r"^eval_data=.* line 1: expected a JSON object, got list"):
        read_records(p, argument="eval_data")


def test_a_whole_file_json_array_is_still_read(tmp_path):
    recs = tiny_records(3)
    p = tmp_path / "d.json"
    p.write_text(json.dumps(recs, indent=2), encoding="utf-8")
    assert read_records_with_lines(p) == (recs, [1, 2, 3])
    p.write_text(" " + json.dumps(recs) + "\n", encoding="utf-8")
    assert read_records(p) == recs
    p.write_text(json.dumps(recs, indent=2)[:-2], encoding="utf-8")  # a broken array: a JSON error, not a line
    with pytest.raises(CltxError, match=r"^data='.*d\.json': not valid JSON .*fix: repair the file"):
        read_records(p)
    p.write_text(json.dumps([recs[0], 3]), encoding="utf-8")
    with pytest.raises(CltxError, match=r"record 2: expected a JSON object, got int"):
        read_records(p)


@pytest.mark.parametrize("bad", [0, 7, -3])
def test_clo_config_max_length_shares_the_eval_bound(bad):
    """cltx clo and cltx eval refuse the same max_length values with the same message."""
    from cltx.clo.trainer import CLOConfig

    with pytest.raises(CltxError, match=rf"^max_length={bad}: must be a whole number of tokens ≥ 8 .*fix: pass"):
        CLOConfig(max_length=bad)
