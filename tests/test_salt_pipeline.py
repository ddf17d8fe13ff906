"""End to end ``cltx salt`` on tiny models built here: a Llama-style LLM with a byte-level BPE
tokenizer and a BERT-style PLM with a lower-casing WordPiece tokenizer, both trained in the test.

The oracle for the new rows is an independent float64 recomputation: numpy's pseudo-inverse on the
neighbours the report names, with the overlap map rebuilt here from the two vocabularies.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cltx.errors import CltxError

WORDS = (
    "the a of and to in is was for on with as by at from that this it he she they we you his her "
    "house river city water stone light night day year time people world school market garden "
    "window table letter teacher doctor village winter summer morning evening music story paper "
    "green small large old new long short early late quick slow bright dark warm cold "
    "walk read write open close carry bring build speak listen travel learn remember"
).split()
# Words only the PLM's corpus has (they become new tokens).
PLM_ONLY = "harbour lantern meadow orchard chimney cathedral bicycle kettle ferry quarry".split()


def corpus(seed: int, extra: list[str], n: int = 400, capitalise: bool = True) -> list[str]:
    rng = random.Random(seed)
    vocab = list(WORDS) + extra
    lines = []
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 12))]
        if capitalise and rng.random() < 0.5:
            words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", ";"]))
    return lines


def llm_tokenizer(vocab_size: int = 420, add_bos: bool = True, pad_is_eos: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus(0, []), trainer=trainer)
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", tk.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>" if pad_is_eos else "<pad>",
        unk_token="<unk>",
    )


def plm_tokenizer(vocab_size: int = 260, words: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    lines = corpus(1, PLM_ONLY, capitalise=False) if words is None else [" ".join(words)] * 50
    tk.train_from_iterator(lines, trainer=trainer)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def build_llm(path: Path, *, tied: bool = True, seed: int = 0, add_bos: bool = True, pad_is_eos: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = llm_tokenizer(add_bos=add_bos, pad_is_eos=pad_is_eos)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger-than-default rows, so that fits are far from zero
        model.get_input_embeddings().weight.normal_(0, 0.5)
        if not tied:
            model.get_output_embeddings().weight.normal_(0, 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_plm(path: Path, *, seed: int = 1, tokenizer=None, vocab_size: int | None = None, save_tokenizer=True) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tok = tokenizer if tokenizer is not None else plm_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(cfg).save_pretrained(path)
    if save_tokenizer:
        tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------ fixtures

PUNCT = set(",.!?;")
SPECIAL_MAP = {"[CLS]": "<s>", "[SEP]": "</s>", "[PAD]": "<pad>", "[UNK]": "<unk>"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("salt-models")
    return {
        "tied": build_llm(root / "llm-tied", tied=True),
        "untied": build_llm(root / "llm-untied", tied=False, seed=3),
        "plm": build_plm(root / "plm"),
    }


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("salt-eval") / "eval.txt"
    p.write_text("\n".join(corpus(7, PLM_ONLY, n=12)) + "\n", encoding="utf-8")
    return p


def _run(llm: Path, plm: Path, out: Path, **kw):
    from cltx.salt import SaltConfig, transfer_vocabulary

    return transfer_vocabulary(SaltConfig(llm=str(llm), plm=str(plm), device="cpu", **kw), out)


@pytest.fixture(scope="module")
def salt_runs(models, tmp_path_factory):
    """One SALT run per head type; the untied one forces more neighbours than PLM dimensions."""
    root = tmp_path_factory.mktemp("salt-out")
    runs = {}
    for variant, kw in (("tied", {}), ("untied", {"k_min": 30, "k_max": 40})):
        out = root / variant
        _run(models[variant], models["plm"], out, **kw)
        runs[variant] = out
    return runs


def _expected_overlap(llm_tok, plm_tok) -> dict[int, int]:
    """The overlap map rebuilt independently for these ASCII tokenizers."""
    llm_vocab = llm_tok.get_vocab()
    out = {}
    for tok, pid in plm_tok.get_vocab().items():
        if tok in SPECIAL_MAP:
            out[pid] = llm_vocab[SPECIAL_MAP[tok]]
            continue
        if tok == "[MASK]":
            continue
        if tok.startswith("##"):
            llm_form = tok[2:]
        elif tok in PUNCT:
            llm_form = tok
        else:
            llm_form = "\u0120" + tok
        if llm_form in llm_vocab:
            out[pid] = llm_vocab[llm_form]
    return out


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def _targets(model) -> np.ndarray:
    """The LLM rows the fits predict: input embeddings, then output embeddings when untied."""
    inp = model.get_input_embeddings().weight.detach().double().numpy()
    out = model.get_output_embeddings().weight
    if out.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        return inp
    return np.concatenate([inp, out.detach().double().numpy()], axis=1)


def _plm_embeddings(plm: Path) -> np.ndarray:
    from transformers import AutoModel

    return AutoModel.from_pretrained(plm).get_input_embeddings().weight.detach().double().numpy()


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_overlap_rows_exact_and_new_rows_match_float64_pinv(models, salt_runs, variant):
    _check_salt_rows(models, salt_runs[variant], variant)


@pytest.mark.gpu
def test_salt_on_cuda_matches_float64_pinv(models, tmp_path):
    from cltx.salt import SaltConfig, transfer_vocabulary

    out = tmp_path / "cuda"
    cfg = SaltConfig(llm=str(models["untied"]), plm=str(models["plm"]), k_min=30, k_max=40, device="cuda")
    transfer_vocabulary(cfg, out)
    _check_salt_rows(models, out, "untied")


def _check_salt_rows(models, out: Path, variant: str) -> None:
    llm, llm_tok = _load(models[variant])
    new, new_tok = _load(out)
    report = json.loads((out / "salt_report.json").read_text())
    plm_tok = __import__("transformers").AutoTokenizer.from_pretrained(models["plm"])

    overlap = _expected_overlap(llm_tok, plm_tok)
    assert report["overlap"] == len(overlap)
    assert sum(report["match_counts"].values()) == len(overlap)
    assert report["tied_embeddings"] is (variant == "tied")
    assert len(new_tok) == len(plm_tok) == report["new_model_vocab_size"]

    y_llm, y_new = _targets(llm), _targets(new)
    assert y_new.shape == (len(plm_tok), y_llm.shape[1])
    pids, lids = list(overlap), list(overlap.values())
    # Exactly the LLM's rows (bitwise), input and output.
    assert np.array_equal(y_new[pids], y_llm[lids])

    x = _plm_embeddings(models["plm"])
    entries = [e for e in report["tokens"] if e["init"] == "salt"]
    assert len(entries) == report["new_tokens"] > 20
    over_d = 0
    for e in entries:
        nb = e["neighbors"]
        assert nb and all(n in overlap for n in nb)
        X, Y = x[nb], y_llm[[overlap[n] for n in nb]]
        expected = x[e["id"]] @ np.linalg.pinv(X) @ Y
        got = y_new[e["id"]]
        scale = max(np.abs(expected).max(), 1.0)
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * scale, err_msg=f"token {e['token']}")
        over_d += len(nb) > x.shape[1]
    if variant == "untied":
        assert over_d == len(entries)  # k_min=30 > d_plm=24: every fit is over-determined


def test_saved_folder_reloads_generates_and_stops_on_eos(salt_runs):
    from transformers import LogitsProcessorList

    model, tok = _load(salt_runs["tied"])
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.bos_token_id == model.generation_config.bos_token_id == tok.bos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    enc = tok("Walk to the harbour", return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    # The tiny LLM's tokenizer prepends its bos, so the new one does too; never a trailing [SEP].
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert "token_type_ids" not in enc
    # Every word-start token decodes with its space, the first included: decoding is additive over any split of
    # the ids, so the text of generated tokens alone appends to the prompt's (transformers' text-generation
    # pipeline does exactly that; the PLM's WordPiece decoder gave "walk to theharbour" there).
    assert tok.decode(ids, skip_special_tokens=True) == " walk to the harbour"
    body = tok("Walk to the harbour, then walk back.", add_special_tokens=False)["input_ids"]
    whole = tok.decode(body)
    assert whole == " walk to the harbour, then walk back."
    assert all(tok.decode(body[:i]) + tok.decode(body[i:]) == whole for i in range(1, len(body)))

    n = len(ids)
    ends = [tok.eos_token_id]
    assert model.generation_config.eos_token_id == tok.eos_token_id  # the tiny LLM's pad is its own token
    with torch.no_grad():
        never = LogitsProcessorList([_ForceAt(-1, tok.eos_token_id, ends)])
        free = model.generate(**enc, max_new_tokens=6, do_sample=False, logits_processor=never)
        forced = LogitsProcessorList([_ForceAt(n + 2, tok.eos_token_id, ends)])
        stop = model.generate(**enc, max_new_tokens=12, do_sample=False, logits_processor=forced)
    assert free.shape[1] == n + 6
    assert isinstance(tok.decode(free[0, n:]), str)
    # Generation ends at the eos from generation_config (not passed here): 2 tokens + eos.
    assert stop.shape[1] == n + 3 and stop[0, -1].item() == tok.eos_token_id


class _ForceAt:
    """A logits processor: at sequence length ``at`` only ``token`` may follow; ``banned`` never otherwise."""

    def __init__(self, at: int, token: int, banned: list[int]):
        self.at, self.token, self.banned = at, token, banned

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            scores[:] = -float("inf")
            scores[:, self.token] = 0.0
        else:
            scores[:, self.banned] = -float("inf")
        return scores


def test_pad_that_is_the_llm_eos_also_ends_generation(models, tmp_path):
    """SmolLM2's pad is its eos: the PLM's [PAD] then gets the eos row and must end generation too."""
    from transformers import LogitsProcessorList

    llm = build_llm(tmp_path / "llm-pad-eos", pad_is_eos=True)
    out = tmp_path / "o"
    _run(llm, models["plm"], out, method="mean")
    model, tok = _load(out)
    ends = [tok.eos_token_id, tok.pad_token_id]
    assert model.generation_config.eos_token_id == ends
    assert json.loads((out / "salt_report.json").read_text())["generation_eos_ids"] == ends
    y = _targets(model)
    assert np.array_equal(y[tok.pad_token_id], y[tok.eos_token_id])
    enc = tok("walk to the river", return_tensors="pt")
    n = enc["input_ids"].shape[1]
    forced = LogitsProcessorList([_ForceAt(n + 1, tok.pad_token_id, ends)])
    with torch.no_grad():
        stop = model.generate(**enc, max_new_tokens=12, do_sample=False, logits_processor=forced)
    assert stop.shape[1] == n + 2 and stop[0, -1].item() == tok.pad_token_id


def test_every_method_finite_rules_hold_and_report_complete(models, eval_file, tmp_path):
    from cltx.salt import METHODS

    out = tmp_path / "all"
    summary = _run(models["untied"], models["plm"], out, method="all", eval_text=str(eval_file))
    llm, _ = _load(models["untied"])
    y_llm = _targets(llm)
    table = json.loads((out / "bits_per_byte.json").read_text())
    assert set(table["methods"]) == set(METHODS) == set(summary["methods"])
    assert math.isfinite(table["llm_bits_per_byte"]) and table["llm_bits_per_byte"] > 0
    for method in METHODS:
        folder = out / method
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        rep = json.loads((folder / "salt_report.json").read_text())
        for key in ("method", "llm_vocab_size", "plm_vocab_size", "overlap", "match_counts", "new_tokens", "timings"):
            assert key in rep, key
        assert rep["method"] == method
        assert rep["eval"]["bits_per_byte"] == pytest.approx(table["methods"][method]["bits_per_byte"])
        assert set(rep["timings"]) == {"check", "load", "neighbours", "init", "save", "eval"}
        assert rep["timings"]["eval"] == rep["eval"]["seconds"] > 0
        assert math.isfinite(rep["eval"]["bits_per_byte"]) and rep["eval"]["bits_per_byte"] > 0
        assert len(rep["tokens"]) == rep["new_tokens"] + rep["unmapped_specials"]
        model, _ = _load(folder)
        y = _targets(model)
        assert np.isfinite(y).all()
        news = [e for e in rep["tokens"] if e["init"] == method]
        assert news, method
        rows = y[[e["id"] for e in news]]
        if method == "mean":
            np.testing.assert_allclose(rows, np.broadcast_to(y_llm.mean(0), rows.shape), rtol=1e-4, atol=1e-5)
        elif method == "random":
            assert np.unique(rows, axis=0).shape[0] == rows.shape[0]
            # The draws follow the LLM rows' scale.
            assert 0.5 < rows.std() / y_llm.std() < 2.0
        else:
            for e, row in zip(news, rows, strict=True):
                if method == "focus":
                    nb, w = e["neighbors"], np.array(e["weights"])
                elif method == "wechsel":
                    nb = e["neighbors"]
                    s = np.array(e["similarities"]) / 0.1
                    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                    assert len(nb) == 10
                elif method == "subword-mean":
                    nb = e["llm_pieces"]
                    w = np.full(len(nb), 1.0 / len(nb))
                else:  # salt: checked against pinv elsewhere
                    assert e["neighbors"]
                    continue
                src = y[nb] if method != "subword-mean" else y_llm[nb]
                np.testing.assert_allclose(row, w @ src, rtol=1e-3, atol=1e-4)


def test_unknown_tokens_in_the_eval_text_are_counted(models, tmp_path, caplog):
    """A [UNK] stands for all the bytes it replaced: bits per byte are then optimistic, and say so."""
    text = tmp_path / "emoji.txt"
    text.write_text("walk to the river \U0001f600\nthe \u65e5\u672c old house\nthe garden\n", encoding="utf-8")
    out = tmp_path / "u"
    with caplog.at_level("WARNING", logger="cltx.salt.transfer"):
        _run(models["tied"], models["plm"], out, method="mean", eval_text=str(text))
    rep = json.loads((out / "salt_report.json").read_text())
    assert rep["eval"]["unk_tokens"] == 3
    assert any("3 of" in r.getMessage() and "[UNK]" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "bits_per_byte.json").read_text())["llm_eval"]["unk_tokens"] == 0  # byte-level


def test_vectors_file_is_the_similarity_space(models, tmp_path):
    from transformers import AutoTokenizer

    plm_tok = AutoTokenizer.from_pretrained(models["plm"])
    rng = np.random.default_rng(0)
    words = [t for t in plm_tok.get_vocab() if t.isalpha() and t not in PLM_ONLY]
    vec = tmp_path / "w.vec"
    vec.write_text(
        f"{len(words)} 5\n" + "".join(w + " " + " ".join(f"{v:.4f}" for v in rng.normal(size=5)) + "\n" for w in words)
    )
    out = tmp_path / "v"
    # The largest seed: the fallback draws' derived seed must still be one torch accepts.
    _run(models["tied"], models["plm"], out, vectors=str(vec), seed=2**53)
    rep = json.loads((out / "salt_report.json").read_text())
    assert rep["similarity_space"] == "vectors"
    by_init = {}
    for e in rep["tokens"]:
        by_init.setdefault(e["init"], []).append(e)
    assert by_init["salt"] and by_init["random"]
    with_vec = set(words)
    for e in by_init["salt"]:
        assert e["token"].removeprefix("##") in with_vec
        assert all(plm_tok.convert_ids_to_tokens(n).removeprefix("##") in with_vec for n in e["neighbors"])
    assert {e["token"] for e in by_init["random"]} >= {w for w in PLM_ONLY if w in plm_tok.get_vocab()}
    assert rep["fallback_random"] == len(by_init["random"])


# ------------------------------------------------------------------------------------ bad input


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail loudly if a model's weights are loaded: the error must come before that."""
    from transformers import AutoModel, AutoModelForCausalLM

    def boom(*a, **k):
        raise AssertionError("model weights were loaded before the input was validated")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(AutoModel, "from_pretrained", boom)


