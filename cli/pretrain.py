"""``cltx pretrain``: continued causal-LM training on target-language text."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cltx.cli._ui import RichProgress, out, setup_logging, user_errors


class TrainMode(str, Enum):
    full = "full"
    embeddings = "embeddings"


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    @user_errors(on_interrupt="rerun with --resume to continue from the last checkpoint (--save-steps)")
    def pretrain_cmd(
        model: Annotated[
            str, typer.Option("--model", help="Embedded name, model folder (e.g. a `cltx salt` output) or hub id.")
        ],
        text: Annotated[Path, typer.Option("--text", help="Training text: .txt (one document a line) or .jsonl.")],
        out_dir: Annotated[Path, typer.Option("--out", help="Output folder (safetensors model + tokenizer + report).")],
        max_steps: Annotated[int, typer.Option("--max-steps", help="Optimiser steps.")] = 100,
        block_size: Annotated[int, typer.Option("--block-size", help="Tokens per packed block.")] = 256,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Blocks per device per step.")] = 4,
        grad_accum: Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")] = 1,
        lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-5,
        warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warm-up steps.")] = 0,
        bf16: Annotated[bool, typer.Option("--bf16", help="bf16 mixed precision (GPU).")] = False,
        save_steps: Annotated[int, typer.Option("--save-steps", help="Checkpoint every N steps (0: none).")] = 0,
        resume: Annotated[
            bool,
            typer.Option("--resume", help="Continue from the last checkpoint in --out (written with --save-steps)."),
        ] = False,
        seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
        train: Annotated[
            TrainMode,
            typer.Option(
                "--train",
                help="full: every weight; embeddings: only the input embeddings and the LM head (the rest frozen).",
            ),
        ] = TrainMode.full,
        eval_text: Annotated[
            Optional[Path], typer.Option("--eval-text", help="Held-out text: loss and bits/byte before and after.")
        ] = None,
        text_field: Annotated[
            Optional[list[str]], typer.Option("--text-field", help="JSONL field(s) forming a document (repeatable).")
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    ) -> None:
        """Continue causal-LM training of MODEL on TEXT (packed blocks, transformers.Trainer), save to OUT."""
        setup_logging(verbose)
        _quiet_transformers(verbose)
        from rich.table import Table

        from cltx.pretrain import pretrain

        with RichProgress() as prog:
            rep = pretrain(
                model,
                text,
                out_dir,
                resume=resume,
                eval_text=eval_text,
                text_fields=text_field or None,
                progress=prog,
                max_steps=max_steps,
                block_size=block_size,
                batch_size=batch_size,
                grad_accum=grad_accum,
                lr=lr,
                warmup_steps=warmup_steps,
                bf16=bf16,
                save_steps=save_steps,
                seed=seed,
                train=train.value,
            )
        table = Table("metric", "value", title=f"cltx pretrain → {out_dir}")
        curve = rep["loss_curve"]
        table.add_row("steps", str(rep["steps"]))
        if rep["train"] != "full":
            table.add_row("trained", f"{rep['train']} ({rep['trainable_parameters']:,} parameters)")
        table.add_row("tokens trained", f"{rep['tokens_trained']:,}")
        if curve:
            table.add_row("loss first → last step", f"{curve[0]['loss']:.4f} → {curve[-1]['loss']:.4f}")
        for key in ("eval_before", "eval_after"):
            if rep[key]:
                table.add_row(f"{key} bits/byte", f"{rep[key]['bits_per_byte']:.4f} (loss {rep[key]['loss']:.4f})")
        if rep["tokens_per_s"]:
            table.add_row("tokens/s", f"{rep['tokens_per_s']:.0f} ({rep['device']})")
        table.add_row("wall time", f"{rep['wall_s']:.1f} s")
        out.print(table)


def _quiet_transformers(verbose: bool) -> None:
    """transformers' own tqdm bars (weight loading, shard writing) would interleave with rich's."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not verbose:
        hf_logging.set_verbosity_error()
