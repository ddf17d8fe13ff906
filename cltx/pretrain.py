"""Continued causal-LM pre-training on target-language text (``cltx pretrain``).

After a vocabulary transfer (``cltx salt``) the SALT paper continues pre-training on target text;
its claim is a lower starting loss and faster convergence than FOCUS-style or random
initialisation. This module is that step: documents are tokenised, joined with the end-of-text
token and packed into fixed-length blocks (no padding, every token scored), and a
``transformers.Trainer`` runs causal-LM training for a budget of steps (tokens = steps × batch ×
block size × accumulation). The loss curve (one point per optimiser step, with the tokens seen) is
written to ``pretrain_report.json`` next to the safetensors model and its tokenizer, with the
held-out loss and bits per byte before and after training when an evaluation text is given.

Bits per byte (``sum of -log2 p(token)`` over a document / its UTF-8 bytes) is comparable across
tokenizers, which is what a vocabulary swap needs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from cltx._validate import TRAINING_NUMBERS, check_args, check_call, check_fields, checked_init
from cltx.checkpoints import resume_point
from cltx.errors import CltxError, bad_arg
from cltx.progress import Progress, ensure_progress, quiet_hf_bars, trainer_callback

logger = logging.getLogger(__name__)

REPORT_NAME = "pretrain_report.json"

#: What ``--train`` trains. ``embeddings``: the input embedding matrix and the LM head (one matrix when
#: tied), the rest frozen — the cheap first stage after a vocabulary swap, when only the embedding rows
#: are new (the body still expects the LLM's embedding geometry, which SALT's fits approximate).
TRAIN_MODES = ("full", "embeddings")


@checked_init
@dataclass
class PretrainConfig(TrainingArguments):
    """Options of continued pre-training: ``TrainingArguments`` plus the packing block size.

    cltx's defaults differ from the Trainer's where a short continued-training run needs it: a log
    point every step, no tqdm (progress goes through :mod:`cltx.progress`), no external loggers,
    no intermediate checkpoints unless ``save_steps`` asks for them.
    """

    block_size: int = field(default=256, metadata={"help": "Tokens per packed training block."})
    train: str = field(
        default="full",
        metadata={"help": "full: every weight; embeddings: the input embeddings and LM head only (TRAIN_MODES)."},
    )
    max_eval_bytes: int = field(default=200_000, metadata={"help": "Cap on the evaluation text (bytes)."})

    def __post_init__(self):
        # Types first: max_steps="3" was a TypeError from the comparison below or deep in the Trainer.
        check_fields(self, only=("block_size", "train", "max_eval_bytes", *TRAINING_NUMBERS))
        if self.block_size < 2:
            raise bad_arg("block_size", self.block_size, "use at least 2 tokens per block")
        if self.train not in TRAIN_MODES:
            raise bad_arg("train", self.train, f"use one of {', '.join(TRAIN_MODES)}")
        if self.max_steps is None or self.max_steps <= 0:
            raise bad_arg("max_steps", self.max_steps, "give a positive number of optimiser steps")
        super().__post_init__()


def make_config(
    out: str | Path,
    *,
    max_steps: int = 100,
    block_size: int = 256,
    batch_size: int = 4,
    lr: float = 5e-5,
    bf16: bool = False,
    seed: int = 0,
    grad_accum: int = 1,
    warmup_steps: int = 0,
    save_steps: int = 0,
    device: str | None = None,
    train: str = "full",
    **extra: Any,
) -> PretrainConfig:
    """Build a :class:`PretrainConfig` with cltx's defaults from plain keyword options."""
    # Options and types before the comparisons below (lr="1e-4" was a TypeError); PretrainConfig
    # turns numpy numbers into Python ones.
    check_call(make_config, locals(), extra, PretrainConfig, where="pretrain", exclude=("out", "extra"))
    if batch_size < 1:
        raise bad_arg("batch_size", batch_size, "give a positive batch size")
    if not lr > 0:
        raise bad_arg("lr", lr, "give a positive learning rate")
    if grad_accum < 1:
        raise bad_arg("grad_accum", grad_accum, "give a positive number of accumulation steps")
    if warmup_steps < 0:
        raise bad_arg("warmup_steps", warmup_steps, "give 0 or more warm-up steps")
    if save_steps < 0:
        raise bad_arg("save_steps", save_steps, "give 0 (no checkpoints) or a positive number of steps")
    if device not in (None, "cpu", "cuda"):
        raise bad_arg("device", device, "use 'cpu' or 'cuda' (or leave it out: the GPU when present)")
    kw: dict[str, Any] = dict(
        output_dir=str(out),
        max_steps=max_steps,
        block_size=block_size,
        train=train,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        bf16=bf16,
        seed=seed,
        data_seed=seed,
        gradient_accumulation_steps=grad_accum,
        warmup_steps=warmup_steps,
        logging_steps=1,
        logging_strategy="steps",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
    )
    kw.update(extra)
    return PretrainConfig(**kw)