def test_plm_without_tokenizer(models, tmp_path, no_heavy_work):
    plm = tmp_path / "plm-notok"
    build_plm(plm, save_tokenizer=False)
    with pytest.raises(CltxError, match=r"plm=.*no tokenizer"):
        _run(models["tied"], plm, tmp_path / "o")


def test_plm_with_missing_embeddings(models, tmp_path, no_heavy_work):
    tok = plm_tokenizer()
    plm = build_plm(tmp_path / "plm-short", tokenizer=tok, vocab_size=len(tok) - 10)
    with pytest.raises(CltxError, match=r"plm=.*embedding rows"):
        _run(models["tied"], plm, tmp_path / "o")


def test_empty_overlap(models, tmp_path, no_heavy_work):
    greek = ["καλημερα", "θαλασσα", "ουρανος", "βιβλιο", "ποταμος", "σπιτι"]
    plm = build_plm(tmp_path / "plm-greek", tokenizer=plm_tokenizer(vocab_size=80, words=greek))
    with pytest.raises(CltxError, match=r"overlap is empty"):
        _run(models["tied"], plm, tmp_path / "o")


def test_vectors_of_the_wrong_width(models, tmp_path, no_heavy_work):
    vec = tmp_path / "bad.vec"
    vec.write_text("3 4\nthe 0.1 0.2 0.3 0.4\nriver 0.1 0.2 0.3\nhouse 1 2 3 4\n")
    with pytest.raises(CltxError, match=r"vectors=.*line 3 has 3 numbers, expected 4"):
        _run(models["tied"], models["plm"], tmp_path / "o", vectors=str(vec))
    vec.write_text("3 4\nthe 0.1 0.2 0.3\n")
    with pytest.raises(CltxError, match=r"header says 4 dimensions but the first vector has 3; fix"):
        _run(models["tied"], models["plm"], tmp_path / "o", vectors=str(vec))
    vec.write_text("1 4\nthe\t0.1\t0.2\t0.3\t0.4\n")
    with pytest.raises(CltxError, match=r"first vector has 0 \(its fields are separated by tabs"):
        _run(models["tied"], models["plm"], tmp_path / "o", vectors=str(vec))


