"""Held-out evaluation during CLO/SFT training (``--eval-data``, ``--eval-steps``): the held-out bins get
their reference log-probs from the same pass and cache as the training bins, and are scored with the
training forward, so the scores are the loss's own metrics on data the model does not train on."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from cltx.cli.main import app
from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
from cltx.clo.api import train_clo
from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
from cltx.clo.trainer import CLOConfig, CLOTrainer
from cltx.errors import CltxError


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))


def _bins(tok, n, seed, method="clo", batch=2):
    ex, rep = build_examples(tiny_records(n, seed=seed))
    return make_bins(tokenize_examples(ex, PromptFormatter(tok), 48, rep), batch, method, tok.pad_token_id, seed=0)


def _args(tmp_path, **kw):
    return CLOConfig(
        **{
            "output_dir": str(tmp_path / "ck"),
            "use_cpu": True,
            "save_strategy": "no",
            "logging_steps": 1,
            "seed": 0,
            "learning_rate": 3e-3,
            "max_steps": 2,
            "train_mode": "full",
            **kw,
        }  # fmt: skip
    )


def _direct_nll(model, bins) -> float:
    """Token-mean NLL of the rows the NLL term counts (``nll_mask``: CLO's target-language chosen rows, every row
    of an SFT bin) from the model's own logits."""
    total, n = 0.0, 0
    for b in bins:
        P = b["nll_mask"].shape[0]
        for row in range(P):
            if not b["nll_mask"][row]:
                continue
            keep = b["attention_mask"][row].bool()
            ids, lab = b["input_ids"][row][keep], b["labels"][row][keep]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
            scored = lab != -100
            total -= float(logp[scored].gather(1, lab[scored][:, None]).sum())
            n += int(scored.sum())
    return total / n


def test_before_training_rewards_are_zero_and_nll_is_the_models(tmp_path, tok):
    model = tiny_llama(tok, seed=3)
    held = _bins(tok, 4, seed=9)
    tr = CLOTrainer(model, _args(tmp_path), _bins(tok, 6, seed=1), processing_class=tok, eval_bins=held)
    m = tr.evaluate()
    for key in ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins", "eval_rewards/accuracies"):
        assert m[key] == 0.0, key
    assert m["eval_cl"] == pytest.approx(math.log(2), abs=1e-6)  # -log σ(0) in fp32
    assert m["eval_nll"] == pytest.approx(_direct_nll(model, held), rel=1e-5)
    assert m["eval_loss"] == pytest.approx(0.5 * m["eval_nll"] + 0.5 * m["eval_cl"], rel=1e-12)
    assert tr.state.log_history[-1]["eval_loss"] == m["eval_loss"]
    # the held-out reference log-probs went into the same cache entry as the training bins'
    again = CLOTrainer(tiny_llama(tok, seed=3), _args(tmp_path), _bins(tok, 6, seed=1), processing_class=tok,
                       eval_bins=_bins(tok, 4, seed=9))  # fmt: skip
    assert again.ref_info["cache_hit"] and again.ref_info["bins_computed"] == 0
    assert again.evaluate()["eval_rewards/margins"] == 0.0
    other = CLOTrainer(tiny_llama(tok, seed=3), _args(tmp_path), _bins(tok, 6, seed=1), processing_class=tok,
                       eval_bins=_bins(tok, 4, seed=10))  # fmt: skip
    assert not other.ref_info["cache_hit"]
    # no held-out bins: the cache key is the one without them (earlier runs' caches stay valid)
    plain = CLOTrainer(tiny_llama(tok, seed=3), _args(tmp_path), _bins(tok, 6, seed=1), processing_class=tok)
    assert plain.ref_info["key"] not in (tr.ref_info["key"], other.ref_info["key"]) and plain.evaluate() == {}


def test_sft_eval_is_the_nll(tmp_path, tok):
    model = tiny_llama(tok, seed=4)
    held = _bins(tok, 4, seed=9, method="sft")
    tr = CLOTrainer(model, _args(tmp_path, method="sft"), _bins(tok, 6, seed=1, method="sft"), processing_class=tok,
                    eval_bins=held)  # fmt: skip
    m = tr.evaluate()
    assert m["eval_loss"] == m["eval_nll"] and "eval_cl" not in m
    # SFT bins: every chosen row counts (both directions)
    assert all(b["nll_mask"].all() and b["input_ids"].shape[0] == b["nll_mask"].shape[0] for b in held)
    assert m["eval_nll"] == pytest.approx(_direct_nll(model, held), rel=1e-5)
    with pytest.raises(CltxError, match="eval_bins"):
        CLOTrainer(tiny_llama(tok), _args(tmp_path), _bins(tok, 6, seed=1), processing_class=tok, eval_bins=held)


