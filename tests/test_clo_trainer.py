"""CLOTrainer on a tiny Llama built from a config, with a tokenizer built in the test. Every loss
goes through cltx.kernels.clo_loss (its CPU reference path here)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaModel

import cltx.clo.model as clo_model
import cltx.clo.trainer as clo_trainer
from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
from cltx.clo.api import checkpointing_field, train_clo
from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
from cltx.clo.trainer import CLOConfig, CLOTrainer, step_zero_metrics
from cltx.errors import CltxError

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def _real_kernel_one_thread():
    assert clo_model._LOSS_OVERRIDE is None  # the real cltx.kernels.clo_loss, never a stand-in
    # Tiny matmuls: thread hand-offs cost more than the work on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bins(tok, n=8, batch=2, method="clo", max_length=48, seed=0):
    ex, rep = build_examples(tiny_records(n, seed=seed))
    tex = tokenize_examples(ex, PromptFormatter(tok), max_length, rep)
    return make_bins(tex, batch, method, tok.pad_token_id, seed=seed)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "ck"),
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        learning_rate=3e-3,
        max_steps=4,
        lr_scheduler_type="constant",
    )
    base.update(kw)
    return CLOConfig(**base)


def _logs(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def test_loss_falls_and_preference_is_learned(tmp_path, tok):
    model = tiny_llama(tok)
    bins = _bins(tok, n=16)
    tr = CLOTrainer(model, _args(tmp_path, train_mode="full", max_steps=24), bins, processing_class=tok)
    tr.train()
    loss = _logs(tr, "loss")
    assert len(loss) == 24 and all(math.isfinite(x) for x in loss)
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 0.1
    assert _logs(tr, "rewards/margins")[-1] > 0
    assert _logs(tr, "rewards/accuracies")[-1] > 0.5
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "nll", "cl"):
        assert len(_logs(tr, key)) == 24


def test_attention_mode_changes_only_qkvo(tmp_path, tok):
    model = tiny_llama(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = CLOTrainer(model, _args(tmp_path, learning_rate=1e-2), _bins(tok), processing_class=tok)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(q in n for q in QKVO) for n in trainable)
    assert len(trainable) == 4 * model.config.num_hidden_layers
    tr.train()
    after = model.state_dict()
    for name, old in before.items():
        if any(f".{q}." in name for q in QKVO):
            assert not torch.equal(old, after[name]), name
        else:
            assert torch.equal(old, after[name]), name


@pytest.mark.parametrize("bf16", [False, True])
def test_rewards_exactly_zero_at_step_zero(tmp_path, tok, bf16):
    tr = CLOTrainer(tiny_llama(tok), _args(tmp_path, bf16=bf16, max_steps=1), _bins(tok), processing_class=tok)
    m = step_zero_metrics(tr)
    for key in ("rewards_chosen", "rewards_rejected", "margins"):
        assert torch.count_nonzero(m[key]) == 0, (key, m[key])
    assert float(m["cl"]) == pytest.approx(math.log(2), abs=1e-6)
    tr.train()  # the logged metrics of step 1 come from the forward of the starting weights
    assert _logs(tr, "rewards/chosen") == [0.0] and _logs(tr, "rewards/margins") == [0.0]


def test_reference_logps_computed_once_and_reused(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    bins = _bins(tok)
    calls = clo_trainer.REF_FORWARD_CALLS
    tr = CLOTrainer(tiny_llama(tok), _args(tmp_path), bins, processing_class=tok)
    assert clo_trainer.REF_FORWARD_CALLS - calls == len(bins)
    assert tr.ref_info["cache_hit"] is False and tr.ref_info["bins_computed"] == len(bins)
    first = [b["ref_chosen_logps"].clone() for b in bins]
    tr.train()
    assert clo_trainer.REF_FORWARD_CALLS - calls == len(bins)  # training never recomputes them
    calls = clo_trainer.REF_FORWARD_CALLS
    bins2 = _bins(tok)
    tr2 = CLOTrainer(tiny_llama(tok), _args(tmp_path), bins2, processing_class=tok)
    assert tr2.ref_info["cache_hit"] is True and clo_trainer.REF_FORWARD_CALLS == calls
    assert tr2.ref_info["key"] == tr.ref_info["key"]
    assert all(torch.equal(a, b["ref_chosen_logps"]) for a, b in zip(first, bins2, strict=True))
    # another starting model or another max length is another key
    tr3 = CLOTrainer(tiny_llama(tok, seed=1), _args(tmp_path), _bins(tok), processing_class=tok)
    tr4 = CLOTrainer(tiny_llama(tok), _args(tmp_path), _bins(tok, max_length=12), processing_class=tok)
    assert not tr3.ref_info["cache_hit"] and not tr4.ref_info["cache_hit"]
    assert len({tr.ref_info["key"], tr3.ref_info["key"], tr4.ref_info["key"]}) == 3


def test_short_runs_compute_only_the_reference_they_use(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    calls = clo_trainer.REF_FORWARD_CALLS
    short = CLOTrainer(tiny_llama(tok), _args(tmp_path, max_steps=3), _bins(tok, n=16), processing_class=tok)
    assert short.ref_info["bins_needed"] == 3 and clo_trainer.REF_FORWARD_CALLS - calls == 3
    short.train()
    assert _logs(short, "rewards/margins")[0] == 0.0
    # a longer run on the same model and data adds the 5 missing micro-batches to the same cache entry
    longer = CLOTrainer(tiny_llama(tok), _args(tmp_path, max_steps=8), _bins(tok, n=16), processing_class=tok)
    assert longer.ref_info["bins_computed"] == 5 and clo_trainer.REF_FORWARD_CALLS - calls == 8
    again = CLOTrainer(tiny_llama(tok), _args(tmp_path, max_steps=8), _bins(tok, n=16), processing_class=tok)
    assert again.ref_info["cache_hit"] and clo_trainer.REF_FORWARD_CALLS - calls == 8


def test_resume_continues_the_same_run(tmp_path, tok):
    recs = tiny_records(8)
    common = dict(tokenizer=tok, max_steps=6, save_steps=3, batch_size=2, lr=5e-3, max_length=48, train_mode="full")
    train_clo(tiny_llama(tok), recs, tmp_path / "a", **common)
    full = LlamaForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    # an interrupted run: only the step-3 checkpoint exists, then --resume
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-3", tmp_path / "b" / "checkpoints" / "checkpoint-3")
    rep = train_clo(tiny_llama(tok), recs, tmp_path / "b", resume=True, **common)
    assert rep["resumed_from"].endswith("checkpoint-3") and rep["steps"] == 6
    # the token count is the whole run's, not only the resumed part's
    whole = json.loads((tmp_path / "a" / "clo_report.json").read_text())["tokens"]
    assert rep["tokens"] == whole and 0 < rep["tokens_this_session"] < whole
    run3 = json.loads((tmp_path / "b" / "checkpoints" / "checkpoint-3" / "clo_run.json").read_text())
    assert rep["tokens"] == run3["tokens_trained"] + rep["tokens_this_session"]
    resumed = LlamaForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    start = tiny_llama(tok).state_dict()
    moved = 0
    for k, v in full.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(v, start[k])
    assert moved > 0


def test_resume_with_another_model_is_refused_before_the_reference_pass(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    common = dict(tokenizer=tok, max_steps=2, save_steps=1, batch_size=2, max_length=48)
    train_clo(tiny_llama(tok), tiny_records(8), tmp_path / "a", **common)
    calls = clo_trainer.REF_FORWARD_CALLS
    with pytest.raises(CltxError, match=r"not the run that wrote the checkpoint \(the starting --model's weights"):
        train_clo(tiny_llama(tok, seed=1), tiny_records(8), tmp_path / "a", resume=True, **common)
    assert clo_trainer.REF_FORWARD_CALLS == calls  # refused before a pass over the data
    # the trainer itself checks args.resume_from_checkpoint at construction, before that pass
    ck = str(tmp_path / "a" / "checkpoints" / "checkpoint-2")
    args = _args(tmp_path, resume_from_checkpoint=ck)
    with pytest.raises(CltxError, match="not the run that wrote the checkpoint"):
        CLOTrainer(tiny_llama(tok, seed=1), args, _bins(tok), processing_class=tok)
    assert clo_trainer.REF_FORWARD_CALLS == calls


def test_first_and_last_steps_are_always_logged(tmp_path, tok):
    for max_steps, logged in ((7, [1, 5, 7]), (1, [1]), (10, [1, 5, 10])):
        tr = CLOTrainer(
            tiny_llama(tok), _args(tmp_path, logging_steps=5, max_steps=max_steps), _bins(tok), processing_class=tok
        )
        tr.train()
        steps = [h["step"] for h in tr.state.log_history if "loss" in h]
        assert steps == logged, (max_steps, steps)
        assert len(_logs(tr, "rewards/margins")) == len(logged) and _logs(tr, "rewards/margins")[0] == 0.0


def test_sft_method_trains_on_both_directions(tmp_path, tok):
    bins = _bins(tok, n=16, method="sft")
    assert all(b["nll_mask"].all() for b in bins)
    calls = clo_trainer.REF_FORWARD_CALLS
    tr = CLOTrainer(tiny_llama(tok), _args(tmp_path, method="sft", max_steps=16), bins, processing_class=tok)
    assert clo_trainer.REF_FORWARD_CALLS == calls and tr.ref_info == {}  # SFT needs no reference
    tr.train()
    nll, loss = _logs(tr, "nll"), _logs(tr, "loss")
    assert loss[0] == pytest.approx(nll[0], rel=1e-5)  # SFT loss is the NLL of every chosen row
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.05
    assert not _logs(tr, "rewards/margins")
    with pytest.raises(CltxError, match="other method"):
        CLOTrainer(tiny_llama(tok), _args(tmp_path, method="clo"), bins, processing_class=tok)


def test_lora_trains_and_saves_a_merged_model(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    model = tiny_llama(tok)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lora = dict(tokenizer=tok, train_mode="lora", logging_steps=1)
    rep = train_clo(model, tiny_records(6), tmp_path / "lora", max_steps=3, lr=2e-2, **lora)
    assert rep["steps"] == 3 and not rep["reference"]["cache_hit"]
    assert rep["first_log"]["rewards/margins"] == 0.0
    # the fresh adapter is not part of the starting function: the same base model hits the cache
    rep2 = train_clo(tiny_llama(tok), tiny_records(6), tmp_path / "l2", max_steps=1, **lora)
    assert rep2["reference"]["cache_hit"]
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "lora").state_dict()
    assert not any("lora" in k for k in saved)
    assert any(not torch.equal(saved[k], start[k]) for k in saved if "q_proj" in k)
    assert all(torch.equal(saved[k], start[k]) for k in saved if "mlp" in k or "embed" in k)


def test_bad_models_and_config(tmp_path, tok):
    body = LlamaModel(tiny_llama(tok).config)
    with pytest.raises(CltxError, match="LM head"):
        CLOTrainer(body, _args(tmp_path), _bins(tok), processing_class=tok)
    for bad in (dict(lam=1.5), dict(beta=0.0), dict(train_mode="mlp"), dict(method="dpo"), dict(max_length=2)):
        with pytest.raises(CltxError):
            _args(tmp_path, **bad)
    with pytest.raises(CltxError, match="no usable"):
        CLOTrainer(tiny_llama(tok), _args(tmp_path), [], processing_class=tok)


def test_activation_checkpointing_gives_the_same_run(tmp_path, tok):
    runs = []
    for ckpt in (False, True):
        model = tiny_llama(tok)
        kw = {checkpointing_field(): ckpt}
        tr = CLOTrainer(model, _args(tmp_path / str(ckpt), learning_rate=1e-2, **kw), _bins(tok), processing_class=tok)
        tr.train()
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == ckpt
        runs.append(model.state_dict())
    moved = 0
    for k, v in runs[0].items():
        torch.testing.assert_close(runs[1][k], v, rtol=1e-5, atol=1e-6)
        moved += "q_proj" in k and not torch.equal(v, tiny_llama(tok).state_dict()[k])
    assert moved == 2


@pytest.mark.gpu
def test_gpu_bf16_run_through_the_triton_kernel(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    model = tiny_llama(tok, hidden=64)
    args = _args(tmp_path, use_cpu=False, bf16=True, train_mode="full", max_steps=16)
    tr = CLOTrainer(model, args, _bins(tok, n=16), processing_class=tok)
    assert next(tr.model.parameters()).is_cuda
    m = step_zero_metrics(tr)
    assert torch.count_nonzero(m["margins"]) == 0 and torch.count_nonzero(m["rewards_chosen"]) == 0
    tr.train()
    loss = _logs(tr, "loss")
    assert _logs(tr, "rewards/margins")[0] == 0.0
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 0.05


@pytest.mark.integration
def test_smollm2_one_step(tmp_path, monkeypatch):
    """The embedded SmolLM2-135M with its chat template: one CLO step, rewards exactly zero at step 0."""
    recs = [
        {
            "instruction": "Diga o nome da capital da França.",
            "output": "A capital da França é Paris.",
            "_source": {"instruction": "Name the capital of France.", "output": "The capital of France is Paris."},
        },
        {
            "instruction": "Quantos dias tem uma semana?",
            "output": "Uma semana tem sete dias.",
            "_source": {"instruction": "How many days are in a week?", "output": "A week has seven days."},
        },
    ]
    rep = train_clo("smollm2-135m", recs, tmp_path / "out", max_steps=1, batch_size=2, max_length=96, logging_steps=1)
    assert rep["steps"] == 1 and rep["first_log"]["rewards/margins"] == 0.0
    assert math.isfinite(rep["first_log"]["nll"]) and rep["first_log"]["cl"] == pytest.approx(math.log(2), abs=1e-6)
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "tokenizer.json").exists()


def test_every_record_once_per_epoch_reshuffled(tmp_path, tok, monkeypatch):
    seen: list[list[int]] = []
    real = CLOTrainer.compute_loss

    def spy(self, model, inputs, *a, **kw):
        seen.append(inputs["record_index"].tolist())
        return real(self, model, inputs, *a, **kw)

    monkeypatch.setattr(CLOTrainer, "compute_loss", spy)
    bins = _bins(tok, n=12, batch=2)  # 6 micro-batches of whole records
    tr = CLOTrainer(tiny_llama(tok), _args(tmp_path, max_steps=-1, num_train_epochs=2), bins, processing_class=tok)
    tr.train()
    assert len(seen) == 12
    first, second = seen[:6], seen[6:]
    assert sorted(i for b in first for i in b) == list(range(12)) == sorted(i for b in second for i in b)
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))  # the same whole-record micro-batches
    assert first != second  # in another order


def test_gpt2_conv1d_attention_is_found_and_lora_skips_the_mlp(tmp_path, tok):
    from transformers import BertConfig, BertLMHeadModel, GPT2Config, GPT2LMHeadModel

    from cltx.clo.model import attention_module_names, set_trainable

    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    gpt2 = GPT2LMHeadModel(cfg)
    # GPT-2's projections are transformers' Conv1D, not nn.Linear; its MLP also has a c_proj
    assert attention_module_names(gpt2) == [
        f"transformer.h.{i}.attn.{m}" for i in range(2) for m in ("c_attn", "c_proj")
    ]
    trainable = {n for n, p in set_trainable(GPT2LMHeadModel(cfg), "attention").named_parameters() if p.requires_grad}
    assert trainable and all(".attn." in n for n in trainable)
    lora = set_trainable(GPT2LMHeadModel(cfg), "lora", lora_r=2)
    adapted = {n.split(".lora_A")[0] for n, _ in lora.named_parameters() if "lora_A" in n}
    assert adapted and all(".attn." in n for n in adapted), adapted  # mlp.c_proj must stay untouched
    rep = train_clo(gpt2, tiny_records(4), tmp_path / "gpt2", tokenizer=tok, max_steps=1, max_length=48)
    assert rep["steps"] == 1
    # a BERT-style head: the real reason (not a plain linear head), not "no q/k/v/o, use --train full"
    bert = BertLMHeadModel(
        BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, is_decoder=True)
    )
    with pytest.raises(CltxError, match="not its final hidden states"):
        CLOTrainer(bert, _args(tmp_path), _bins(tok), processing_class=tok)


def test_library_call_checks_options_and_records_and_draws_no_bars(tmp_path, tok, capfd, monkeypatch, request):
    # A misspelt option was a bare TypeError from CLOConfig.__init__, a list of strings an
    # AttributeError after the model loaded; transformers' own "Loading weights"/"Writing model
    # shards" bars were drawn on the caller's stderr (only the CLI turned them off).
    from transformers.utils import logging as hf_logging

    import cltx.clo.api as api

    def no_load(*a, **k):
        raise AssertionError("the model loaded before the options were checked")

    with monkeypatch.context() as m:
        m.setattr(api, "load_policy", no_load)
        with pytest.raises(CltxError, match=r"max_step=1: not an option of train_clo; fix: did you mean max_steps"):
            train_clo("m", tiny_records(4), tmp_path / "x", max_step=1)
        with pytest.raises(CltxError, match=r"data\[1\]='x': each record must be a dict"):
            train_clo("m", [tiny_records(1)[0], "x"], tmp_path / "x", max_steps=1)
        with pytest.raises(CltxError, match=r"data=\{.*give a JSONL path or a list of records"):
            train_clo("m", tiny_records(1)[0], tmp_path / "x", max_steps=1)
    model_dir = tmp_path / "m"
    tiny_llama(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    was = hf_logging.is_progress_bar_enabled()  # an in-process CLI test turns them off for good
    hf_logging.enable_progress_bar()
    request.addfinalizer(lambda: was or hf_logging.disable_progress_bar())
    capfd.readouterr()
    rep = train_clo(str(model_dir), tiny_records(4), tmp_path / "out", max_steps=1, max_length=48)
    captured = capfd.readouterr()
    assert rep["steps"] == 1 and (tmp_path / "out" / "model.safetensors").exists()
    assert captured.out == ""
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is restored


def test_chat_format_records_train_without_flags(tmp_path, tok):
    chat = []
    for r in tiny_records(6, qa_every=0):
        def turns(view):
            return [{"role": "system", "content": view["output"]}, {"role": "user", "content": view["instruction"]},
                    {"role": "assistant", "content": view["output"]}, {"role": "user", "content": view["output"]},
                    {"role": "assistant", "content": view["instruction"]}]  # fmt: skip

        chat.append({"messages": turns(r), "_source": {"messages": turns(r["_source"])}, "_mt": r["_mt"]})
    rep = train_clo(tiny_llama(tok), chat, tmp_path / "chat", tokenizer=tok, max_steps=2, batch_size=2,
                    max_length=48, train_mode="full")  # fmt: skip
    assert rep["steps"] == 2 and math.isfinite(rep["train_loss"])
    assert rep["data_report"]["used"] + sum(rep["data_report"]["skipped"].values()) == 6
    assert rep["data_report"]["used"] >= 5 and rep["data_report"]["system_turns_ignored"] == rep["data_report"]["used"]
    # two exchanges a conversation: the second, with the first as its history, is an example too
    assert rep["data_report"]["examples"] + sum(rep["data_report"]["exchanges_skipped"].values()) == 2 * rep[
        "data_report"
    ]["used"]
    assert rep["data_report"]["examples"] > rep["data_report"]["used"]
