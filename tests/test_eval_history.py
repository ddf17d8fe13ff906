"""cltx eval on multi-turn chat records: every model is asked the same prompt, so a conversation's
history is the one that fits every model (its context, --max-length and tokenizer), in both languages."""

from __future__ import annotations

import pytest

import cltx.clo.evaluate as ev
from cltx.clo._tiny import EN_WORDS, PT_WORDS, tiny_llama, tiny_tokenizer
from cltx.clo.data import DataSpec, PromptFormatter, build_examples, tokenize_examples
from cltx.progress import Progress

pytestmark = pytest.mark.usefixtures("one_thread")


def _conversation(words: list[str], exchanges: int, shift: int) -> list[dict]:
    out = []
    for k in range(exchanges):
        user = " ".join(words[(shift + k + j) % len(words)] for j in range(5))
        reply = " ".join(words[(shift + k + j + 3) % len(words)] for j in range(4))
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return out


def _records(n: int) -> list[dict]:
    """``n`` three-exchange conversations: with the tiny chat template each exchange is 13 tokens, so the
    whole conversation (39) fits a 256-token context but not a 30-token one, which keeps one exchange."""
    return [
        {
            "messages": _conversation(PT_WORDS[:12], 3, i),
            "_source": {"messages": _conversation(EN_WORDS[:12], 3, i)},
            "_mt": {"status": "joint", "tgt": "pt"},
        }
        for i in range(n)
    ]


def _asked(monkeypatch, names: dict) -> dict:
    """Patch generation to record the prompt ids each model is asked, per model name."""
    asked: dict[str, list[list[int]]] = {}

    def fake(model, tok, prompts, *args):
        asked.setdefault(names[id(model)], []).extend(list(p) for p in prompts)
        return ["o gato"] * len(prompts)

    monkeypatch.setattr(ev, "_generate", fake)
    return asked


def _history_turns(result: dict) -> list[list[tuple[int, int, str, int]]]:
    return [
        sorted((s["record"], s["turn"], s["prompt_language"], s["history_turns"]) for s in m["samples"])
        for m in result["models"]
    ]


def test_models_with_different_contexts_are_asked_the_same_conversation(monkeypatch):
    tok = tiny_tokenizer()
    long_, short = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    short.config.max_position_embeddings = 30
    asked = _asked(monkeypatch, {id(long_): "long", id(short): "short"})
    recs = _records(2)
    said: list[str] = []
    sink = Progress()
    sink.message = said.append
    res = ev.evaluate_models([("long", long_, tok), ("short", short, tok)], recs, max_new_tokens=2, progress=sink)
    assert res["usable"] == 6 and res["skipped"] == {} and res["exchanges_skipped"] == {}
    # the same token ids, prompt for prompt (en then tgt), for both models
    assert len(asked["long"]) == len(asked["short"]) == 12
    assert asked["long"] == asked["short"]
    # the samples say how many earlier turns were kept: the same for both, the short model's fit
    for turns in _history_turns(res):
        assert turns == [(r, t, lang, h) for r in (1, 2) for t, h in ((1, 0), (3, 2), (5, 2)) for lang in ("en", "pt")]
    # the third exchange of each record lost its oldest exchange for the short model's sake
    assert res["histories_trimmed"] == 2 and res["histories_trimmed_for_other_models"] == 2
    assert [m["histories_trimmed_for_others"] for m in res["models"]] == [2, 0]
    assert any(m.startswith("2 of 6 chat examples were asked with fewer earlier turns") for m in said), said
    from cltx.cli.evaluate import summary_lines  # the CLI says it under the table too

    assert summary_lines(res, None) == [
        "2 chat examples asked with fewer earlier turns than some model could take, "
        "so that every model answers the same conversation"
    ]
    # the asked prompt is the conversation from the second exchange on, in each language
    ex, _ = build_examples(recs)
    fmt = PromptFormatter(tok)
    last = next(e for e in ex if e.key == (0, 5))
    assert fmt.prompt_ids(last.prompt_en, last.history_en[2:]) in asked["long"]
    assert fmt.prompt_ids(last.prompt_tg, last.history_tg[2:]) in asked["long"]
    assert fmt.prompt_ids(last.prompt_en, last.history_en) not in asked["long"]


def test_models_with_different_tokenizers_keep_the_same_history(monkeypatch):
    """Same context, different tokenizers: the chat template's markers make the conversation longer
    (39 tokens) than the plain join (28), so at --max-length 30 only the plain one would keep it all."""
    chat, plain = tiny_tokenizer(), tiny_tokenizer(chat_template=False)
    a, b = tiny_llama(chat, seed=0), tiny_llama(plain, seed=1)
    _asked(monkeypatch, {id(a): "chat", id(b): "plain"})
    res = ev.evaluate_models([("chat", a, chat), ("plain", b, plain)], _records(1), max_new_tokens=2, max_length=30)
    first, second = _history_turns(res)
    assert first == second and (1, 5, "en", 2) in first
    assert res["histories_trimmed"] == res["histories_trimmed_for_other_models"] == 1
    assert [m["histories_trimmed_for_others"] for m in res["models"]] == [0, 1]


def test_one_model_keeps_the_history_it_fits_and_counts_no_other_models_trim(monkeypatch):
    """A lone model trims to its own fit (histories_trimmed) but nothing is trimmed for another model;
    a conversation every model fits keeps its whole history."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    _asked(monkeypatch, {id(model): "m"})
    res = ev.evaluate_models([("m", model, tok)], _records(2), max_new_tokens=2, max_length=30)
    assert res["histories_trimmed"] == 2 and res["histories_trimmed_for_other_models"] == 0
    assert (1, 5, "en", 2) in _history_turns(res)[0]
    res = ev.evaluate_models([("m", model, tok)], _records(2), max_new_tokens=2)
    assert res["histories_trimmed"] == res["histories_trimmed_for_other_models"] == 0
    assert (1, 5, "en", 4) in _history_turns(res)[0]
    # --limit: only the evaluated examples are counted (the first two exchanges of record 1: neither trimmed)
    res = ev.evaluate_models([("m", model, tok)], _records(2), max_new_tokens=2, max_length=30, limit=2)
    assert res["usable"] == 2 and res["histories_trimmed"] == 0


def test_tokenize_examples_leaves_out_at_least_the_exchanges_asked():
    """``drop``: the fewest exchanges to leave out per example key; the kept turns are recorded."""
    tok = tiny_tokenizer()
    fmt = PromptFormatter(tok)
    ex, rep = build_examples(_records(1), DataSpec(chat_turns="last"))
    (own,) = tokenize_examples(ex, fmt, 256, rep)
    assert own.history_turns == 4 and rep.histories_trimmed == 0
    (forced,) = tokenize_examples(ex, fmt, 256, rep, drop={(0, 5): 1})
    assert forced.history_turns == 2 and rep.histories_trimmed == 1
    assert forced.prompt_en == fmt.prompt_ids(ex[0].prompt_en, ex[0].history_en[2:])
    assert forced.prompt_tg == fmt.prompt_ids(ex[0].prompt_tg, ex[0].history_tg[2:])
