"""CLO under FSDP2 on the CPU (gloo, 2 processes) equals 1 process over the same global batches.

accelerate 1.15 runs FSDP only on accelerator devices: on the CPU it drops the FSDP plugin and the
Trainer trains with DDP (``CLOTrainer`` refuses that instead; checked here too). So the sharding is
done by accelerate's own FSDP2 preparation (``accelerate.utils.fsdp2_prepare_model`` with the plugin
that ``CLOConfig(fsdp=True)`` asks for, the same call ``Trainer.train`` makes on GPUs) and the steps
run by hand through the trainer's own pieces: ``_get_num_items_in_batch`` (all-rank counts),
``compute_loss`` (the CLO loss inside the sharded model's forward), ``log`` (metrics reduced over
ranks), ``finish_reference`` (the reference pass through the sharded model, as at train start) and
``save_full_state_dict`` with the full state dict gathered as accelerate's ``get_state_dict`` does.
The single-process run is the plain ``Trainer.train`` with twice the accumulation (plain SGD, so any
mis-normalisation or a sharded LM head inside the loss would show up in the weights)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from _launch import run_checked, torchrun
from safetensors.torch import load_file

MODES = ("attention", "full")

COMMON = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
    from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
    from cltx.clo.trainer import CLOConfig, CLOTrainer

    out = sys.argv[1]
    tok = tiny_tokenizer()

    def bins(n=8, seed=5):
        ex, rep = build_examples(tiny_records(n, seed=seed))
        return make_bins(tokenize_examples(ex, PromptFormatter(tok), 48, rep), 1, "clo", tok.pad_token_id, seed=2)

    def config(mode, grad_accum, **kw):
        return CLOConfig(
            output_dir=out + "/ck", use_cpu=True, save_strategy="no", max_steps=3, per_device_train_batch_size=1,
            gradient_accumulation_steps=grad_accum, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
            train_mode=mode, logging_steps=1, seed=0, max_grad_norm=0.0, **kw,
        )
    """
)

SINGLE = COMMON + textwrap.dedent(
    """
    runs = {}
    for mode in ("attention", "full"):
        tr = CLOTrainer(tiny_llama(tok), config(mode, 2), bins(), processing_class=tok, eval_bins=bins(3, 11))
        tr.train()
        tr.save_final(f"{out}/{mode}")
        runs[mode] = [h for h in tr.state.log_history if "loss" in h] + [tr.evaluate()]
    json.dump(runs, open(out + "/run.json", "w"))
    """
)

