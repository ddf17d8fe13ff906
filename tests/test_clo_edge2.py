"""More odd but realistic input to `cltx clo` / `cltx eval`: multimodal-format chat content, honest eval
counts for chat records, --max-length checks in eval, and JSONL files that start with an array line."""

from __future__ import annotations

import pytest

from cltx.clo._tiny import tiny_tokenizer
from cltx.clo.data import (
    SKIP_REASONS,
    PromptFormatter,
    build_examples,
    describe_skips,
    tokenize_examples,
)

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