@pytest.mark.parametrize("method", ["clo", "sft"])
def test_a_rank_without_held_out_bins_sends_the_keys_the_others_store(tmp_path, tok, monkeypatch, method):
    """The reduction stacks the sums by key on every rank: a rank with no held-out bin (more ranks than bins)
    zero-fills ``_metric_keys()``, which must be exactly the keys ``_store`` fills on the others."""
    tr = CLOTrainer(tiny_llama(tok, seed=2), _args(tmp_path, method=method), _bins(tok, 4, seed=1, method=method),
                    processing_class=tok, eval_bins=_bins(tok, 2, seed=9, method=method))  # fmt: skip
    seen = []
    reduce = tr._reduce_metrics
    monkeypatch.setattr(tr, "_reduce_metrics", lambda sums: seen.append(sorted(sums)) or reduce(sums))
    full = tr.evaluate()
    n = len(tr.eval_bins)  # the last of n + 1 ranks gets no bin
    monkeypatch.setattr(type(tr.accelerator), "process_index", property(lambda self: n))
    monkeypatch.setattr(type(tr.accelerator), "num_processes", property(lambda self: n + 1))
    monkeypatch.setattr(tr.accelerator, "reduce", lambda vec, reduction: vec)  # this rank's share alone
    none = tr.evaluate()
    assert seen[0] == seen[1] == sorted(tr._metric_keys())
    assert none["eval_nll"] == 0.0 and full["eval_nll"] > 0


def test_train_clo_scores_held_out_data_every_eval_steps_and_at_the_end(tmp_path, tok):
    rep = train_clo(tiny_llama(tok), tiny_records(8, seed=1), tmp_path / "out", tokenizer=tok, max_steps=3,
                    batch_size=2, max_length=48, lr=3e-3, train_mode="full", eval_data=tiny_records(4, seed=9),
                    eval_steps=2)  # fmt: skip
    assert [e["step"] for e in rep["eval"]] == [0, 2, 3]  # the start, step 2, and the final weights
    assert all(math.isfinite(e["eval_loss"]) for e in rep["eval"]) and rep["eval"][0]["eval_rewards/margins"] == 0.0
    assert rep["eval_data_report"]["used"] == 4 and rep["eval"][-1]["eval_rewards/margins"] != 0.0
    saved = json.loads((tmp_path / "out" / "clo_report.json").read_text())
    assert saved["eval"] == rep["eval"]
    with pytest.raises(CltxError, match="eval_steps"):
        train_clo(tiny_llama(tok), tiny_records(4), tmp_path / "x", tokenizer=tok, max_steps=1, eval_steps=2)
    long = [{**r, "instruction": "o gato " * 40, "_source": {**r["_source"], "instruction": "cat " * 40}} for r in
            tiny_records(2, qa_every=0)]  # fmt: skip
    with pytest.raises(CltxError, match=r"eval_data: none of the 2 records.*prompt_too_long"):  # not "data:"
        train_clo(tiny_llama(tok), tiny_records(4), tmp_path / "z", tokenizer=tok, max_steps=1, max_length=32,
                  eval_data=long)  # fmt: skip
    with pytest.raises(CltxError, match="eval_data: none of the 1 records"):
        train_clo(tiny_llama(tok), tiny_records(4), tmp_path / "y", tokenizer=tok, max_steps=1,
                  eval_data=[{"title": "no fields"}])  # fmt: skip


def test_cli_eval_data(tmp_path, tok):
    d = tmp_path / "m"
    tiny_llama(tok).save_pretrained(d)
    tok.save_pretrained(d)
    for name, recs in (("train.jsonl", tiny_records(6, seed=1)), ("held.jsonl", tiny_records(3, seed=9))):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    args = ["clo", "--model", str(d), "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*args, "--max-steps", "2", "--eval-data", str(tmp_path / "held.jsonl"),
                                   "--eval-steps", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "clo_report.json").read_text())
    assert [e["step"] for e in rep["eval"]] == [0, 1, 2]
    assert "held-out eval_loss" in res.output


def test_eval_split_holds_out_records_of_the_data(tmp_path, tok):
    recs = tiny_records(10, seed=1)
    rep = train_clo(tiny_llama(tok), recs, tmp_path / "a", tokenizer=tok, max_steps=1, batch_size=2, max_length=48,
                    eval_split=0.3, seed=4)  # fmt: skip
    assert rep["data_report"]["records"] == 7 and rep["eval_data_report"]["records"] == 3
    assert [e["step"] for e in rep["eval"]] == [0, 1]
    # the same seed holds out the same records; a count works too; the two parts never overlap
    again = train_clo(tiny_llama(tok), recs, tmp_path / "b", tokenizer=tok, max_steps=1, batch_size=2,
                      max_length=48, eval_split=3, seed=4)  # fmt: skip
    assert again["eval"][0]["eval_nll"] == rep["eval"][0]["eval_nll"]
    from cltx.clo.api import _split

    train, tl, held, hl = _split(recs, None, 3, 4)
    assert len(held) == 3 and not set(tl) & set(hl) and sorted(tl + hl) == list(range(1, 11))
    assert all(r in recs for r in held) and tl == sorted(tl)
    for bad, needle in ((1.5, "whole"), (10, "leave at least one"), (-0.1, "fraction"), ("0.1", "pass a number")):
        with pytest.raises(CltxError, match=needle):
            train_clo(tiny_llama(tok), recs, tmp_path / "c", tokenizer=tok, max_steps=1, eval_split=bad)
    with pytest.raises(CltxError, match="not both"):
        train_clo(tiny_llama(tok), recs, tmp_path / "d", tokenizer=tok, max_steps=1, eval_split=0.2, eval_data=recs)
