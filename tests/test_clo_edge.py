"""Odd but realistic input to `cltx clo` / `cltx eval`: a clear error naming the option, or a counted skip."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import cltx.clo.evaluate as ev
from cltx.cli.main import app
from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
from cltx.clo.api import train_clo
from cltx.clo.data import DataSpec, PromptFormatter, build_examples, describe_skips, read_records_with_lines
from cltx.errors import CltxError
from cltx.progress import NullProgress


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """Python's str.splitlines also splits at U+2028/U+2029/U+0085/form feed, which JSON strings hold
    raw (json.dumps(ensure_ascii=False) writes them so): such a record was 'not valid JSON'."""
    recs = [
        {
            "instruction": "o gato\u2028sentou",
            "output": "o cao\x85",
            "_source": {"instruction": "a\u2029b", "output": "c"},
        },
        {"instruction": "page\x0cbreak", "output": "x", "_source": {"instruction": "y", "output": "z"}},
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("\n\r\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    rows, lines = read_records_with_lines(p)
    assert rows == recs and lines == [1, 3]


def test_named_fields_absent_from_the_data_are_reported_as_such():
    recs = tiny_records(3)
    ex, rep = build_examples(recs, DataSpec(prompt_fields="instrucion", response_field="output"))
    assert not ex and dict(rep.skipped) == {"missing_fields": 3}
    ex, rep = build_examples(recs, DataSpec(prompt_fields="instruction", response_field="answr"))
    assert not ex and dict(rep.skipped) == {"missing_fields": 3}
    assert "--response-field" in describe_skips(rep)
    # a field absent from one language only is still that language's gap
    rec = {"q": "quem", "a": "eu", "_source": {"q": "who"}}
    ex, rep = build_examples([rec], DataSpec(prompt_fields="q", response_field="a"))
    assert dict(rep.skipped) == {"same_response": 1}  # cltx mt layout: an untranslated field is shared
    nested = [{"en": {"q": "who"}, "pt": {"q": "quem", "a": "eu"}}]
    ex, rep = build_examples(nested, DataSpec(prompt_fields="q", response_field="a", en_key="en", tgt_key="pt"))
    assert dict(rep.skipped) == {"missing_english": 1}


def test_system_prompt_without_a_chat_template_is_an_error(tok):
    plain = tiny_tokenizer(chat_template=False)
    with pytest.raises(CltxError, match=r"^system_prompt='Be brief': .*no chat template.*fix:"):
        PromptFormatter(plain, system_prompt="Be brief")
    with pytest.raises(CltxError, match=r"^system_prompt='Be brief': .*fix:"):
        PromptFormatter(tok, use_chat_template=False, system_prompt="Be brief")
    assert PromptFormatter(plain, system_prompt="").prompt_text("o gato") == "o gato\n"
    with pytest.raises(CltxError, match=r"^system_prompt="):
        ev.evaluate_models(
            [("m", tiny_llama(tok), tok)], tiny_records(2), system_prompt="Be brief", use_chat_template=False
        )


def test_eval_split_must_be_finite(tmp_path, tok):
    with pytest.raises(CltxError, match=r"^eval_split=inf"):
        train_clo(tiny_llama(tok), tiny_records(3), tmp_path / "o", tokenizer=tok, eval_split=float("inf"))
    res = CliRunner().invoke(app, ["clo", "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o"),
                                   "--eval-split", "inf"])  # fmt: skip
    assert res.exit_code == 1 and "eval_split=inf" in res.output and "Traceback" not in res.output


def test_no_usable_record_names_the_fix_for_its_reason(tmp_path, tok):
    long = [
        {"instruction": "o gato " * 60, "output": "o cao", "_source": {"instruction": "the cat " * 60, "output": "c"}}
    ]
    with pytest.raises(CltxError, match=r"prompt_too_long.*fix: raise --max-length"):
        train_clo(tiny_llama(tok), long * 2, tmp_path / "o", tokenizer=tok, max_length=32)


def test_eval_records_must_be_dicts_and_the_json_path_a_file(tmp_path, tok, monkeypatch):
    model = tiny_llama(tok)
    with pytest.raises(CltxError, match=r"^data\[1\]=None"):
        ev.evaluate_models([("m", model, tok)], [tiny_records(1)[0], None], tgt="pt")
    with pytest.raises(CltxError, match=r"^data="):
        ev.evaluate_models([("m", model, tok)], {"instruction": "x"}, tgt="pt")
    # checked before any answer is generated, not a traceback after the whole evaluation
    called = []
    monkeypatch.setattr(ev, "evaluate_model", lambda *a, **k: called.append(1))
    with pytest.raises(CltxError, match=r"^out=.*folder"):
        ev.evaluate_models([("m", model, tok)], tiny_records(2), out=tmp_path)
    assert not called


def test_answers_stop_at_the_model_context(monkeypatch):
    """A prompt that fits the context but leaves fewer than max_new_tokens after it: generate ran past
    the learned position embeddings (GPT-2: IndexError; on a GPU a device-side assert)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer(chat_template=False)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=24, n_embd=16, n_layer=1, n_head=2, eos_token_id=-1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.generation_config.eos_token_id = None
    monkeypatch.setattr(ev, "stop_token_ids", lambda model, tok: [tok.pad_token_id])  # never ends early
    long = {"instruction": "o gato sentou em um tapete " * 3, "output": "o cao", "_mt": {"tgt": "pt"}}
    long["_source"] = {"instruction": "the cat sat on a mat " * 3, "output": "the dog"}
    short = {"instruction": "o sol", "output": "a lua", "_source": {"instruction": "the sun", "output": "the moon"}}
    messages = []

    class Messages(NullProgress):
        def message(self, text: str) -> None:
            messages.append(text)

    calls, generate = [], model.generate

    def recording_generate(input_ids, **kw):
        out = generate(input_ids=input_ids, **kw)
        calls.append((input_ids.shape[1], kw["max_new_tokens"], out.shape[1]))
        return out

    monkeypatch.setattr(model, "generate", recording_generate)
    res = ev.evaluate_models([("g", model, tok)], [long, short], max_new_tokens=16, batch_size=1, progress=Messages())
    assert len(res["models"][0]["samples"]) == 4 and len(calls) == 4
    assert all(total <= 24 for _, _, total in calls)  # never past the position embeddings
    (n_long, new_long, _), (n_short, new_short, _) = calls[:2]  # English: long, short
    assert n_long + new_long == 24 and new_short == 16
    assert any("context" in m and "24" in m for m in messages)