def test_vectors_with_a_nan_fail_with_the_line(models, tmp_path, no_heavy_work):
    """One NaN row would silently reorder every token's neighbours (NaN sorts above all cosines)."""
    from transformers import AutoTokenizer

    words = [t for t in AutoTokenizer.from_pretrained(models["plm"]).get_vocab() if t.isalpha()][:6]
    rng = np.random.default_rng(0)
    lines = [w + " " + " ".join(f"{v:.4f}" for v in rng.normal(size=3)) for w in words]
    vec = tmp_path / "nan.vec"
    for bad in ("nan", "inf", "1e39"):  # 1e39 overflows float32
        rows = list(lines)
        rows[2] = f"{words[2]} 0.1 {bad} 0.3"
        vec.write_text(f"{len(words)} 3\n" + "\n".join(rows) + "\n")
        with pytest.raises(CltxError, match=rf"vectors=.*line 4 \({words[2]!r}\) holds a NaN or infinite"):
            _run(models["tied"], models["plm"], tmp_path / "o", vectors=str(vec))


def test_eval_text_that_is_not_utf8_is_a_user_error(models, tmp_path, no_heavy_work):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Stra\u00dfe und Br\u00fccke\n".encode("latin-1"))
    with pytest.raises(CltxError, match=r"^eval_text=.*latin1.txt.*not UTF-8 text"):
        _run(models["tied"], models["plm"], tmp_path / "o", eval_text=str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CltxError, match=r"^eval_text=.*empty.txt.*no text"):
        _run(models["tied"], models["plm"], tmp_path / "o", eval_text=str(empty))
    assert not (tmp_path / "o").exists()