FSDP = COMMON + textwrap.dedent(
    """
    import os, types
    import torch.distributed as dist
    from accelerate.utils import FullyShardedDataParallelPlugin, fsdp2_prepare_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from cltx.clo.trainer import EpochShuffleSampler
    from cltx.errors import CltxError

    result = {}
    try:  # the Trainer's own FSDP route: accelerate drops FSDP on the CPU, CLOTrainer says so
        CLOTrainer(tiny_llama(tok), config("attention", 1, fsdp=True), bins(), processing_class=tok)
        result["cpu_fsdp_error"] = None
    except CltxError as e:
        result["cpu_fsdp_error"] = str(e)
    os.environ.pop("ACCELERATE_USE_FSDP", None)  # set by accelerate when handed the plugin above
    plugin = FullyShardedDataParallelPlugin(**config("attention", 1, fsdp=True).fsdp_plugin_args)
    world, rank = dist.get_world_size(), dist.get_rank()
    for mode in ("attention", "full"):
        tr = CLOTrainer(
            tiny_llama(tok), config(mode, 1, ref_cache=False), bins(), processing_class=tok, eval_bins=bins(3, 11)
        )
        before = {i: tr.train_bins[i]["ref_chosen_logps"].clone() for i in tr.needed_bins()}
        accel = types.SimpleNamespace(
            state=types.SimpleNamespace(fsdp_plugin=plugin), mixed_precision="no",
            is_main_process=rank == 0, device=torch.device("cpu"),
        )
        model = fsdp2_prepare_model(accel, tr.model)
        head = model.policy.get_output_embeddings().weight
        units = [n for n, m in model.named_modules() if isinstance(m, FSDPModule)]
        # the reference pass through the sharded model (an odd count: rank 1 runs one padding forward)
        tr._ref_missing = tr.needed_bins()[:5]
        tr.finish_reference(model)
        ref_diff = max(float((tr.train_bins[i]["ref_chosen_logps"] - before[i]).abs().max()) for i in before)
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        order = list(EpochShuffleSampler(len(tr.train_bins), 0))
        for step in range(3):
            batch = [tr.train_bins[order[step * world + rank]]]
            counts = tr._get_num_items_in_batch(batch, torch.device("cpu"))
            total = torch.zeros(())
            for b in batch:
                loss = tr.compute_loss(model, b, num_items_in_batch=counts)
                loss.backward()
                total += loss.detach()
            opt.step()
            opt.zero_grad()
            dist.all_reduce(total)
            tr.state.global_step = step + 1
            tr.log({"loss": float(total) / world})
        # held-out scores through the sharded model: 3 bins, 2 : 1 between the ranks, rank 1 pads a forward
        tr.is_fsdp_enabled, tr.model_wrapped = True, model
        held = tr.evaluate()
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)  # accelerate's get_state_dict under FSDP2
        if rank == 0:
            tr.save_full_state_dict(f"{out}/{mode}", state)
        result[mode] = {
            "logs": [h for h in tr.state.log_history if "loss" in h] + [held],
            "units": units,
            "head_sharded": isinstance(head, DTensor) and tuple(head.to_local().shape) != tuple(head.shape),
            "ref_diff": ref_diff,
        }
    if rank == 0:
        json.dump(result, open(out + "/run.json", "w"))
    """
)


BF16 = COMMON + textwrap.dedent(
    """
    import contextlib, types
    from accelerate.utils import FullyShardedDataParallelPlugin, fsdp2_prepare_model
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = torch.bfloat16
    # what accelerate's plugin holds under --bf16 on a GPU: bf16 params, bf16 reduce, bf16 outputs, and
    # (the default) every floating forward input cast to bf16
    mp = MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16, output_dtype=bf16)
    plugin = FullyShardedDataParallelPlugin(**config("full", 1, fsdp=True).fsdp_plugin_args, mixed_precision_policy=mp)
    tr = CLOTrainer(
        tiny_llama(tok), config("full", 1, ref_cache=False, bf16=True), bins(), processing_class=tok,
        eval_bins=bins(3, 11),
    )
    plain_autocast = type(tr._step_autocast(tr.model))
    accel = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), mixed_precision="bf16", is_main_process=True,
        device=torch.device("cpu"),
    )
    model = fsdp2_prepare_model(accel, tr.model)
    tr._ref_missing = list(tr._ref_needed)  # train and held-out bins, as deferred under FSDP
    tr.finish_reference(model)  # as at train start under FSDP: through the sharded model
    refs = torch.cat([tr.train_bins[i]["ref_chosen_logps"] for i in tr.needed_bins()])
    model.train()
    b = tr.train_bins[tr.needed_bins()[0]]
    tr.compute_loss(model, b, num_items_in_batch=tr._get_num_items_in_batch([b], torch.device("cpu")))
    tr.state.global_step = 1
    tr.log({"loss": 0.0})
    tr.is_fsdp_enabled, tr.model_wrapped = True, model
    held = tr.evaluate()
    json.dump({
        "step0": tr.state.log_history[0],
        "held": held,
        "refs_all_bf16": bool((refs.to(bf16).float() == refs).all()),
        "refs_dtype": str(refs.dtype),
        "sharded_autocast": type(tr._step_autocast(model)).__name__,
        "plain_autocast": plain_autocast.__name__,
    }, open(out + "/run.json", "w"))
    """
)


