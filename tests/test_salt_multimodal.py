"""``cltx salt`` on a multimodal LLM: the token ids its config names keep meaning their tokens.

A Gemma-3 config (which AutoModelForCausalLM loads as ``Gemma3ForConditionalGeneration``) names its image
placeholders by id — ``image_token_index``, ``boi_token_index``, ``eoi_token_index`` — pointing at added special
tokens of its tokenizer. After the vocabulary swap those tokens must keep their LLM rows, and every such field
must name their new ids: before this was handled, the old ids stayed in the config and pointed past the new
vocabulary (or at an unrelated PLM token), so image inputs broke silently.

The LLM is the tiny Gemma of ``test_salt_families`` with a SigLIP vision tower and the three placeholders added;
its chat template writes ``<start_of_image>`` (so that one is a chat marker already, which the config field then
follows). The PLMs: RoBERTa (every placeholder new to it) and the BERT of ``test_salt_pipeline`` that spells
``<end_of_image>`` (paired with it). Runs are built once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_salt_families import _load, _rows, _save_llm, _tiny, gemma_tokenizer
from test_salt_families import build_plm as build_family_plm
from test_salt_pipeline import build_plm, plm_tokenizer

from cltx.errors import CltxError

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
FIELDS = {"boi_token_index": BOI, "eoi_token_index": EOI, "image_token_index": IMAGE}
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' }}{% if message.get('image') %}"
    "{{ '<start_of_image>' }}{% endif %}{{ message['content'] + '\n' }}{% endfor %}"
)
MM_TOKENS = 4  # image tokens per image (28×28 pixels, 14×14 patches)


def _vision() -> dict:
    import transformers as tf

    return tf.SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    ).to_dict()


def mm_tokenizer():
    tok = gemma_tokenizer()
    tok.add_special_tokens({"extra_special_tokens": [BOI, EOI, IMAGE]})
    tok.chat_template = TEMPLATE
    return tok


def build_gemma3_mm(path: Path, *, image_id: int | None = None) -> Path:
    """A tiny Gemma-3 vision-language model whose config names the added placeholders (``image_id`` overrides
    ``image_token_index``; the embedding then has rows up to it)."""
    import transformers as tf

    tok = mm_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    image = {k: tok.convert_tokens_to_ids(t) for k, t in FIELDS.items()}
    if image_id is not None:
        image["image_token_index"] = image_id
    rows = max(len(tok), *(v + 1 for v in image.values()))
    text = tf.Gemma3TextConfig(vocab_size=rows, head_dim=8, sliding_window=16, **ids, **_tiny())
    cfg = tf.Gemma3Config(
        text_config=text.to_dict(), vision_config=_vision(), mm_tokens_per_image=MM_TOKENS, **image, **ids
    )
    torch.manual_seed(0)
    return _save_llm(path, tf.Gemma3ForConditionalGeneration(cfg), tok)


def bert_with(path: Path, *tokens: str) -> Path:
    tok = plm_tokenizer()
    tok.add_tokens(list(tokens))
    return build_plm(path, tokenizer=tok)


@pytest.fixture(scope="module")
def mm_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm-models")
    builders = {
        "gemma3": build_gemma3_mm,
        "roberta": lambda p: build_family_plm(p, "roberta"),
        "bert-eoi": lambda p: bert_with(p, EOI),
    }
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = builders[name](root / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def mm_runs(mm_models, tmp_path_factory):
    from cltx.salt import SaltConfig, transfer_vocabulary

    root = tmp_path_factory.mktemp("mm-out")
    cache: dict[str, Path] = {}

    def get(plm: str) -> Path:
        if plm not in cache:
            cfg = SaltConfig(
                llm=str(mm_models("gemma3")), plm=str(mm_models(plm)), method="mean", device="cpu", holdout=0
            )
            transfer_vocabulary(cfg, root / plm)
            cache[plm] = root / plm
        return cache[plm]

    return get


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def _report(path: Path) -> dict:
    return json.loads((path / "salt_report.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("plm", ["roberta", "bert-eoi"])
def test_config_ids_name_the_placeholders_with_their_llm_rows(mm_runs, mm_models, plm):
    from transformers import AutoTokenizer

    out, llm = mm_runs(plm), mm_models("gemma3")
    llm_tok = AutoTokenizer.from_pretrained(llm)
    plm_tok = AutoTokenizer.from_pretrained(mm_models(plm))
    model, tok = _load(out)
    llm_model, _ = _load(llm)
    conf, llm_conf = _config(out), _config(llm)
    rows, llm_rows = _rows(model), _rows(llm_model)
    assert rows.shape[0] == conf["text_config"]["vocab_size"] == len(tok)
    report = _report(out)["config_tokens"]
    assert report["fields"] == {f: conf[f] for f in FIELDS}
    for field, text in FIELDS.items():
        old, new = llm_conf[field], conf[field]
        assert llm_tok.convert_ids_to_tokens(old) == text
        # The field names the same token in the new vocabulary, and that token has the LLM's row bit for bit.
        assert tok.convert_ids_to_tokens(new) == text, field
        assert new < len(tok)
        assert np.array_equal(rows[new], llm_rows[old]), field
        assert getattr(model.config, field.replace("_index", "_id")) == new
    by_token = {e["token"]: e for e in report["tokens"]}
    assert {t: by_token[t]["fields"] for t in FIELDS.values()} == {t: [f] for f, t in FIELDS.items()}
    # <start_of_image> is a chat marker the template writes: added for the template, the field follows it.
    marker = next(e for e in _report(out)["chat_template"]["markers"] if e["token"] == BOI)
    assert by_token[BOI]["handled"] == "carried" and by_token[BOI]["id"] == marker["id"] == conf["boi_token_index"]
    if plm == "bert-eoi":  # the PLM's own <end_of_image> gets the row
        assert by_token[EOI] == {**by_token[EOI], "handled": "paired", "id": plm_tok.convert_tokens_to_ids(EOI)}
        assert conf["eoi_token_index"] < len(plm_tok)
    else:
        assert by_token[EOI]["handled"] == "added" and conf["eoi_token_index"] >= len(plm_tok)
    assert by_token[IMAGE]["handled"] == "added" and conf["image_token_index"] >= len(plm_tok)
    added = {e["token"]: e for e in _report(out)["added_tokens"]}
    assert added[IMAGE]["role"] == "config_token" and added[IMAGE]["llm_id"] == llm_conf["image_token_index"]


def test_saved_folder_reloads_and_encodes_the_placeholders_as_the_config_names(mm_runs):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma3ForConditionalGeneration

    out = mm_runs("roberta")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, Gemma3ForConditionalGeneration)
    tok = AutoTokenizer.from_pretrained(out)
    conf = AutoConfig.from_pretrained(out)
    ids = {t: getattr(conf, f) for f, t in FIELDS.items()}
    for text, tid in ids.items():
        assert tok(text, add_special_tokens=False)["input_ids"] == [tid], text
    text = f"Walk to the harbour {BOI}{IMAGE * MM_TOKENS}{EOI} then back."
    got = tok(text, add_special_tokens=False)["input_ids"]
    assert got.count(ids[IMAGE]) == MM_TOKENS and got.count(ids[BOI]) == got.count(ids[EOI]) == 1
    assert IMAGE not in tok.decode(got, skip_special_tokens=True)
    assert {ids[BOI], ids[EOI], ids[IMAGE]} <= set(tok.all_special_ids)


def test_image_input_gives_the_llms_hidden_states(mm_runs, mm_models):
    """bos, boi, the image tokens and eoi all keep their LLM rows: with the same image, the salted model's hidden
    states equal the LLM's, and its logits are the LLM's of the tokens that kept their rows."""
    out, llm = mm_runs("roberta"), mm_models("gemma3")
    model, tok = _load(out)
    llm_model, llm_tok = _load(llm)
    conf, llm_conf = _config(out), _config(llm)
    torch.manual_seed(5)
    pixels = torch.randn(1, 3, 28, 28)

    def run(m, c, bos):
        seq = [bos, c["boi_token_index"], *[c["image_token_index"]] * MM_TOKENS, c["eoi_token_index"]]
        ids = torch.tensor([seq])
        with torch.no_grad():
            res = m(
                input_ids=ids,
                pixel_values=pixels,
                token_type_ids=(ids == c["image_token_index"]).long(),
                output_hidden_states=True,
            )
        return res.hidden_states[-1][0], res.logits[0]

    hidden, logits = run(model, conf, tok.bos_token_id)
    llm_hidden, llm_logits = run(llm_model, llm_conf, llm_tok.bos_token_id)
    torch.testing.assert_close(hidden, llm_hidden, rtol=1e-5, atol=1e-5)
    pairs = {e["id"]: e["llm_id"] for e in _report(out)["config_tokens"]["tokens"]}
    new, old = torch.tensor(list(pairs)), torch.tensor(list(pairs.values()))
    torch.testing.assert_close(logits[:, new], llm_logits[:, old], rtol=1e-5, atol=1e-5)


def test_a_field_naming_a_token_the_tokenizer_lacks_is_refused(mm_models, tmp_path):
    from cltx.salt import SaltConfig, transfer_vocabulary

    llm = build_gemma3_mm(tmp_path / "llm", image_id=len(mm_tokenizer()) + 3)
    out = tmp_path / "out"
    with pytest.raises(CltxError) as e:
        transfer_vocabulary(SaltConfig(llm=str(llm), plm=str(mm_models("roberta")), device="cpu", holdout=0), out)
    msg = str(e.value)
    assert msg.startswith(f"llm={str(llm)!r}") and f"image_token_index={len(mm_tokenizer()) + 3}" in msg
    assert "fix:" in msg and "add_special_tokens" in msg
    assert not out.exists()


def test_a_vision_language_model_autoModelForCausalLM_does_not_load_is_refused(mm_models, tmp_path):
    """Llava: AutoModelForCausalLM refuses its config, so the run stops at the check, naming --llm and the fix."""
    import transformers as tf

    from cltx.salt import SaltConfig, VocabularyTransfer

    tok = mm_tokenizer()
    tok.add_special_tokens({"extra_special_tokens": ["<image>"]})
    text = tf.LlamaConfig(vocab_size=len(tok), **_tiny())
    vision = tf.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    cfg = tf.LlavaConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    with pytest.raises(ValueError, match="AutoModelForCausalLM"):  # the premise: transformers does not load it
        tf.AutoModelForCausalLM.from_config(cfg)
    path = tmp_path / "llava"
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    t = VocabularyTransfer(SaltConfig(llm=str(path), plm=str(mm_models("roberta")), device="cpu"))
    with pytest.raises(CltxError) as e:
        t.check()
    msg = str(e.value)
    assert msg.startswith(f"llm={str(path)!r}") and "'llava'" in msg and "AutoModelForCausalLM" in msg
    assert "fix: pass its language model" in msg


def test_config_token_fields_reads_the_text_side_only():
    import transformers as tf

    from cltx.salt.matching import config_token_fields

    assert config_token_fields(tf.Gemma3Config()) == {
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "image_token_index": 262144,
    }
    assert config_token_fields(tf.Qwen2VLConfig()) == {
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
    }
    g3n = config_token_fields(tf.Gemma3nConfig())
    assert g3n["audio_token_id"] == 262273 and "audio_soft_tokens_per_image" not in g3n
    text = tf.LlamaConfig(vocab_size=10)
    text.image_token_id = 7  # a field of the text config is read too, under its sub-config's name
    llava = tf.LlavaConfig(text_config=text.to_dict(), image_token_index=9)
    assert config_token_fields(llava) == {"image_token_index": 9, "text_config.image_token_id": 7}
    # Text-only LLMs have none: bos/eos/pad are set by role.
    assert config_token_fields(tf.LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)) == {}
    assert config_token_fields(tf.Qwen2Config()) == {}


def test_the_embedded_text_llm_names_no_config_tokens():
    from transformers import AutoConfig

    from cltx.models import resolve_model
    from cltx.salt.matching import config_token_fields
    from cltx.salt.transfer import SaltConfig

    path = Path(resolve_model(SaltConfig().llm, argument="llm"))
    if not (path / "config.json").is_file():
        pytest.skip(f"the embedded LLM is not on this machine ({path})")
    assert config_token_fields(AutoConfig.from_pretrained(path)) == {}


def test_a_field_naming_an_ordinary_token_is_left_with_a_warning_and_lists_are_remapped(mm_models, caplog):
    """An ordinary vocabulary piece that no PLM token carries is not added (the PLM's tokenizer would split text
    differently); a list-valued field gets every id anew."""
    from transformers import AutoTokenizer

    from cltx.salt.matching import match_vocabularies

    llm_tok = AutoTokenizer.from_pretrained(mm_models("gemma3"))
    plm_tok = AutoTokenizer.from_pretrained(mm_models("roberta"))
    plm_vocab = plm_tok.get_vocab()
    ordinary = next(
        i
        for t, i in sorted(llm_tok.get_vocab().items(), key=lambda ti: -ti[1])
        if i not in llm_tok.added_tokens_decoder and t not in plm_vocab and f"\u0120{t[1:]}" not in plm_vocab
    )
    image, eoi = (llm_tok.convert_tokens_to_ids(t) for t in (IMAGE, EOI))
    fields = {"foo_token_id": ordinary, "text_config.media_token_ids": [image, eoi]}
    plain = match_vocabularies(llm_tok, plm_tok)
    with caplog.at_level("WARNING", logger="cltx.salt.matching"):
        m = match_vocabularies(llm_tok, plm_tok, config_tokens=fields)
    entry = next(e for e in m.config_tokens if e["llm_id"] == ordinary)
    assert entry["handled"] == "not kept" and entry["id"] is None and "ordinary" in entry["reason"]
    assert "foo_token_id" not in m.config_ids
    assert f"foo_token_id still names id {ordinary}" in caplog.text
    new = m.config_ids["text_config.media_token_ids"]
    assert [m.added[i] for i in new] == [IMAGE, EOI] and [m.pairs[i] for i in new] == [image, eoi]
    # Only the two placeholders are new: every other pair is the plain matching's.
    assert {p: q for p, q in m.pairs.items() if p not in new} == plain.pairs
    assert m.vocab_size == plain.vocab_size + 2
