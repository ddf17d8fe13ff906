"""CLO data: cltx-mt-style and bilingual records → pairs → whole-record micro-batches; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from cltx.clo._tiny import tiny_records, tiny_tokenizer
from cltx.clo.data import (
    IGNORE,
    DataSpec,
    PromptFormatter,
    build_examples,
    describe_skips,
    make_bins,
    read_records,
    read_records_with_lines,
    target_language,
    tokenize_examples,
)
from cltx.errors import CltxError


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _write(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


def test_mt_output_file_gives_both_languages(tmp_path):
    recs = [
        {
            "instruction": "o gato",
            "input": "a casa",
            "output": "o cao",
            "id": "x1",
            "_source": {"instruction": "the cat", "input": "the house", "output": "the dog"},
            "_mt": {"status": "joint", "tgt": "pt"},
        },
        # input not translated (absent from _source): the same text in both views
        {
            "instruction": "o sol",
            "input": "moon 7",
            "output": "a lua",
            "_source": {"instruction": "the sun", "output": "the moon"},
            "_mt": {"status": "fallback", "tgt": "pt"},
        },
        {
            "question": "quem?",
            "passage": "o gato sentou",
            "answer": "o gato",
            "_source": {"question": "who?", "passage": "the cat sat", "answer": "the cat"},
        },
    ]
    path = _write(tmp_path / "mt.jsonl", recs)
    rows = read_records(path)
    examples, report = build_examples(rows)
    assert report.used == 3 and not report.skipped
    a, b, c = examples
    assert (a.prompt_en, a.prompt_tg, a.response_en, a.response_tg) == (
        "the cat\n\nthe house",
        "o gato\n\na casa",
        "the dog",
        "o cao",
    )
    assert b.prompt_en == "the sun\n\nmoon 7" and b.prompt_tg == "o sol\n\nmoon 7"
    # QA layout found without flags: passage then question → answer
    assert (c.prompt_en, c.response_en, c.prompt_tg, c.response_tg) == (
        "the cat sat\n\nwho?",
        "the cat",
        "o gato sentou\n\nquem?",
        "o gato",
    )
    assert target_language(rows) == "pt"


def test_bilingual_layouts_nested_and_suffix():
    nested = [{"en": {"prompt": "hi", "response": "hello"}, "pt": {"prompt": "oi", "response": "ola"}}]
    ex, rep = build_examples(nested, DataSpec(en_key="en", tgt_key="pt"))
    assert rep.used == 1 and (ex[0].prompt_en, ex[0].response_tg) == ("hi", "ola")
    suffixed = [{"q_en": "who", "a_en": "me", "q_pt": "quem", "a_pt": "eu"}]
    spec = DataSpec(prompt_fields="q", response_field="a", en_suffix="_en", tgt_suffix="_pt")
    ex, rep = build_examples(suffixed, spec)
    assert rep.used == 1 and (ex[0].prompt_en, ex[0].prompt_tg, ex[0].response_en, ex[0].response_tg) == (
        "who",
        "quem",
        "me",
        "eu",
    )


def test_bad_records_are_counted_per_reason():
    good = {"instruction": "o gato", "output": "o cao", "_source": {"instruction": "the cat", "output": "the dog"}}
    recs = [
        good,
        {"instruction": "o gato", "output": "o cao"},  # no English
        {"instruction": "o gato", "_source": {"instruction": "the cat", "output": "the dog"}},  # no target response
        {"instruction": "o gato", "output": "  ", "_source": {"instruction": "the cat", "output": "the dog"}},
        {"instruction": "o gato", "output": "the dog", "_source": {"instruction": "the cat", "output": "the dog"}},
        {**good, "_mt": {"status": "failed"}},
        {"instruction": "o gato", "output": 3, "_source": {"instruction": "the cat", "output": "the dog"}},
        {"title": "x", "_source": {"title": "y"}},
        {"instruction": "", "output": "o cao", "_source": {"instruction": "", "output": "the dog"}},
    ]
    ex, rep = build_examples(recs)
    assert rep.used == 1 and ex[0].index == 0
    assert dict(rep.skipped) == {
        "missing_english": 1,
        "missing_target": 1,
        "empty_response": 1,
        "same_response": 1,
        "mt_failed": 1,
        "not_text": 1,
        "no_layout": 1,
        "empty_prompt": 1,
    }
    assert rep.as_dict()["skipped_first_lines"]["missing_english"] == [2]


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(CltxError, match="line 2"):
        read_records(p)
    with pytest.raises(CltxError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


def test_spec_validation():
    with pytest.raises(CltxError, match="prompt_fields"):
        DataSpec(prompt_fields="a")
    with pytest.raises(CltxError, match="suffix"):
        DataSpec(en_suffix="_en")


def test_chat_template_tokens_and_aligned_labels(tok):
    fmt = PromptFormatter(tok)
    assert fmt.chat
    p = fmt.prompt_ids("the cat")
    r = fmt.response_ids("the cat", "a dog")
    assert tok.convert_ids_to_tokens(p) == ["<|user|>", "the", "cat", "<|end|>", "<|assistant|>"]
    assert tok.convert_ids_to_tokens(r) == ["a", "dog", "<|end|>"]
    plain = PromptFormatter(tok, use_chat_template=False)
    assert plain.response_ids("the cat", "a dog")[-1] == tok.eos_token_id
    assert plain.template_id != fmt.template_id


def test_bins_keep_records_whole_with_both_directions(tok):
    recs = tiny_records(7, seed=3)
    ex, rep = build_examples(recs)
    fmt = PromptFormatter(tok)
    tex = tokenize_examples(ex, fmt, 64, rep)
    bins = make_bins(tex, 3, "clo", tok.pad_token_id, seed=1)
    assert [len(b["record_index"]) for b in bins] == [3, 3, 1]
    assert sorted(int(i) for b in bins for i in b["record_index"]) == list(range(7))
    by_index = {t.index: t for t in tex}
    b = bins[0]
    P = b["nll_mask"].shape[0]
    assert P == 6 and b["input_ids"].shape[0] == 2 * P
    assert b["nll_mask"].tolist() == [False, True] * 3
    for k, idx in enumerate(b["record_index"].tolist()):
        t = by_index[idx]
        expect = [
            (t.prompt_en, t.response_en),  # chosen, x_en
            (t.prompt_tg, t.response_tg),  # chosen, x_tg
        ]
        rejected = [(t.prompt_en, t.response_tg), (t.prompt_tg, t.response_en)]
        for row, (pr, rs) in [(2 * k, expect[0]), (2 * k + 1, expect[1]), (P + 2 * k, rejected[0])] + [
            (P + 2 * k + 1, rejected[1])
        ]:
            n = len(pr) + len(rs)
            assert b["input_ids"][row, :n].tolist() == pr + rs
            assert b["attention_mask"][row].sum() == n
            lab = b["labels"][row]
            # label of position t is the token at t + 1, scored on response tokens only
            assert lab[: len(pr) - 1].eq(IGNORE).all()
            assert lab[len(pr) - 1 : n - 1].tolist() == rs
            assert lab[n - 1 :].eq(IGNORE).all()
    sft = make_bins(tex, 3, "sft", tok.pad_token_id, seed=1)
    assert sft[0]["input_ids"].shape[0] == 6 and sft[0]["nll_mask"].all()
    assert torch.equal(sft[0]["input_ids"][:, :8], b["input_ids"][:P, :8])


def test_long_prompts_skipped_long_responses_cut(tok):
    recs = [
        {"instruction": "o gato " * 40, "output": "o cao", "_source": {"instruction": "cat " * 40, "output": "dog"}},
        {"instruction": "o gato", "output": "o cao " * 40, "_source": {"instruction": "the cat", "output": "dog"}},
        {"instruction": "o gato", "output": "o cao", "_source": {"instruction": "the cat", "output": "the dog"}},
    ]
    ex, rep = build_examples(recs)
    tex = tokenize_examples(ex, PromptFormatter(tok), 32, rep)
    assert rep.skipped["prompt_too_long"] == 1 and rep.truncated_responses == 1 and rep.used == 2
    assert all(len(t.prompt_tg) + len(t.response_tg) <= 32 for t in tex)


def test_skip_report_names_file_lines_past_blank_lines(tmp_path):
    good = tiny_records(1)[0]
    bad = {"instruction": "o gato", "output": "", "_source": {"instruction": "the cat", "output": "the dog"}}
    p = tmp_path / "d.jsonl"
    # blank lines before and between records: the report must name the file's lines (3 and 6)
    p.write_text("\n\n" + json.dumps(bad) + "\n" + json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", "utf-8")
    rows, lines = read_records_with_lines(p)
    assert lines == [3, 4, 6] and read_records(p) == rows
    _, rep = build_examples(rows, lines=lines)
    assert rep.as_dict()["skipped_first_lines"] == {"empty_response": [3, 6]}


def test_unreadable_files_are_one_clear_error(tmp_path):
    bom = tmp_path / "bom.jsonl"  # Windows editors write a byte-order mark
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(tiny_records(1)[0]).encode())
    assert len(read_records(bom)) == 1
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"a": "x"}\n{"a": "ol\xe1"}\n')
    with pytest.raises(CltxError, match=r"line 2: not UTF-8.*fix:"):
        read_records(latin)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CltxError, match="holds no records"):
        read_records(empty)
    with pytest.raises(CltxError, match="is a folder"):
        read_records(tmp_path)
    nums = tmp_path / "nums.jsonl"
    nums.write_text('{"a": 1}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(CltxError, match=r"line 3: expected a JSON object"):
        read_records(nums)


# ----------------------------------------------------------------------------------- chat-format records
def _turns(pairs, role="role", text="content"):
    return [{role: r, text: t} for r, t in pairs]


def test_chat_records_give_their_exchanges_without_flags():
    en = [("system", "the sun"), ("user", "the cat sat"), ("assistant", "a dog ran"), ("user", "red"),
          ("assistant", "blue")]  # fmt: skip
    pt = [("system", "o sol"), ("user", "o gato sentou"), ("assistant", "um cao correu"), ("user", "vermelho"),
          ("assistant", "azul")]  # fmt: skip
    recs = [
        # cltx mt output: target turns in the record, the English list in _source
        {"messages": _turns(pt), "_source": {"messages": _turns(en)}, "_mt": {"status": "joint", "tgt": "pt"}},
        # ShareGPT, no system turn
        {
            "conversations": _turns([("human", "a arvore"), ("gpt", "verde")], "from", "value"),
            "_source": {"conversations": _turns([("human", "the tree"), ("gpt", "green")], "from", "value")},
        },
    ]
    ex, rep = build_examples(recs)
    assert (rep.used, rep.examples) == (2, 3) and not rep.skipped
    assert [e.key for e in ex] == [(0, 2), (0, 4), (1, 1)]
    assert (ex[0].prompt_en, ex[0].response_en, ex[0].prompt_tg, ex[0].response_tg) == (
        "the cat sat", "a dog ran", "o gato sentou", "um cao correu",
    )  # fmt: skip
    assert ex[0].history_en == ex[0].history_tg == ()
    # the second exchange carries the first as its history, each language its own
    assert (ex[1].prompt_en, ex[1].response_en, ex[1].prompt_tg, ex[1].response_tg) == (
        "red", "blue", "vermelho", "azul",
    )  # fmt: skip
    assert ex[1].history_en == (("user", "the cat sat"), ("assistant", "a dog ran"))
    assert ex[1].history_tg == (("user", "o gato sentou"), ("assistant", "um cao correu"))
    assert (ex[2].prompt_en, ex[2].response_en, ex[2].prompt_tg, ex[2].response_tg) == (
        "the tree", "green", "a arvore", "verde",
    )  # fmt: skip
    assert rep.as_dict()["system_turns_ignored"] == 1
    # only the first or the last exchange
    first, _ = build_examples(recs, DataSpec(chat_turns="first"))
    assert [e.key for e in first] == [(0, 2), (1, 1)] and first[0].history_en == ()
    last, _ = build_examples(recs, DataSpec(chat_turns="last"))
    assert [e.key for e in last] == [(0, 4), (1, 1)] and last[0].history_tg == ex[1].history_tg
    with pytest.raises(CltxError, match="chat_turns"):
        DataSpec(chat_turns="every")
    # bilingual JSONL: nested per language, or suffixed fields
    nested = [{"en": {"messages": _turns(en)}, "pt": {"messages": _turns(pt)}}]
    ex, rep = build_examples(nested, DataSpec(en_key="en", tgt_key="pt"))
    assert rep.used == 1 and (ex[0].prompt_en, ex[0].response_tg) == ("the cat sat", "um cao correu")
    assert len(ex) == 2 and ex[1].history_en[1] == ("assistant", "a dog ran")
    suffixed = [{"messages_en": _turns(en[1:3]), "messages_pt": _turns(pt[1:3])}]
    ex, rep = build_examples(suffixed, DataSpec(en_suffix="_en", tgt_suffix="_pt"))
    assert rep.used == 1 and (ex[0].prompt_tg, ex[0].response_en) == ("o gato sentou", "a dog ran")
    assert rep.as_dict()["system_turns_ignored"] == 0


def test_chat_conversations_are_normalised_for_templates():
    """Consecutive turns of one role are joined, an opening assistant turn is left out of the history,
    reading stops at a tool turn or a null text, and a bad exchange drops only itself."""

    def rec(pairs_en, pairs_pt):
        return {"messages": _turns(pairs_pt), "_source": {"messages": _turns(pairs_en)}}

    en = [("assistant", "hello"), ("user", "a"), ("user", "b"), ("assistant", "c"), ("system", "s"),
          ("user", "d"), ("assistant", "e"), ("assistant", "f"), ("tool", "t"), ("user", "g"),
          ("assistant", "h")]  # fmt: skip
    pt = [(r, t.upper()) for r, t in en]
    ex, rep = build_examples([rec(en, pt)])
    assert [(e.prompt_en, e.response_en, e.turn) for e in ex] == [("a\n\nb", "c", 3), ("d", "e\n\nf", 7)]
    assert ex[1].history_en == (("user", "a\n\nb"), ("assistant", "c"))  # "hello" left out
    assert ex[1].history_tg == (("user", "A\n\nB"), ("assistant", "C"))
    assert rep.system_turns_ignored == 1
    # a null text (a tool call) ends the conversation; before any exchange it is not_text
    null = [("user", "a"), ("assistant", "b"), ("assistant", None), ("user", "c"), ("assistant", "d")]
    ex, rep = build_examples([rec(null, [(r, t and t.upper()) for r, t in null])])
    assert [e.prompt_en for e in ex] == ["a"]
    ex, rep = build_examples([rec(null[2:], [(r, t and t.upper()) for r, t in null[2:]])])
    assert not ex and dict(rep.skipped) == {"not_text": 1}
    # an exchange whose responses are identical is dropped alone; the record stays
    same = [("user", "a"), ("assistant", "print(1)"), ("user", "b"), ("assistant", "c")]
    ex, rep = build_examples([rec(same, [("user", "A"), ("assistant", "print(1)"), ("user", "B"), ("assistant", "C")])])
    assert [e.prompt_en for e in ex] == ["b"] and ex[0].history_tg == (("user", "A"), ("assistant", "print(1)"))
    assert (rep.used, rep.examples, dict(rep.exchanges_skipped), dict(rep.skipped)) == (1, 1, {"same_response": 1}, {})
    # ... and when it was the record's only one, the record is skipped with that reason
    ex, rep = build_examples([rec(same[:2], [("user", "A"), ("assistant", "print(1)")])])
    assert not ex and dict(rep.skipped) == {"same_response": 1} and not rep.exchanges_skipped
    # the languages must agree on every turn's role, not only on the exchanges
    ex, rep = build_examples([rec(same, [("user", "A"), ("assistant", "X"), ("assistant", "B"), ("assistant", "C")])])
    assert not ex and dict(rep.skipped) == {"chat_mismatch": 1}


def test_chat_history_is_rendered_and_trimmed_to_fit(tok):
    fmt = PromptFormatter(tok)
    hist = (("user", "the cat"), ("assistant", "a dog"))
    toks = tok.convert_ids_to_tokens(fmt.prompt_ids("red", hist))
    assert toks == ["<|user|>", "the", "cat", "<|end|>", "<|assistant|>", "a", "dog", "<|end|>", "<|user|>", "red",
                    "<|end|>", "<|assistant|>"]  # fmt: skip
    assert tok.convert_ids_to_tokens(fmt.response_ids("red", "blue", hist)) == ["blue", "<|end|>"]
    plain = PromptFormatter(tok, use_chat_template=False)
    assert plain.prompt_text("red", hist) == "the cat\n\na dog\n\nred\n"
    # a long conversation loses its oldest exchanges until prompt + response fit, in both languages
    long_en = []
    for k in range(6):
        long_en += [("user", f"the cat sat {k}"), ("assistant", f"a dog ran {k}")]
    long_pt = [(r, t.replace("the cat sat", "o gato").replace("a dog ran", "um cao")) for r, t in long_en]
    long_en += [("user", "red"), ("assistant", "blue")]
    long_pt += [("user", "vermelho"), ("assistant", "azul")]
    recs = [{"messages": _turns(long_pt), "_source": {"messages": _turns(long_en)}}]
    ex, rep = build_examples(recs, DataSpec(chat_turns="last"))
    assert len(ex[0].history_en) == 12
    full = len(fmt.prompt_ids("red", ex[0].history_en)) + len(fmt.response_ids("red", "blue", ex[0].history_en))
    tex = tokenize_examples(ex, fmt, 40, rep)
    assert full > 40 and rep.histories_trimmed == 1 and len(tex) == 1
    kept = next(n for n in range(2, 13, 2) if fmt.prompt_ids("red", ex[0].history_en[-n:]) == tex[0].prompt_en)
    assert kept < 12 and len(tex[0].prompt_en) + len(tex[0].response_en) <= 40
    assert len(fmt.prompt_ids("red", ex[0].history_en[-(kept + 2) :])) + 2 > 40  # one more exchange would not fit
    assert tex[0].prompt_tg == fmt.prompt_ids("vermelho", ex[0].history_tg[-kept:])
    assert rep.as_dict()["histories_trimmed"] == 1 and not rep.skipped
    # an exchange whose own prompt does not fit is skipped alone while the record has others
    pt = [("user", "o gato " * 30), ("assistant", "um cao"), ("user", "red"), ("assistant", "azul")]
    en = [("user", "the cat " * 30), ("assistant", "a dog"), ("user", "red"), ("assistant", "blue")]
    recs = [{"messages": _turns(pt), "_source": {"messages": _turns(en)}}]
    ex, rep = build_examples(recs)
    tex = tokenize_examples(ex, fmt, 32, rep)
    assert [t.key for t in tex] == [(0, 3)] and dict(rep.exchanges_skipped) == {"prompt_too_long": 1}
    assert not rep.skipped and (rep.used, rep.examples) == (1, 1)


def test_chat_records_without_an_exchange_are_counted_per_reason():
    def rec(en, pt):
        return {"messages": _turns(pt), "_source": {"messages": _turns(en)}}

    ok_en, ok_pt = [("user", "the cat"), ("assistant", "a dog")], [("user", "o gato"), ("assistant", "um cao")]
    recs = [
        rec(ok_en, ok_pt),
        rec([("system", "the sun")], [("system", "o sol")]),  # no user turn
        rec([("user", "the cat"), ("user", "a dog")], [("user", "o gato"), ("user", "um cao")]),  # no reply
        rec([("assistant", "the cat")], [("assistant", "o gato")]),  # assistant only
        rec([], []),  # empty conversation
        rec(ok_en, [("user", "o gato"), ("system", "o sol"), ("assistant", "um cao")]),  # turns differ
        {"messages": ["o gato", "um cao"], "_source": {"messages": ["the cat", "a dog"]}},  # not turn objects
        rec(ok_en, [("user", "o gato"), ("assistant", " ")]),  # empty target reply
        {"messages": _turns(ok_pt)},  # no English
    ]
    ex, rep = build_examples(recs)
    assert rep.used == 1 and ex[0].index == 0
    assert dict(rep.skipped) == {
        "no_exchange": 4,
        "chat_mismatch": 1,
        "not_text": 1,
        "empty_response": 1,
        "missing_english": 1,
    }
    assert rep.as_dict()["skipped_first_lines"]["no_exchange"] == [2, 3, 4, 5]
    assert "user turn" in describe_skips(rep)