# --------------------------------------------------------------------------------------- text


def read_documents(path: str | Path, *, text_fields: list[str] | None = None, argument: str = "text") -> list[str]:
    """Read training documents from a text or JSONL file.

    * ``.jsonl`` / ``.json`` (any case): one record a line, or (``.json``) one JSON array of
      records; a document is the record's ``text_fields`` (default: every string field whose name
      does not start with ``_``) joined by newlines.
    * anything else: plain text, one document per non-empty line (``text_fields`` is an error).

    Raises:
        CltxError: missing file, not UTF-8, malformed JSON (file and line named), or no text at all;
        ``argument`` names the option in the message (``text``, ``eval_text``).
    """
    p = Path(path)
    if not p.is_file():
        what = "a folder, not a file" if p.is_dir() else "no such file"
        raise bad_arg(argument, str(path), f"{what}; pass a .txt (one document a line) or .jsonl file")
    try:
        raw = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise bad_arg(argument, str(path), f"not UTF-8 text ({e.reason} at byte {e.start}); re-encode it") from e
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        if text_fields:
            raise bad_arg(
                "text_fields", text_fields, f"only a .jsonl/.json {argument} has fields; {p.name} is read as plain "
                "text (one document a line): drop --text-field or pass the JSONL file",
            )  # fmt: skip
        docs = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    else:
        if suffix == ".json" and raw.lstrip().startswith("["):
            try:
                records = list(enumerate(json.loads(raw), 1))
            except json.JSONDecodeError as e:
                raise CltxError(f"{argument}={str(p)!r}: line {e.lineno} is not valid JSON ({e.msg}); fix it") from e
        else:
            records = []
            for no, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    records.append((no, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise CltxError(
                        f"{argument}={str(p)!r}: line {no} is not valid JSON ({e.msg}); fix the line"
                    ) from e
        docs = []
        for no, rec in records:
            if not isinstance(rec, dict):
                raise CltxError(f"{argument}={str(p)!r}: record {no} is not a JSON object")
            keys = text_fields or [k for k, v in rec.items() if isinstance(v, str) and not k.startswith("_")]
            parts = [rec[k] for k in keys if isinstance(rec.get(k), str) and rec[k].strip()]
            if parts:
                docs.append("\n".join(parts))
    if not docs:
        hint = f" (no record has a text field among {text_fields})" if text_fields else ""
        raise bad_arg(argument, str(path), f"the file holds no text{hint}; give a non-empty text or JSONL file")
    return docs


def _doc_separator(tokenizer) -> list[int]:
    for tid in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tid is not None:
            return [int(tid)]
    return []


def pack_blocks(docs: list[str], tokenizer, block_size: int) -> list[list[int]]:
    """Tokenise documents, join them with the end-of-text token and cut blocks of ``block_size``.

    The tail shorter than a block is dropped, unless it is all there is (then one short block).
    """
    sep = _doc_separator(tokenizer)
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.extend(sep)
    if len(stream) < 2:
        raise CltxError("text: fewer than 2 tokens after tokenisation; fix: give more training text")
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    return blocks or [stream]


class _Blocks:
    """A map-style dataset of packed blocks (labels = inputs; the model shifts them)."""

    def __init__(self, blocks: list[list[int]]):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        ids = torch.tensor(self.blocks[i], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# --------------------------------------------------------------------------------------- eval


def bits_per_byte(model, tokenizer, docs: list[str], *, max_length: int = 512, batch_size: int = 8) -> dict:
    """Held-out loss of a causal LM on documents, in nats per token and bits per UTF-8 byte.

    Each document is scored on its own, conditioned on the tokenizer's start token (the token it prepends
    to a text — XGLM's is its eos ``</s>``, not its bos —, else its bos, else its eos), in windows of
    ``max_length`` tokens, so every token of the text is predicted exactly once.

    Returns:
        ``{"loss": nats/token, "bits_per_byte": float, "tokens": int, "bytes": int}``, plus ``unk_tokens``
        when the tokenizer has an unk token: text it cannot spell becomes one unk that stands for all its
        bytes, so a nonzero count makes bits per byte optimistic.
    """
    import torch

    from cltx.salt.tokenizer import llm_start_token

    start = llm_start_token(tokenizer)
    if start is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        start = tokenizer.cls_token_id
    seqs: list[list[int]] = []
    n_bytes = n_unk = 0
    unk = tokenizer.unk_token_id
    for doc, ids in zip(docs, tokenizer(docs, add_special_tokens=False)["input_ids"], strict=True):
        if not ids:
            continue
        n_bytes += len(doc.encode("utf-8"))
        n_unk += ids.count(unk) if unk is not None else 0
        ids = ([int(start)] if start is not None else []) + list(ids)
        step = max_length - 1
        for i in range(0, max(len(ids) - 1, 1), step):
            seqs.append(ids[i : i + max_length])
    if not seqs or n_bytes == 0:
        raise CltxError("eval_text: no tokens to score; fix: give a non-empty evaluation text")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll = 0.0
    total_tok = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs.sort(key=len)
    with torch.no_grad():
        for b in range(0, len(seqs), batch_size):
            chunk = seqs[b : b + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:]
            valid = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            total_nll += float(nll[valid].sum())
            total_tok += int(valid.sum())
    if was_training:
        model.train()
    total_tok = max(total_tok, 1)
    return {
        "loss": total_nll / total_tok,
        "bits_per_byte": total_nll / math.log(2) / n_bytes,
        "tokens": total_tok,
        "bytes": n_bytes,
        **({"unk_tokens": n_unk} if unk is not None else {}),
    }


def _cap_docs(docs: list[str], max_bytes: int) -> list[str]:
    kept, used = [], 0
    for d in docs:
        n = len(d.encode("utf-8"))
        if kept and used + n > max_bytes:
            break
        kept.append(d)
        used += n
    return kept


# --------------------------------------------------------------------------------------- train


def set_trainable(model, mode: str) -> dict[str, Any]:
    """Freeze what ``mode`` (:data:`TRAIN_MODES`) does not train; return the trained parameters' names and count."""
    if mode not in TRAIN_MODES:
        raise bad_arg("train", mode, f"use one of {', '.join(TRAIN_MODES)}")
    params = dict(model.named_parameters())
    if mode == "full":
        for p in params.values():
            p.requires_grad_(True)
        return {"names": ["all"], "parameters": sum(p.numel() for p in params.values())}
    keep = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = getattr(module, "weight", None)
        if w is not None and all(w is not k for k in keep):
            keep.append(w)
    if not keep:
        raise bad_arg("train", mode, f"{type(model).__name__} exposes no embedding matrix to train; use --train full")
    for p in params.values():
        p.requires_grad_(any(p is k for k in keep))
    names = [n for n, p in params.items() if p.requires_grad]
    return {"names": names, "parameters": sum(params[n].numel() for n in names)}


@quiet_hf_bars()
def pretrain(
    model: str,
    text: str | Path,
    out: str | Path,
    *,
    config: PretrainConfig | None = None,
    resume: bool = False,
    eval_text: str | Path | None = None,
    text_fields: list[str] | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Continue causal-LM training of ``model`` on ``text`` and save the result to ``out``.

    Args:
        model: an embedded name (``smollm2-135m``), a model folder (e.g. a ``cltx salt`` output)
            or a hub id.
        text: training text (``.txt``: one document a line; ``.jsonl``: see :func:`read_documents`).
        out: output folder (safetensors model, tokenizer, ``pretrain_report.json``).
        config: a full :class:`PretrainConfig`; otherwise ``options`` go to :func:`make_config`
            (``max_steps``, ``block_size``, ``batch_size``, ``lr``, ``bf16``, ``seed``,
            ``grad_accum``, ``warmup_steps``, ``save_steps``, ``device``, ``train``: ``full`` or
            ``embeddings``, see :data:`TRAIN_MODES`).
        resume: continue from the last ``checkpoint-N`` folder in ``out`` (written with ``save_steps``).
            With none there it starts from step 0 when ``save_steps`` is set (a run stopped before
            its first checkpoint) and is an error when it is not (nothing would ever be resumed).
        eval_text: held-out text scored before and after training (loss and bits per byte).
        text_fields: JSONL fields that form a document (default: all non-underscore strings).
        progress: a :class:`cltx.progress.Progress` sink (the CLI's rich bars).

    Returns:
        The report dict (also written to ``out/pretrain_report.json``): ``loss_curve`` (per step:
        ``step``, ``tokens``, ``loss``, ``learning_rate``), ``eval_before``/``eval_after``,
        ``tokens_trained``, ``wall_s``, ``tokens_per_s`` and the options used.
    """
    import torch
    from transformers import PrinterCallback, Trainer, default_data_collator, set_seed

    from cltx.models import load_causal_lm

    prog = ensure_progress(progress)
    check_args(
        pretrain,
        dict(text=text, out=out, config=config, resume=resume, eval_text=eval_text, text_fields=text_fields),
        only=("text", "out", "config", "resume", "eval_text", "text_fields"),
    )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise bad_arg("out", str(out), "is a file; give a folder for the model, tokenizer and report")
    cfg = config or make_config(out, **options)
    # Checked before the (slow) model load: --resume with neither a checkpoint to read nor
    # --save-steps to write one would silently train from step 0 again.
    resume_from = None
    if resume:
        resume_from = resume_point(cfg, model_out=out, progress=prog, who="pretrain")
    docs = read_documents(text, text_fields=text_fields)
    eval_docs = _cap_docs(read_documents(eval_text, argument="eval_text"), cfg.max_eval_bytes) if eval_text else None

    set_seed(cfg.seed)
    t0 = time.perf_counter()
    lm, tok = load_causal_lm(model, dtype=torch.float32)
    if tok.pad_token_id is None and tok.eos_token_id is None:
        raise bad_arg("model", model, "its tokenizer has neither a pad nor an end-of-text token; add one")
    blocks = pack_blocks(docs, tok, cfg.block_size)
    ds = _Blocks(blocks)
    tokens_per_step = len(blocks[0]) * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    prog.message(
        f"pretrain: {len(docs)} documents → {len(blocks)} blocks of {len(blocks[0])} tokens; "
        f"{cfg.max_steps} steps × {tokens_per_step} tokens = {cfg.max_steps * tokens_per_step} tokens"
    )
    lm.config.use_cache = False
    trainable = set_trainable(lm, cfg.train)
    if cfg.train != "full":
        prog.message(f"pretrain: training {trainable['names']} only ({trainable['parameters']:,} parameters)")

    device = "cpu" if cfg.use_cpu or not torch.cuda.is_available() else "cuda"
    eval_before = None
    if eval_docs:
        lm.to(device)
        eval_before = bits_per_byte(lm, tok, eval_docs, max_length=max(cfg.block_size, 512))

    trainer = Trainer(
        model=lm,
        args=cfg,
        train_dataset=ds,
        data_collator=default_data_collator,
        processing_class=tok,
        callbacks=[trainer_callback(prog, "pretrain")],
    )
    trainer.remove_callback(PrinterCallback)  # progress and logs go through cltx.progress, not print()
    t_train = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t_train

    curve = []
    for rec in trainer.state.log_history:
        if "loss" in rec and "step" in rec:
            curve.append(
                {
                    "step": int(rec["step"]),
                    "tokens": int(rec["step"]) * tokens_per_step,
                    "loss": float(rec["loss"]),
                    "learning_rate": float(rec.get("learning_rate", cfg.learning_rate)),
                }
            )
    eval_after = (
        bits_per_byte(trainer.model, tok, eval_docs, max_length=max(cfg.block_size, 512)) if eval_docs else None
    )

    lm = trainer.model
    lm.config.use_cache = True
    trainer.save_model(str(out))  # safetensors weights + tokenizer (processing_class)
    steps_done = int(trainer.state.global_step)
    trained_here = steps_done - (int(Path(resume_from).name.split("-", 1)[1]) if resume_from else 0)
    report = {
        "model": model,
        "text": str(text),
        "eval_text": str(eval_text) if eval_text else None,
        "documents": len(docs),
        "blocks": len(blocks),
        "block_size": len(blocks[0]),
        "steps": steps_done,
        "tokens_per_step": tokens_per_step,
        "tokens_trained": steps_done * tokens_per_step,
        "train_loss": float(result.training_loss),
        "loss_curve": curve,
        "eval_before": eval_before,
        "eval_after": eval_after,
        "device": device,
        "seed": cfg.seed,
        "lr": cfg.learning_rate,
        "batch_size": cfg.per_device_train_batch_size,
        "grad_accum": cfg.gradient_accumulation_steps,
        "bf16": bool(cfg.bf16),
        "train": cfg.train,
        "trainable_parameters": trainable["parameters"],
        "resumed_from": resume_from,
        "train_s": train_s,
        "wall_s": time.perf_counter() - t0,
        "tokens_per_s": trained_here * tokens_per_step / train_s if train_s > 0 else None,
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report
