"""An instruct LLM given a new vocabulary keeps its chat template.

The markers of the LLM's template (its added tokens that the template writes out) keep the LLM's rows:
a marker that a role's PLM token already carries is rewritten to that token (SmolLM2's bos/eos
``<|im_start|>``/``<|im_end|>`` become BERT's ``[CLS]``/``[SEP]``), a PLM token of the marker's string is
paired with it, and any other marker is added to the vocabulary (ChatML's ``<|im_start|>`` with BERT,
Llama-3's header and end-of-turn markers). The template goes to the saved tokenizer, so that
``apply_chat_template``, ``cltx clo`` and ``cltx eval`` work on the result.

Tokenizers and models are the tiny ones of ``test_salt_pipeline`` / ``test_salt_families`` with added
marker tokens and a template of each family; the runs are built once per module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_salt_families import _load, _rows, _save_llm, _tiny
from test_salt_families import build_plm as build_family_plm
from test_salt_pipeline import _ForceAt, build_plm, llm_tokenizer, plm_tokenizer

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
    "+ '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# SmolLM2-Instruct's template, verbatim.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MARKERS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
}
TEMPLATES = {"chatml": CHATML, "smollm2": SMOLLM2, "llama3": LLAMA3}
CONVERSATION = [
    {"role": "user", "content": "Walk to the harbour"},
    {"role": "assistant", "content": "The river, then the old house!"},
    {"role": "user", "content": "And back?"},
]


def chat_tokenizer(kind: str, *, template: bool = True, extra: tuple = ()):
    """The byte-level BPE LLM tokenizer of ``test_salt_pipeline`` with the markers of ``kind``.

    ``chatml``: ``<|im_start|>`` an added special token, eos ``<|im_end|>``, bos ``<s>`` prepended;
    ``smollm2``: bos ``<|im_start|>``, eos = pad ``<|im_end|>``, nothing prepended (SmolLM2-Instruct);
    ``llama3``: ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>``, eos ``</s>``, bos ``<s>``.
    ``extra``: more tokens to add, as ``tokenizers.AddedToken``.
    """
    tok = llm_tokenizer(add_bos=kind != "smollm2")
    tok.add_special_tokens({"extra_special_tokens": list(MARKERS[kind])})
    if extra:
        tok.add_tokens(list(extra))
    if kind == "chatml":
        tok.eos_token = "<|im_end|>"
    elif kind == "smollm2":
        tok.bos_token = "<|im_start|>"
        tok.eos_token = tok.pad_token = "<|im_end|>"
    if template:
        tok.chat_template = TEMPLATES[kind]
    return tok


def chat_llm(path: Path, kind: str, *, template: bool = True, tied: bool = True) -> Path:
    """A tiny Llama with :func:`chat_tokenizer`; ``llama3``'s generation config also ends on ``<|eot_id|>``."""
    import transformers as tf

    tok = chat_tokenizer(kind, template=template)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), tie_word_embeddings=tied, **ids, **_tiny()))
    if kind == "llama3":
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    return _save_llm(path, model, tok)