def test_fsdp2_bf16_step_zero_rewards_are_exactly_zero(tmp_path):
    """FSDP2 with accelerate's bf16 policy casts a sharded module's floating inputs and outputs to bf16:
    the reference log-probs read from the outputs, and passed back in as inputs, were bf16-rounded
    (-11.6045 became -11.625), so at step 0 every reward was ~1e-3 instead of 0 (seen on an H200, and
    here on the CPU). They now travel as fp32 bits and come from the loss's own fp32 metrics; the
    reference pass runs in the step's context (FSDP2: no autocast, the policy casts the parameters)."""
    (tmp_path / "bf16.py").write_text(BF16, encoding="utf-8")
    run_checked([*torchrun(1), str(tmp_path / "bf16.py"), str(tmp_path)], tmp_path / "cache")
    r = json.loads((tmp_path / "run.json").read_text())
    assert r["refs_dtype"] == "torch.float32" and not r["refs_all_bf16"], r  # fp32 values, not rounded ones
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert r["step0"][key] == 0.0, r["step0"]
        assert r["held"][f"eval_{key}"] == 0.0, r["held"]
    assert r["step0"]["nll"] > 0 and r["held"]["eval_nll"] > 0
    assert r["sharded_autocast"] == "nullcontext" and r["plain_autocast"] != "nullcontext", r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clo-fsdp")
    (tmp / "fsdp.py").write_text(FSDP, encoding="utf-8")
    (tmp / "single.py").write_text(SINGLE, encoding="utf-8")
    run_checked([*torchrun(2), str(tmp / "fsdp.py"), str(tmp / "fsdp")], tmp / "cache-fsdp")
    run_checked([sys.executable, str(tmp / "single.py"), str(tmp / "single")], tmp / "cache-single")
    fsdp = json.loads((tmp / "fsdp" / "run.json").read_text())
    single = json.loads((tmp / "single" / "run.json").read_text())
    return tmp, fsdp, single