def test_out_that_cannot_be_created_fails_before_loading(models, tmp_path, no_heavy_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CltxError, match=r"out=.*a-file/sub.*cannot create the folder"):
        _run(models["tied"], models["plm"], blocker / "sub")


def test_device_index_is_checked(monkeypatch):
    from cltx.salt import SaltConfig
    from cltx.salt.transfer import _resolve_device

    for bad in ("cuda:x", "cuda:", "cuda:-1", "gpu"):
        with pytest.raises(CltxError, match="device="):
            SaltConfig(device=bad)
    assert SaltConfig(device="cuda:1").device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(CltxError, match=r"device='cuda:3': this machine has 1 GPU"):
        _resolve_device("cuda:3")


def test_rerun_replaces_every_earlier_result(models, eval_file, tmp_path):
    """A rerun into an earlier output must not leave the earlier run's results beside its own."""
    out = tmp_path / "re"
    _run(models["tied"], models["plm"], out, eval_text=str(eval_file))
    assert (out / "bits_per_byte.json").exists()
    (out / "notes.txt").write_text("mine")
    _run(models["tied"], models["plm"], out, method="mean")
    assert json.loads((out / "salt_report.json").read_text())["method"] == "mean"
    assert not (out / "bits_per_byte.json").exists()  # that table scored the earlier salt model
    _run(models["tied"], models["plm"], out, method="all")
    assert not (out / "model.safetensors").exists() and not (out / "salt_report.json").exists()
    assert (out / "salt" / "model.safetensors").exists()
    _run(models["tied"], models["plm"], out, method="focus")
    assert not any((out / m).exists() for m in ("salt", "focus", "mean", "random"))
    assert (out / "notes.txt").read_text() == "mine"