def plm_with(path: Path, *tokens: str) -> Path:
    """The BERT-style PLM of ``test_salt_pipeline`` with ``tokens`` as added (non-special) tokens."""
    tok = plm_tokenizer()
    tok.add_tokens(list(tokens))
    return build_plm(path, tokenizer=tok)


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-models")
    builders = {
        "chatml": lambda p: chat_llm(p, "chatml", tied=False),
        "smollm2": lambda p: chat_llm(p, "smollm2"),
        "smollm2-plain": lambda p: chat_llm(p, "smollm2", template=False),
        "llama3": lambda p: chat_llm(p, "llama3"),
        "bert": build_plm,
        "bert-im_start": lambda p: plm_with(p, "<|im_start|>"),
        "gpt2": lambda p: build_family_plm(p, "gpt2"),
    }
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = builders[name](root / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def chat_runs(chat_models, tmp_path_factory):
    from cltx.salt import SaltConfig, transfer_vocabulary

    root = tmp_path_factory.mktemp("chat-out")
    cache: dict[tuple[str, str], Path] = {}

    def get(llm: str, plm: str) -> Path:
        if (llm, plm) not in cache:
            out = root / f"{llm}--{plm}"
            cfg = SaltConfig(
                llm=str(chat_models(llm)), plm=str(chat_models(plm)), method="mean", device="cpu", holdout=0
            )
            transfer_vocabulary(cfg, out)
            cache[llm, plm] = out
        return cache[llm, plm]

    return get


def _report(out: Path) -> dict:
    return json.loads((out / "salt_report.json").read_text(encoding="utf-8"))


def _check_conversation(out: Path, llm: Path, marks: dict[str, tuple[int, str]]) -> list[int]:
    """Render :data:`CONVERSATION` (with the generation prompt) with the saved tokenizer and the LLM's.

    ``marks``: ``{text: (new id, LLM text)}`` of every marker as the new template writes it and as the LLM's
    does. The new rendering is the LLM's with the rewritten markers' texts replaced; each marker is one token,
    where its text is, the text between them tokenised as it is alone; and each marker token has the rows of
    the LLM's marker at the same place of the LLM's own tokenisation, bit for bit.
    """
    model, tok = _load(out)
    llm_model, llm_tok = _load(llm)
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    llm_text = llm_tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    want_text = llm_text
    for new, (_, old) in marks.items():
        want_text = want_text.replace(old, new)
    assert text == want_text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert list(tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]) == ids
    pieces = re.split("(" + "|".join(re.escape(m) for m in marks) + ")", text)
    want: list[int] = []
    for piece in pieces:
        want += [marks[piece][0]] if piece in marks else tok(piece, add_special_tokens=False)["input_ids"]
    assert ids == want, tok.convert_ids_to_tokens(ids)
    assert not {"<", "|", ">", "[", "]"} & set(tok.convert_ids_to_tokens(ids))  # no marker split up
    for m, (i, _) in marks.items():
        assert ids.count(i) == text.count(m) > 0, m
    # The same markers at the same places as in the LLM's own tokenisation, with the same rows.
    new_ids = {i for i, _ in marks.values()}
    old_ids = {llm_tok.convert_tokens_to_ids(old) for _, old in marks.values()}
    llm_ids = llm_tok(llm_text, add_special_tokens=False)["input_ids"]
    new_seq = [i for i in ids if i in new_ids]
    old_seq = [i for i in llm_ids if i in old_ids]
    assert len(new_seq) == len(old_seq) > 0
    rows, llm_rows = _rows(model), _rows(llm_model)
    for new_id, old_id in zip(new_seq, old_seq, strict=True):
        assert np.array_equal(rows[new_id], llm_rows[old_id]), (new_id, old_id)
    return ids


# ------------------------------------------------------------------------------ (i) ChatML + BERT