def test_fsdp_through_the_trainer_on_cpu_is_refused(runs):
    _, fsdp, _ = runs
    msg = fsdp["cpu_fsdp_error"]
    assert msg is not None and msg.startswith("fsdp=True") and "MULTI_CPU" in msg and "fix:" in msg


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_two_processes_equal_single_process(runs, mode):
    tmp, fsdp, single = runs
    run = fsdp[mode]
    # the decoder layers are units of their own; the root keeps the LM head, sharded between steps
    assert run["units"] == ["", "policy.model.layers.0", "policy.model.layers.1"], run["units"]
    assert run["head_sharded"]
    assert run["ref_diff"] <= 1e-6  # reference log-probs through the sharded model = unsharded ones
    assert len(run["logs"]) == len(single[mode]) == 4
    ea, eb = run["logs"].pop(), single[mode].pop()  # held-out scores of the trained weights
    for key in ("eval_loss", "eval_nll", "eval_cl", "eval_rewards/margins", "eval_logps/rejected"):
        assert abs(ea[key] - eb[key]) <= 1e-5 * max(1.0, abs(eb[key])), (key, ea, eb)
    for la, lb in zip(run["logs"], single[mode], strict=True):
        for key in ("loss", "nll", "cl", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            assert abs(la[key] - lb[key]) <= 1e-5 * max(1.0, abs(lb[key])), (key, la, lb)
    assert run["logs"][0]["rewards/margins"] == 0.0 and run["logs"][-1]["rewards/margins"] != 0.0
    from transformers import AutoModelForCausalLM

    from cltx.clo._tiny import tiny_llama, tiny_tokenizer
    from cltx.clo.model import ATTENTION_MODULES

    wa = load_file(str(tmp / "fsdp" / mode / "model.safetensors"))
    wb = load_file(str(tmp / "single" / mode / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    loaded = AutoModelForCausalLM.from_pretrained(tmp / "fsdp" / mode).state_dict()
    start = tiny_llama(tiny_tokenizer()).state_dict()
    changed = {k for k in start if not torch.equal(loaded[k], start[k])}
    attention = {k for k in start if ATTENTION_MODULES.search(k.rsplit(".", 1)[0])}
    if mode == "attention":
        assert changed == attention
    else:
        assert attention < changed and "lm_head.weight" in changed


def test_lora_full_state_dict_is_merged_like_save_final(tmp_path, monkeypatch):
    """Under FSDP the final save gets a gathered state dict (the live model is sharded): the LoRA
    adapter is merged on a CPU copy, and must equal merging the live model in place."""
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
    from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
    from cltx.clo.trainer import CLOConfig, CLOTrainer

    tok = tiny_tokenizer()
    ex, rep = build_examples(tiny_records(4, seed=1))
    bins = make_bins(tokenize_examples(ex, PromptFormatter(tok), 48, rep), 2, "sft", tok.pad_token_id, seed=0)
    args = CLOConfig(output_dir=str(tmp_path / "ck"), use_cpu=True, method="sft", train_mode="lora", lora_r=4)
    tr = CLOTrainer(tiny_llama(tok), args, bins, processing_class=tok)
    torch.manual_seed(3)
    with torch.no_grad():  # a trained adapter: B ≠ 0, so the merge changes the weights
        for n, p in tr.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    state = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.save_full_state_dict(tmp_path / "gathered", state)
    tr.save_final(tmp_path / "live")
    wa = load_file(str(tmp_path / "gathered" / "model.safetensors"))
    wb = load_file(str(tmp_path / "live" / "model.safetensors"))
    assert wa.keys() == wb.keys() and not any("lora" in k for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-6)
    base = tiny_llama(tok).state_dict()
    assert not torch.equal(wa["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert (tmp_path / "gathered" / "tokenizer.json").exists()


def test_cli_fsdp_options_errors(tmp_path, monkeypatch):
    """``cltx clo --fsdp [--fsdp-config FILE]``: bad uses are one red line naming the option and the fix."""
    from typer.testing import CliRunner

    from cltx.cli.main import app
    from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer

    for var in ("FSDP_CPU_RAM_EFFICIENT_LOADING", "ACCELERATE_USE_FSDP"):  # transformers sets the first
        monkeypatch.setenv(var, "false")
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    tok = tiny_tokenizer()
    tiny_llama(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "mt.jsonl").write_text("\n".join(json.dumps(r) for r in tiny_records(4)), encoding="utf-8")
    (tmp_path / "ok.json").write_text('{"version": 2, "reshard_after_forward": true}', encoding="utf-8")
    (tmp_path / "v3.json").write_text('{"version": 3}', encoding="utf-8")
    (tmp_path / "list.json").write_text("[2]", encoding="utf-8")
    (tmp_path / "broken.json").write_text("{version: 2", encoding="utf-8")
    cases = [
        (["--fsdp"], ["fsdp=True", "torchrun --nproc_per_node N", "fix:"]),
        (["--fsdp", "--fsdp-config", str(tmp_path / "ok.json")], ["fsdp=True", "torchrun"]),
        (["--fsdp-config", str(tmp_path / "ok.json")], ["fsdp_config=", "fix: add --fsdp"]),
        (["--fsdp", "--fsdp-config", str(tmp_path / "missing.json")], ["fsdp_config=", "missing.json", "no such file"]),
        (["--fsdp", "--fsdp-config", str(tmp_path / "broken.json")], ["fsdp_config=", "not valid JSON"]),
        (["--fsdp", "--fsdp-config", str(tmp_path / "list.json")], ["fsdp_config=", "list.json", "JSON object"]),
        (["--fsdp", "--fsdp-config", str(tmp_path / "v3.json")], ["v3.json", "version 3", "fix: use 2"]),
    ]
    base = ["clo", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "mt.jsonl"), "--max-steps", "1"]
    for extra, wanted in cases:
        res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "out"), *extra])
        assert res.exit_code == 1, (extra, res.output)
        assert "Traceback" not in res.output, res.output
        for text in wanted:
            assert text in res.output, (extra, text, res.output)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    helped = CliRunner().invoke(app, ["clo", "--help"])
    assert "--fsdp" in helped.output and "--fsdp-config" in helped.output


def test_fsdp_reference_waits_for_the_wrapped_model_and_resume_needs_the_cache(tmp_path, monkeypatch):
    """Under FSDP the missing reference log-probs are computed at train start (callback) through the
    wrapped model; resuming then would compute them with the checkpoint's weights, so it is refused."""
    monkeypatch.setenv("CLTX_CACHE", str(tmp_path / "cache"))
    from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
    from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
    from cltx.clo.trainer import CLOConfig, CLOTrainer, _ReferenceAtTrainBegin
    from cltx.errors import CltxError

    tok = tiny_tokenizer()
    ex, rep = build_examples(tiny_records(4, seed=1))
    bins = make_bins(tokenize_examples(ex, PromptFormatter(tok), 48, rep), 1, "clo", tok.pad_token_id, seed=0)
    args = CLOConfig(output_dir=str(tmp_path / "ck"), use_cpu=True)
    tr = CLOTrainer(tiny_llama(tok), args, bins, processing_class=tok)
    done = {i: bins[i].pop("ref_chosen_logps") for i in tr.needed_bins()}
    tr._ref_missing = tr.needed_bins()  # as left by _prepare_reference under FSDP
    tr.is_fsdp_enabled = True
    with pytest.raises(CltxError, match=r"^resume='ck-1'.*reference log-probs.*fix:"):
        tr.train(resume_from_checkpoint="ck-1")
    tr.model_wrapped = tr.model
    _ReferenceAtTrainBegin(tr).on_train_begin(tr.args, tr.state, tr.control)
    assert tr._ref_missing == [] and tr.ref_info["bins_computed"] == len(done)
    for i, ref in done.items():
        assert torch.equal(bins[i]["ref_chosen_logps"], ref)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gpu_cli_fsdp_trainer_train_equals_plain_run(tmp_path, bf16):
    """The whole route the CPU cannot take: ``torchrun … cltx clo --fsdp`` on a CUDA device runs
    ``Trainer.train`` with accelerate's FSDP2 preparation (one process: the sharding is trivial, but
    prepare, the train-start reference pass, logging and the gathered final save all run) and gives
    the same log and weights as the same command without FSDP."""
    from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_llama(tok, hidden=64).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "mt.jsonl").write_text("\n".join(json.dumps(r) for r in tiny_records(8, seed=5)), encoding="utf-8")
    (tmp_path / "held.jsonl").write_text("\n".join(json.dumps(r) for r in tiny_records(3, seed=11)), encoding="utf-8")
    base = ["clo", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "mt.jsonl"), "--max-steps", "4"]
    base += ["--eval-data", str(tmp_path / "held.jsonl"), "--eval-steps", "2"]  # held-out scores through FSDP
    base += ["--batch-size", "2", "--logging-steps", "1", "--lr", "1e-3", "--seed", "0", "--train", "full"]
    if bf16:
        base.append("--bf16")
    fsdp_cmd = [*torchrun(1), "-m", "cltx.cli.main", *base, "--out", str(tmp_path / "fsdp"), "--fsdp"]
    run_checked(fsdp_cmd, tmp_path / "cache-fsdp")
    plain_cmd = [sys.executable, "-m", "cltx.cli.main", *base, "--out", str(tmp_path / "plain")]
    run_checked(plain_cmd, tmp_path / "cache-plain")
    ra = json.loads((tmp_path / "fsdp" / "clo_report.json").read_text())
    rb = json.loads((tmp_path / "plain" / "clo_report.json").read_text())
    assert ra["steps"] == rb["steps"] == 4
    assert ra["first_log"]["rewards/margins"] == 0.0  # reference through the wrapped model = policy at step 0
    tol = 3e-2 if bf16 else 1e-4
    la = [h for h in ra["log_history"] if "loss" in h]
    lb = [h for h in rb["log_history"] if "loss" in h]
    for a, b in zip(la, lb, strict=True):
        assert abs(a["loss"] - b["loss"]) <= tol * max(1.0, abs(b["loss"])), (a, b)
    assert [e["step"] for e in ra["eval"]] == [e["step"] for e in rb["eval"]] == [0, 2, 4]
    assert ra["eval"][0]["eval_rewards/margins"] == 0.0  # held-out reference through the wrapped model too
    for a, b in zip(ra["eval"], rb["eval"], strict=True):
        assert abs(a["eval_loss"] - b["eval_loss"]) <= tol * max(1.0, abs(b["eval_loss"])), (a, b)
    from transformers import AutoModelForCausalLM

    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=tol, atol=tol)
