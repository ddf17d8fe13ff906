"""``train_clo``: the whole ``cltx clo`` run as one function (the CLI is a thin layer over it)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cltx._validate import check_call
from cltx.clo.data import (
    DataReport,
    DataSpec,
    Example,
    PromptFormatter,
    build_examples,
    describe_skips,
    make_bins,
    read_records_with_lines,
    tokenize_examples,
)
from cltx.errors import CltxError, bad_arg
from cltx.progress import Progress, ensure_progress, quiet_hf_bars, trainer_callback

logger = logging.getLogger(__name__)

REPORT_NAME = "clo_report.json"


def checkpointing_field() -> str:
    """The TrainingArguments flag for activation checkpointing in the installed transformers."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def model_context(model) -> int | None:
    """The model's context length (``max_position_embeddings``), when its config states one."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def load_policy(name: str, *, tokenizer=None):
    """Load a causal LM (fp32 master weights) and its tokenizer (``tokenizer``: one already loaded from
    ``name``); refuse a checkpoint whose LM head is missing (transformers would fill it with random weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from cltx.models import load_tokenizer, resolve_model

    path = resolve_model(name)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise bad_arg(
            "model", name, f"cannot be loaded as a causal LM ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from e
    head = model.get_output_embeddings()
    head_names = {n for n, m in model.named_modules() if m is head}
    missing = [k for k in info.get("missing_keys", []) if k.rsplit(".", 1)[0] in head_names]
    if missing:
        raise bad_arg(
            "model",
            name,
            f"the checkpoint has no LM head ({', '.join(missing)} missing); fix: pass a causal LM "
            "(saved from *ForCausalLM), not a bare model body",
        )
    tok = tokenizer if tokenizer is not None else load_tokenizer(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _none_usable(report: DataReport, argument: str = "data") -> CltxError:
    if set(report.skipped) == {"prompt_too_long"}:
        fix = "raise --max-length (prompt + response tokens), or shorten the prompts"
    else:
        fix = "pass cltx mt output or a bilingual JSONL, and name the fields with --prompt-fields/--response-field"
    return CltxError(
        f"{argument}: none of the {report.records} records is usable ({describe_skips(report)}); fix: {fix}"
    )


def _split(records: list[dict], lines: list[int] | None, split: float, seed: int):
    """``(train records, their lines, held-out records, their lines)``: ``split`` records (a fraction, or a
    count) drawn by a seeded shuffle, both parts in file order; lines default to record numbers."""
    import random

    n = len(records)
    k = round(split * n) if split < 1 else int(split)
    if not 1 <= k < n:
        raise bad_arg(
            "eval_split", split, f"holds out {k} of the {n} records; fix: leave at least one record on each side"
        )
    lines = list(lines) if lines is not None else list(range(1, n + 1))
    held = set(random.Random(seed).sample(range(n), k))
    train = [i for i in range(n) if i not in held]
    out = sorted(held)
    return [records[i] for i in train], [lines[i] for i in train], [records[i] for i in out], [lines[i] for i in out]


def _read_data(data, argument: str) -> tuple[list[dict], list[int] | None]:
    """Records (and their file lines) from a JSONL path or a list of dicts; bad input names ``argument``."""
    if isinstance(data, (str, Path)):
        return read_records_with_lines(data, argument=argument)
    if isinstance(data, dict) or not isinstance(data, Iterable):
        raise bad_arg(argument, data, "give a JSONL path or a list of records (dicts)")
    records = list(data)
    odd = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if odd is not None:
        raise bad_arg(f"{argument}[{odd}]", records[odd], "each record must be a dict (a JSON object)")
    return records, None


def prepare_bins(
    records: list[dict],
    tokenizer,
    *,
    method: str = "clo",
    spec: DataSpec | None = None,
    max_length: int = 1024,
    records_per_bin: int = 2,
    seed: int = 0,
    pad_to_multiple_of: int = 8,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    lines: list[int] | None = None,
    examples: tuple[list[Example], DataReport] | None = None,
    argument: str = "data",
):
    """Records → micro-batches; returns ``(bins, data_report)``. Raises when nothing is usable.
    ``lines``: each record's line in its file (for the skip report; default: record numbers).
    ``examples``: ``build_examples(records, spec, lines=lines)`` when the caller has it already.
    ``argument``: the option the records came from, named in that error."""
    examples, report = examples if examples is not None else build_examples(records, spec, lines=lines)
    fmt = PromptFormatter(tokenizer, use_chat_template=use_chat_template, system_prompt=system_prompt)
    tokenized = tokenize_examples(examples, fmt, max_length, report)
    if not tokenized:
        raise _none_usable(report, argument)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bins = make_bins(tokenized, records_per_bin, method, pad, seed=seed, pad_multiple=pad_to_multiple_of)
    return bins, report


@quiet_hf_bars()
def train_clo(
    model: Any,
    data: str | Path | list[dict],
    out: str | Path,
    *,
    tokenizer=None,
    spec: DataSpec | None = None,
    method: str = "clo",
    lam: float = 0.5,
    beta: float = 0.1,
    train_mode: str = "attention",
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 2,
    grad_accum: int = 1,
    lr: float | None = None,
    max_length: int = 1024,
    bf16: bool = False,
    resume: bool = False,
    seed: int = 0,
    save_steps: int = 0,
    logging_steps: int = 10,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    eval_data: str | Path | list[dict] | None = None,
    eval_split: float = 0.0,
    eval_steps: int = 0,
    progress: Progress | None = None,
    **config: Any,
) -> dict:
    """Train with CLO (or SFT) and save the model (safetensors + tokenizer) in ``out``.

    Args:
        model: embedded name, folder, hub id, or a loaded ``*ForCausalLM`` (then pass ``tokenizer``).
        data: ``cltx mt`` output / bilingual JSONL path, or the records themselves.
        out: output folder: the final model, ``checkpoints/``, and ``clo_report.json``.
        batch_size: records per micro-batch per device (a CLO record = 2 pairs = 4 sequences).
        resume: continue from the last checkpoint in ``out/checkpoints`` (written with ``save_steps``).
            With none there it starts from step 0 when ``save_steps`` is set (a run stopped before its
            first checkpoint) and is an error when it is not (nothing would ever be resumed). Another
            run's checkpoint (model, data, options) is refused before the model loads or, for the
            data, before the reference pass.
        eval_data: held-out records (same layout as ``data``), scored during training with the same
            loss and metrics (``eval_loss``, ``eval_nll``, ``eval_rewards/accuracies`` …): every
            ``eval_steps`` optimizer steps, before the first step and at the end (``eval_steps`` 0: before
            and after training only).
        eval_split: instead of ``eval_data``, hold out records of ``data``: a fraction (0 < x < 1) or a
            number of records (≥ 1), drawn by a ``seed``-ed shuffle; a chat record's exchanges stay together.
        Remaining keyword arguments go to :class:`cltx.clo.trainer.CLOConfig`.

    Returns:
        The run report (also written to ``out/clo_report.json``). ``tokens``: the whole run's trained
        (non-padding) tokens, a resumed run's included; ``tokens_this_session`` and
        ``tokens_per_second``: this call's part.
    """
    import torch

    from cltx.checkpoints import last_checkpoint, resume_point
    from cltx.clo.trainer import CLOConfig, CLOTrainer, check_resume_options, throughput

    # Options and types before the comparisons below (save_steps="10" was a TypeError); CLOConfig
    # checks its fields again (a direct CLOConfig) and turns numpy numbers into Python ones.
    check_call(
        train_clo, locals(), config, CLOConfig, where="train_clo",
        exclude=("model", "data", "out", "config", "tokenizer", "progress", "eval_data"),
        also=("gradient_checkpointing",),
    )  # fmt: skip
    progress = ensure_progress(progress)
    if save_steps < 0:
        raise bad_arg("save_steps", save_steps, "must be ≥ 0 (0: no checkpoints)")
    if eval_steps < 0:
        raise bad_arg("eval_steps", eval_steps, "must be ≥ 0 (0: evaluate at the end only)")
    if (
        isinstance(eval_split, bool)
        or not isinstance(eval_split, (int, float))
        or not 0 <= eval_split < float("inf")  # nan and inf too (int(inf) raised OverflowError below)
    ):
        raise bad_arg("eval_split", eval_split, "give a fraction 0 < x < 1 or a number of records ≥ 1 (0: none)")
    if eval_split and eval_data is not None:
        raise bad_arg("eval_split", eval_split, "held-out records come from --eval-data or --eval-split, not both")
    if eval_split >= 1 and eval_split != int(eval_split):
        raise bad_arg("eval_split", eval_split, "a number of records ≥ 1 must be whole (or give a fraction < 1)")
    held_out = eval_data is not None or eval_split > 0
    held_from = "eval_split" if eval_split else "eval_data"
    if eval_steps and not held_out:
        raise bad_arg("eval_steps", eval_steps, "needs held-out records: pass --eval-data or --eval-split")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise bad_arg("out", str(out), "is a file; pass a folder")
    if lr is None:
        lr = 1e-5 if train_mode == "full" else (1e-4 if train_mode == "lora" else 2e-5)
    ckpt_dir = out / "checkpoints"
    if config.pop("gradient_checkpointing", False):
        config[checkpointing_field()] = True
    # Options, data and checkpoints are checked before the (slow) model load.
    args = CLOConfig(
        output_dir=str(ckpt_dir),
        method=method,
        lam=lam,
        beta=beta,
        train_mode=train_mode,
        max_length=max_length,
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        bf16=bf16,
        seed=seed,
        data_seed=seed,
        logging_steps=logging_steps,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        use_cpu=not torch.cuda.is_available(),
        **({"eval_strategy": "steps", "eval_steps": eval_steps} if eval_steps else {}),
        eval_on_start=held_out,  # the starting weights: every held-out reward exactly 0
        **config,
    )
    records, lines = _read_data(data, "data")
    eval_records = eval_lines = None
    if eval_split:
        records, lines, eval_records, eval_lines = _split(records, lines, eval_split, seed)
    # Records in a layout that gives no example are refused here, not after a 7B model has loaded;
    # the length checks need the tokenizer and come after the load (prepare_bins).
    examples = build_examples(records, spec, lines=lines)
    if not examples[0]:
        raise _none_usable(examples[1])
    eval_examples = None
    if held_out:
        if eval_records is None:
            eval_records, eval_lines = _read_data(eval_data, "eval_data")
        eval_examples = build_examples(eval_records, spec, lines=eval_lines)
        if not eval_examples[0]:
            raise _none_usable(eval_examples[1], held_from)
    old = last_checkpoint(ckpt_dir)
    resume_from = None
    if resume:
        resume_from = resume_point(args, model_out=out, progress=progress, who="resume")
        if resume_from is not None:
            progress.message(f"resume: continuing from {resume_from}")
    elif old is not None:
        # A fresh run would mix its checkpoints with the old run's; a later --resume would then pick
        # the old run's last one (and, past max_steps, silently return the old model).
        raise bad_arg(
            "out",
            str(out),
            f"holds checkpoints of an earlier run ({old}); fix: add --resume to continue that run, "
            f"or pass a new --out (or delete {ckpt_dir})",
        )
    if resume_from is not None:
        # Options and the model's files are compared before the (slow) load and the reference pass;
        # the trainer compares the loaded weights and the micro-batches before its reference pass.
        from cltx.models import resolve_model

        if isinstance(model, (str, Path)):
            source = resolve_model(str(model))
        else:
            source = getattr(getattr(model, "config", None), "_name_or_path", None)
        check_resume_options(resume_from, args, model_source=source)
        args.resume_from_checkpoint = resume_from
    if isinstance(model, (str, Path)):
        model_name = str(model)
        progress.message(f"loading {model_name}")
        model, tok = load_policy(model_name)
        tokenizer = tokenizer or tok
    else:
        model_name = getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        if tokenizer is None:
            raise bad_arg("tokenizer", None, "pass the tokenizer with an already loaded model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = model_context(model)
    if context and max_length > context:
        progress.message(f"max_length {max_length} > the model's context {context}: using {context}")
        max_length = args.max_length = context
    # the held-out micro-batches are built exactly like the training ones
    bin_options = dict(
        method=method,
        spec=spec,
        max_length=max_length,
        records_per_bin=batch_size,
        seed=seed,
        pad_to_multiple_of=config.get("pad_to_multiple_of", 8),
        use_chat_template=use_chat_template,
        system_prompt=system_prompt,
    )
    bins, data_report = prepare_bins(records, tokenizer, lines=lines, examples=examples, **bin_options)
    exchanges = f" ({data_report.examples} examples)" if data_report.examples != data_report.used else ""
    if data_report.skipped:
        progress.message(
            f"data: {data_report.used}/{data_report.records} records used{exchanges}; {describe_skips(data_report)}"
        )
    elif exchanges:
        progress.message(f"data: {data_report.used} records give {data_report.examples} examples (chat exchanges)")
    if data_report.exchanges_skipped:
        progress.message(f"data: chat exchanges skipped: {dict(data_report.exchanges_skipped)}")
    if data_report.histories_trimmed:
        progress.message(f"data: {data_report.histories_trimmed} chat histories lost their oldest turns to max_length")
    if data_report.truncated_responses:
        progress.message(f"data: {data_report.truncated_responses} examples had responses cut to max_length")
    eval_bins, eval_report = [], None
    if eval_examples is not None:
        eval_bins, eval_report = prepare_bins(
            eval_records, tokenizer, examples=eval_examples, argument=held_from, **bin_options
        )
        every = f"every {eval_steps} steps and " if eval_steps else ""
        progress.message(
            f"eval_data: {eval_report.examples} held-out examples from {eval_report.used}/{eval_report.records} "
            f"records, scored at the start, {every}at the end"
        )
    trainer = CLOTrainer(
        model,
        args,
        bins,
        processing_class=tokenizer,
        progress=progress,
        callbacks=[trainer_callback(progress)],
        eval_bins=eval_bins,
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - t0
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if eval_bins and (not evals or evals[-1].get("step") != trainer.state.global_step):
        trainer.evaluate()  # the final weights are always scored
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    trainer.save_final(out)
    tokens_here = trainer.session_tokens()  # collective: every rank
    tokens = trainer.run_tokens(tokens_here)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    report = {
        "model": model_name,
        "data": str(data) if isinstance(data, (str, Path)) else f"<{len(records)} records>",
        "out": str(out),
        "method": method,
        "train": train_mode,
        "lam": lam,
        "beta": beta,
        "data_report": data_report.as_dict(),
        "eval_data": str(eval_data) if isinstance(eval_data, (str, Path)) else None,
        "eval_split": eval_split,
        "eval_data_report": eval_report.as_dict() if eval_report is not None else None,
        "eval": evals,
        "micro_batches": len(bins),
        "reference": trainer.ref_info,
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 3),
        "tokens": tokens,
        "tokens_this_session": tokens_here,
        "tokens_per_second": round(throughput(tokens_here, result.metrics["train_runtime"]), 1),
        "train_loss": result.metrics.get("train_loss"),
        "first_log": logs[0] if logs else None,
        "last_log": logs[-1] if logs else None,
        "log_history": trainer.state.log_history,
        "resumed_from": resume_from,
    }
    if trainer.args.should_save:
        (out / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report