def test_interrupted_run_can_be_rerun(models, tmp_path, monkeypatch):
    from cltx.salt import VocabularyTransfer

    real_save = VocabularyTransfer.save

    def interrupted(self, init, out, **kw):
        Path(out).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)  # weights written, no report yet
        raise KeyboardInterrupt

    out = tmp_path / "int"
    monkeypatch.setattr(VocabularyTransfer, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(models["tied"], models["plm"], out, method="all")
    monkeypatch.setattr(VocabularyTransfer, "save", real_save)
    summary = _run(models["tied"], models["plm"], out, method="all")
    assert set(summary["methods"]) == {p.name for p in out.iterdir() if p.is_dir()}


def test_out_must_not_be_the_input_model(models, tmp_path):
    out = tmp_path / "chain"
    _run(models["tied"], models["plm"], out, method="mean")
    with pytest.raises(CltxError, match=r"out=.*is the llm folder"):
        _run(out, models["plm"], out)


def test_bad_options_and_occupied_out(models, tmp_path):
    from cltx.salt import SaltConfig

    with pytest.raises(CltxError, match="method="):
        SaltConfig(method="fancy")
    with pytest.raises(CltxError, match="k_min="):
        SaltConfig(k_min=9, k_max=4)
    with pytest.raises(CltxError, match="temperature="):
        SaltConfig(temperature=0)
    for seed in (2**53 + 1, -(2**53) - 1, 1.5):
        with pytest.raises(CltxError, match="seed="):
            SaltConfig(seed=seed)
    with pytest.raises(CltxError, match="vectors="):
        SaltConfig(vectors=str(tmp_path / "missing.vec"))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(CltxError, match="out="):
        _run(models["tied"], models["plm"], occupied)


# ------------------------------------------------------------------------------------ CLI


def test_cli_runs_and_reports(models, eval_file, tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    out = tmp_path / "cli"
    args = ["salt", "--llm", str(models["tied"]), "--plm", str(models["plm"]), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--method", "focus", "--eval-text", str(eval_file), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "bits/byte" in res.output and "focus" in res.output and "LLM, own" in res.output
    assert json.loads((out / "salt_report.json").read_text())["method"] == "focus"
    assert (out / "bits_per_byte.json").exists()


def test_cli_bad_input_is_one_red_line(models, tmp_path):
    from typer.testing import CliRunner

    from cltx.cli.main import app

    plm = build_plm(tmp_path / "plm-notok", save_tokenizer=False)
    args = ["salt", "--llm", str(models["tied"]), "--plm", str(plm), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1
    assert "error:" in res.output and "no tokenizer" in res.output and "Traceback" not in res.output


def test_cli_interrupt_points_to_a_rerun(models, tmp_path, monkeypatch):
    """salt has no --resume: Ctrl-C must not advise one."""
    from typer.testing import CliRunner

    import cltx.salt.transfer as transfer
    from cltx.cli.main import app

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(transfer, "transfer_vocabulary", interrupted)
    out = tmp_path / "o"
    args = ["salt", "--llm", str(models["tied"]), "--plm", str(models["plm"]), "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130
    assert "interrupted" in res.output and "rerun the same command" in res.output
    assert "--resume" not in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------ integration


@pytest.mark.integration
def test_embedded_salt_beats_random_and_mean_in_bits_per_byte():
    """SmolLM2-135M given MiniLM's (English, uncased) vocabulary: SALT starts lower than random and
    mean. One matching and one neighbour computation serve the three methods."""
    from cltx.paths import data_file
    from cltx.pretrain import read_documents
    from cltx.salt import SaltConfig, VocabularyTransfer

    t = VocabularyTransfer(SaltConfig(holdout=0))
    t.prepare()
    assert t.matching.summary()["overlap"] > 10000
    docs = read_documents(data_file("eval_en.txt"))
    bpb = {}
    for method in ("salt", "random", "mean"):
        t.apply(t.initialize(method))
        bpb[method] = t.evaluate(docs)["bits_per_byte"]
    assert all(math.isfinite(v) for v in bpb.values())
    assert bpb["salt"] < bpb["random"] and bpb["salt"] < bpb["mean"], bpb


def test_library_steps_draw_no_bars_and_check_their_arguments(models, tmp_path, capfd, request):
    # The README's step API: transformers' "Loading weights"/"Writing model shards" bars went to the
    # caller's stderr (only the CLI turned them off); evaluate("a text") was a TypeError deep in
    # bits_per_byte ('int' object is not iterable) and a dict config an AttributeError.
    from transformers.utils import logging as hf_logging

    from cltx.salt import SaltConfig, VocabularyTransfer, transfer_vocabulary

    with pytest.raises(CltxError, match=r"config=\{'llm'.*give a SaltConfig"):
        transfer_vocabulary({"llm": str(models["tied"])}, tmp_path / "x")
    with pytest.raises(CltxError, match=r"config=.*give a SaltConfig"):
        VocabularyTransfer({"llm": str(models["tied"])})
    was = hf_logging.is_progress_bar_enabled()  # an in-process CLI test turns them off for good
    hf_logging.enable_progress_bar()
    request.addfinalizer(lambda: was or hf_logging.disable_progress_bar())
    capfd.readouterr()
    vt = VocabularyTransfer(SaltConfig(llm=str(models["tied"]), plm=str(models["plm"]), device="cpu"))
    vt.check()
    vt.load()
    vt.neighbours()
    init = vt.initialize("salt")
    vt.apply(init)
    vt.save(init, tmp_path / "salt")
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err, captured.err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is restored
    with pytest.raises(CltxError, match=r"docs='the river': give a list of strings"):
        vt.evaluate("the river")
    assert vt.evaluate(["the river", "a market"])["tokens"] > 0
