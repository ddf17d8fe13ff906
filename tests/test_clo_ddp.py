"""2-process DDP on the CPU (gloo, torchrun) equals 1 process over the same global batches.

Rank r takes micro-batches r, r + 2, … of the shared seeded order; the single process takes the
same micro-batches with twice the gradient accumulation. The NLL term is a token mean and the CL
term a pair mean over the whole step on all ranks, so the two runs must agree (plain SGD, so any
mis-normalisation would show up in the weights directly)."""

from __future__ import annotations

import json
import sys
import textwrap

import torch
from _launch import run_checked, torchrun
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from cltx.clo._tiny import tiny_llama, tiny_records, tiny_tokenizer
    from cltx.clo.data import PromptFormatter, build_examples, make_bins, tokenize_examples
    from cltx.clo.trainer import CLOConfig, CLOTrainer

    out, grad_accum = sys.argv[1], int(sys.argv[2])
    tok = tiny_tokenizer()
    ex, rep = build_examples(tiny_records(8, seed=5))
    bins = make_bins(tokenize_examples(ex, PromptFormatter(tok), 48, rep), 1, "clo", tok.pad_token_id, seed=2)
    hx, hrep = build_examples(tiny_records(3, seed=11))
    held = make_bins(tokenize_examples(hx, PromptFormatter(tok), 48, hrep), 1, "clo", tok.pad_token_id, seed=2)
    args = CLOConfig(
        output_dir=out + "/ck", use_cpu=True, save_strategy="no", max_steps=3, per_device_train_batch_size=1,
        gradient_accumulation_steps=grad_accum, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        train_mode="full", logging_steps=1, seed=0, max_grad_norm=0.0, eval_strategy="steps", eval_steps=1,
    )
    tr = CLOTrainer(tiny_llama(tok), args, bins, processing_class=tok, eval_bins=held)
    tr.train()
    tr.save_final(out)
    if tr.is_world_process_zero():
        logs = [h for h in tr.state.log_history if "loss" in h]
        evals = [h for h in tr.state.log_history if "eval_loss" in h]
        run = {"logs": logs, "evals": evals, "world": tr.accelerator.num_processes, "ref": tr.ref_info}
        json.dump(run, open(out + "/run.json", "w"))
    """
)


def test_two_process_ddp_equals_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run_checked([*torchrun(2), str(script), str(ddp), "1"], tmp_path / "cache-ddp")
    run_checked([sys.executable, str(script), str(single), "2"], tmp_path / "cache-single")
    a, b = json.loads((ddp / "run.json").read_text()), json.loads((single / "run.json").read_text())
    assert (a["world"], b["world"]) == (2, 1)
    # 3 steps use 6 of the 8 micro-batches, plus the 3 held-out ones; the reference pass was split across the ranks
    assert a["ref"]["bins_needed"] == b["ref"]["bins_needed"] == 9
    assert a["ref"]["bins_computed"] == 5 and b["ref"]["bins_computed"] == 9
    for la, lb in zip(a["logs"], b["logs"], strict=True):
        for key in ("loss", "nll", "cl", "rewards/margins", "logps/chosen"):
            assert abs(la[key] - lb[key]) <= 1e-5 * max(1.0, abs(lb[key])), (key, la, lb)
    # held-out scores after every step: 3 bins shared 2 : 1 between the ranks, reduced, equal to one process's
    assert [e["step"] for e in a["evals"]] == [e["step"] for e in b["evals"]] == [1, 2, 3]
    for ea, eb in zip(a["evals"], b["evals"], strict=True):
        for key in ("eval_loss", "eval_nll", "eval_cl", "eval_rewards/margins", "eval_logps/chosen"):
            assert abs(ea[key] - eb[key]) <= 1e-5 * max(1.0, abs(eb[key])), (key, ea, eb)
    assert a["evals"][-1]["eval_rewards/margins"] != 0.0
    wa, wb = load_file(str(ddp / "model.safetensors")), load_file(str(single / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert a["logs"][0]["rewards/margins"] == 0.0 and b["logs"][0]["rewards/margins"] == 0.0