def test_chatml_llm_with_bert_adds_im_start_and_writes_im_end_as_sep(chat_runs, chat_models):
    from transformers import AutoTokenizer

    from cltx.clo.data import PromptFormatter

    llm = chat_models("chatml")
    out = chat_runs("chatml", "bert")
    plm_tok = AutoTokenizer.from_pretrained(chat_models("bert"))
    llm_model, llm_tok = _load(llm)
    model, tok = _load(out)
    start, llm_start = len(plm_tok), llm_tok.convert_tokens_to_ids("<|im_start|>")
    sep = plm_tok.sep_token_id

    # The template is saved and names the new vocabulary's tokens.
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == tok.chat_template
    assert tok.chat_template == CHATML.replace("<|im_end|>", "[SEP]")
    # <|im_start|> is one new special token with the LLM's rows (input and untied output), bit for bit.
    assert tok.convert_tokens_to_ids("<|im_start|>") == start and len(tok) == len(plm_tok) + 1
    assert tok.added_tokens_decoder[start].special and start in tok.all_special_ids
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.get_output_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert _rows(model).shape[1] == 2 * model.config.hidden_size
    assert np.array_equal(_rows(model)[start], _rows(llm_model)[llm_start])
    # <|im_end|> is the eos [SEP], which already has its row and ends generation.
    assert tok.eos_token_id == sep and np.array_equal(_rows(model)[sep], _rows(llm_model)[llm_tok.eos_token_id])
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == sep
    ids = _check_conversation(out, llm, {"<|im_start|>": (start, "<|im_start|>"), "[SEP]": (sep, "<|im_end|>")})
    assert ids[0] == start
    assert tok.decode(ids, skip_special_tokens=True).split() == (
        "user walk to the harbour assistant the river, then the old house! user and back? assistant".split()
    )

    # cltx clo / cltx eval: chat mode, answers end with the eos.
    fmt = PromptFormatter(tok)
    assert fmt.chat and sep in fmt.stop_ids()
    assert fmt.prompt_ids("Walk to the harbour")[:1] == [start]
    assert fmt.response_ids("Walk to the harbour", "The river")[-1] == sep

    # The report says what became of the template and its markers.
    rep = _report(out)
    assert rep["chat_template"] == {
        "carried": True,
        "markers": [
            {"llm_id": llm_start, "token": "<|im_start|>", "handled": "added", "id": start},
            {
                "llm_id": llm_tok.eos_token_id,
                "token": "<|im_end|>",
                "handled": "rewritten",
                "to": "[SEP]",
                "id": sep,
                "role": "eos",
            },
        ],
    }
    assert rep["added_tokens"] == [
        {"id": start, "token": "<|im_start|>", "role": "chat_marker", "llm_id": llm_start, "llm_token": "<|im_start|>"}
    ]
    assert rep["new_model_vocab_size"] == len(tok) and rep["match_counts"]["special"] == 5
    assert start not in [e["id"] for e in rep["tokens"]]  # neither fitted nor averaged


# ------------------------------------------------------------------ (ii) SmolLM2: rewrites only


def test_smollm2_like_markers_are_its_bos_and_eos_so_only_rewrites(chat_runs, chat_models):
    """SmolLM2's template markers are its bos and eos: written as [CLS] and [SEP], nothing added; the folder is
    the template-less run's, tokenizer and weights alike, but for the template."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from cltx.clo.data import PromptFormatter

    llm = chat_models("smollm2")
    out, plain = chat_runs("smollm2", "bert"), chat_runs("smollm2-plain", "bert")
    plm_tok = AutoTokenizer.from_pretrained(chat_models("bert"))
    _, tok = _load(out)
    cls, sep = plm_tok.cls_token_id, plm_tok.sep_token_id
    assert tok.chat_template == SMOLLM2.replace("<|im_start|>", "[CLS]").replace("<|im_end|>", "[SEP]")
    ids = _check_conversation(out, llm, {"[CLS]": (cls, "<|im_start|>"), "[SEP]": (sep, "<|im_end|>")})
    assert ids.count(cls) == 5  # the default system turn's, three turns', the generation prompt's
    assert PromptFormatter(tok).stop_ids()[0] == sep

    rep, rep_plain = _report(out), _report(plain)
    assert [(e["token"], e["handled"], e["to"], e["role"]) for e in rep["chat_template"]["markers"]] == [
        ("<|im_start|>", "rewritten", "[CLS]", "bos"),
        ("<|im_end|>", "rewritten", "[SEP]", "eos"),
    ]
    assert rep["added_tokens"] == [] and rep["notes"] == rep_plain["notes"]
    assert rep["new_model_vocab_size"] == rep_plain["new_model_vocab_size"] == len(plm_tok) == len(tok)
    assert rep["match_counts"] == rep_plain["match_counts"]
    assert rep["generation_eos_ids"] == rep_plain["generation_eos_ids"]
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((plain / "tokenizer.json").read_text())
    a, b = load_file(out / "model.safetensors"), load_file(plain / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------- (iii) Llama-3 + GPT-2: markers added


def test_llama3_like_markers_are_added_after_the_bos_and_eot_ends_generation(chat_runs, chat_models):
    """GPT-2's only special token plays eos, so the LLM's bos is added first; then the three markers, in LLM
    id order. ``<|eot_id|>`` is in the LLM's generation config (not its tokenizer's eos): it ends generation."""
    from transformers import AutoTokenizer, LogitsProcessorList

    from cltx.clo.data import PromptFormatter

    llm = chat_models("llama3")
    out = chat_runs("llama3", "gpt2")
    plm_tok = AutoTokenizer.from_pretrained(chat_models("gpt2"))
    llm_model, llm_tok = _load(llm)
    model, tok = _load(out)
    n = len(plm_tok)
    llm_eot = llm_tok.convert_tokens_to_ids("<|eot_id|>")
    assert (
        llm_eot not in (llm_tok.eos_token_id, llm_tok.pad_token_id)
        and llm_eot in llm_model.generation_config.eos_token_id
    )
    want = {"<s>": n, "<|start_header_id|>": n + 1, "<|end_header_id|>": n + 2, "<|eot_id|>": n + 3}
    assert {t: tok.convert_tokens_to_ids(t) for t in want} == want and len(tok) == n + 4
    assert tok.bos_token == "<s>" and tok.chat_template == LLAMA3
    for text, i in want.items():
        assert tok.added_tokens_decoder[i].special
        assert np.array_equal(_rows(model)[i], _rows(llm_model)[llm_tok.convert_tokens_to_ids(text)]), text
    ids = _check_conversation(out, llm, {t: (i, t) for t, i in want.items()})
    assert ids[0] == n  # {{ bos_token }}

    eot = want["<|eot_id|>"]
    saved = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert (
        saved == [tok.eos_token_id, eot] == model.generation_config.eos_token_id == _report(out)["generation_eos_ids"]
    )
    fmt = PromptFormatter(tok)
    assert fmt.stop_ids() == [tok.eos_token_id, eot]
    prompt = torch.tensor([fmt.prompt_ids("Walk to the harbour")])
    forced = LogitsProcessorList([_ForceAt(prompt.shape[1] + 2, eot, [tok.eos_token_id, eot])])
    with torch.no_grad():
        got = model.generate(input_ids=prompt, max_new_tokens=10, do_sample=False, logits_processor=forced)
    assert got.shape[1] == prompt.shape[1] + 3 and got[0, -1].item() == eot

    rep = _report(out)
    added = [(e["token"], e["role"], e["id"], e["llm_token"]) for e in rep["added_tokens"]]
    assert added == [("<s>", "bos", n, "<s>")] + [(t, "chat_marker", want[t], t) for t in MARKERS["llama3"]]
    assert [(e["token"], e["handled"], e["id"]) for e in rep["chat_template"]["markers"]] == [
        (t, "added", want[t]) for t in MARKERS["llama3"]
    ]
    assert rep["new_tokens"] + rep["overlap"] + rep["unmapped_specials"] == len(tok)


# ---------------------------------------------------------------------- (iv) no template: as before


def test_llm_without_a_chat_template_gets_none(chat_runs):
    out = chat_runs("smollm2-plain", "bert")
    _, tok = _load(out)
    assert tok.chat_template is None and not (out / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert _report(out)["chat_template"] == {"carried": False, "reason": "the LLM's tokenizer has no chat template"}


# ------------------------------------------------------------ (v) the PLM spells the marker: paired


def test_marker_the_plm_already_has_is_paired_not_added(chat_models, tmp_path):
    """A PLM whose vocabulary holds ``<|im_start|>`` (an ordinary added token, no LLM row): that token takes the
    marker's row and becomes special; the vocabulary keeps its size. Run through the CLI, which says so."""
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from cltx.cli.main import app

    llm, plm = chat_models("chatml"), chat_models("bert-im_start")
    plm_tok = AutoTokenizer.from_pretrained(plm)
    pid = plm_tok.convert_tokens_to_ids("<|im_start|>")
    assert pid == len(plm_tok) - 1 and not plm_tok.added_tokens_decoder[pid].special
    out = tmp_path / "o"
    args = ["salt", "--llm", str(llm), "--plm", str(plm), "--out", str(out), "--method", "mean", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "chat template: carried over (<|im_start|> paired with 260, <|im_end|> → [SEP])" in " ".join(
        res.output.split()
    )
    llm_model, llm_tok = _load(llm)
    model, tok = _load(out)
    assert len(tok) == len(plm_tok) and tok.convert_tokens_to_ids("<|im_start|>") == pid == 260
    assert tok.added_tokens_decoder[pid].special
    assert np.array_equal(_rows(model)[pid], _rows(llm_model)[llm_tok.convert_tokens_to_ids("<|im_start|>")])
    _check_conversation(
        out, llm, {"<|im_start|>": (pid, "<|im_start|>"), "[SEP]": (plm_tok.sep_token_id, "<|im_end|>")}
    )
    rep = _report(out)
    assert rep["added_tokens"] == [] and rep["new_model_vocab_size"] == len(plm_tok)
    assert rep["chat_template"]["markers"][0] == {
        "llm_id": llm_tok.convert_tokens_to_ids("<|im_start|>"),
        "token": "<|im_start|>",
        "handled": "paired",
        "id": pid,
    }
    assert pid not in [e["id"] for e in rep["tokens"]] and rep["match_counts"]["special"] == 5


# -------------------------------------------------------------------------- matching only


def test_named_templates_longest_marker_first_and_flags_kept(tmp_path):
    """A dict (or list) of named templates is rewritten template by template; a marker that contains another
    marker's text is replaced whole; a non-special marker (Qwen2.5's ``<tool_call>``) stays non-special, a
    marker's rstrip is kept; added tokens that the template never writes out are no markers."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, LlamaConfig

    from cltx.salt.matching import chat_markers, match_vocabularies
    from cltx.salt.tokenizer import causal_tokenizer, save_tokenizer

    extra = (
        AddedToken("<tool_call>", special=False, normalized=False),
        AddedToken("<|im_end|>!", special=True, normalized=False, rstrip=True),
        AddedToken("<unused>", special=True, normalized=False),
        AddedToken("plain", special=False, normalized=False),
    )
    llm = chat_tokenizer("chatml", template=False, extra=extra)
    tools = CHATML.replace("'<|im_end|>' ", "'<|im_end|>!' ") + "{{ '<tool_call>' }}"
    ids = {t: llm.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<tool_call>", "<|im_end|>!")}
    plm = plm_tokenizer()
    n, sep = len(plm), plm.sep_token_id
    for form in (
        {"default": CHATML, "tool_use": tools},
        [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": tools}],
    ):
        llm.chat_template = form
        assert [i for i, _ in chat_markers(llm)] == sorted(ids.values())
        m = match_vocabularies(llm, plm)
        assert m.chat_template == {
            "default": CHATML.replace("<|im_end|>", "[SEP]"),
            "tool_use": tools,  # <|im_end|>! whole, not [SEP]!
        }
        assert m.added == {n: "<|im_start|>", n + 1: "<tool_call>", n + 2: "<|im_end|>!"}
        assert m.chat_template_summary()["templates"] == ["default", "tool_use"]
    tok = causal_tokenizer(
        plm,
        llm,
        m.roles,
        LlamaConfig(),
        prepend=m.prepends is not None,
        added=m.added,
        markers=m.marker_tokens,
        chat_template=m.chat_template,
    )
    save_tokenizer(tok, tmp_path)
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.chat_template == m.chat_template
    flags = {i: (a.content, a.special, a.rstrip) for i, a in tok.added_tokens_decoder.items() if i >= n}
    assert flags == {
        n: ("<|im_start|>", True, False),
        n + 1: ("<tool_call>", False, False),
        n + 2: ("<|im_end|>!", True, True),
    }
    conv = CONVERSATION[:2]
    text = tok.apply_chat_template(conv, tokenize=False, chat_template="tool_use")
    got = tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in got if i >= n or i == sep] == [n, n + 2, n, n + 2, n + 1]
    assert tok.decode(got, skip_special_tokens=True).split()[-1] == "<tool_call>"
