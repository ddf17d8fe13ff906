"""``cltx clo``: Cross-Lingual Optimization (or the SFT baseline) on translated data."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cltx.cli._ui import RichProgress, out, setup_logging, user_errors


class TrainMode(str, Enum):
    attention = "attention"
    full = "full"
    lora = "lora"


class Method(str, Enum):
    clo = "clo"
    sft = "sft"


def _fmt(v, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


class ChatTurns(str, Enum):
    all = "all"
    first = "first"
    last = "last"


CHAT_TURNS_HELP = (
    "Chat records (messages/conversations): train on all user→assistant exchanges (each with the "
    "conversation before it), or only the first or last."
)


def data_spec(prompt_fields, response_field, en_key, tgt_key, en_suffix, tgt_suffix, chat_turns="all"):
    """The :class:`cltx.clo.data.DataSpec` of the data-layout options shared by ``clo`` and ``eval``."""
    from cltx.clo.data import DataSpec

    return DataSpec(
        prompt_fields=prompt_fields,
        response_field=response_field,
        en_key=en_key or None,
        tgt_key=tgt_key or None,
        en_suffix=en_suffix,
        tgt_suffix=tgt_suffix,
        chat_turns=getattr(chat_turns, "value", chat_turns),
    )


def register(app: typer.Typer) -> None:
    @app.command("clo")
    @user_errors(on_interrupt="rerun with --resume to continue from the last checkpoint (--save-steps)")
    def clo_cmd(
        data: Annotated[
            Path,
            typer.Option(
                "--data",
                help="`cltx mt` output (English in `_source`) or a bilingual JSONL; chat records "
                "(`messages`/`conversations`) give one example per user→assistant exchange (--chat-turns).",
            ),
        ],
        out_dir: Annotated[Path, typer.Option("--out", help="Output folder: model + tokenizer + report.")],
        model: Annotated[str, typer.Option("--model", help="Embedded name, model folder or hub id.")] = "smollm2-135m",
        lam: Annotated[float, typer.Option("--lam", help="λ: weight of the target-language NLL term.")] = 0.5,
        beta: Annotated[float, typer.Option("--beta", help="β of the contrastive (DPO-style) term.")] = 0.1,
        train: Annotated[
            TrainMode, typer.Option("--train", help="attention: q/k/v/o only (the paper's); full; lora.")
        ] = TrainMode.attention,
        method: Annotated[Method, typer.Option("--method", help="clo, or sft (the baseline) on the same data.")] = (
            Method.clo
        ),
        epochs: Annotated[float, typer.Option("--epochs", help="Passes over the data (when --max-steps is 0).")] = 1.0,
        max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer steps (0: use --epochs).")] = 0,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size",
                help="Examples per device per micro-batch (an example = 2 pairs; a chat record: one per exchange).",
            ),
        ] = 2,
        grad_accum: Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")] = 1,
        lr: Annotated[
            Optional[float], typer.Option("--lr", help="Learning rate (default 2e-5 attention, 1e-5 full, 1e-4 lora).")
        ] = None,
        max_length: Annotated[int, typer.Option("--max-length", help="Prompt + response tokens.")] = 1024,
        bf16: Annotated[bool, typer.Option("--bf16", help="bf16 mixed precision (GPU).")] = False,
        resume: Annotated[
            bool,
            typer.Option(
                "--resume", help="Continue from the last checkpoint in --out (written with --save-steps; same run)."
            ),
        ] = False,
        seed: Annotated[int, typer.Option("--seed", help="Random seed (also fixes the micro-batches).")] = 0,
        save_steps: Annotated[int, typer.Option("--save-steps", help="Checkpoint every N steps (0: none).")] = 0,
        eval_data: Annotated[
            Optional[Path],
            typer.Option(
                "--eval-data",
                help="Held-out records (same layout as --data): loss, NLL and rewards on them during training.",
            ),
        ] = None,
        eval_split: Annotated[
            float,
            typer.Option(
                "--eval-split",
                help="Or hold out records of --data: a fraction (0.05) or a count (200), seeded by --seed.",
            ),
        ] = 0.0,
        eval_steps: Annotated[
            int, typer.Option("--eval-steps", help="Score --eval-data every N steps (0: at the start and end only).")
        ] = 0,
        logging_steps: Annotated[int, typer.Option("--logging-steps", help="Log metrics every N steps.")] = 5,
        warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warm-up steps.")] = 0,
        gradient_checkpointing: Annotated[
            bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward (less memory).")
        ] = False,
        average_logps: Annotated[
            bool, typer.Option("--average-logps", help="Mean instead of sum of response log-probs (CL term).")
        ] = False,
        memory_budget_gib: Annotated[
            Optional[float], typer.Option("--memory-budget-gib", help="Working memory of the fused loss kernel.")
        ] = None,
        lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank (--train lora).")] = 16,
        fsdp: Annotated[
            bool,
            typer.Option(
                "--fsdp",
                help="Shard the model over the processes with FSDP2 (GPUs; launch with torchrun or accelerate "
                "launch). Without it, several processes train with DDP.",
            ),
        ] = False,
        fsdp_config: Annotated[
            Optional[Path],
            typer.Option(
                "--fsdp-config",
                help='JSON file of transformers\' fsdp_config keys for --fsdp, e.g. {"cpu_offload": true}.',
            ),
        ] = None,
        prompt_fields: Annotated[
            Optional[str],
            typer.Option("--prompt-fields", help="Comma-separated prompt fields (default: auto)."),
        ] = None,
        response_field: Annotated[
            Optional[str], typer.Option("--response-field", help="Response field (default: auto, e.g. output).")
        ] = None,
        en_key: Annotated[
            str, typer.Option("--en-key", help="Record key holding the English fields (cltx mt: _source).")
        ] = "_source",
        tgt_key: Annotated[
            Optional[str], typer.Option("--tgt-key", help="Record key holding the target fields (default: top level).")
        ] = None,
        en_suffix: Annotated[
            Optional[str], typer.Option("--en-suffix", help="Or: English field suffix, e.g. _en (with --tgt-suffix).")
        ] = None,
        tgt_suffix: Annotated[Optional[str], typer.Option("--tgt-suffix", help="Target suffix, e.g. _pt.")] = None,
        chat_turns: Annotated[ChatTurns, typer.Option("--chat-turns", help=CHAT_TURNS_HELP)] = ChatTurns.all,
        chat_template: Annotated[
            Optional[bool],
            typer.Option("--chat-template/--no-chat-template", help="Use the model's chat template (default: if any)."),
        ] = None,
        system_prompt: Annotated[
            Optional[str], typer.Option("--system-prompt", help="System message for the chat template.")
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    ) -> None:
        """Train MODEL with Cross-Lingual Optimization on DATA (both directions of every record in one
        batch, reference log-probs computed once and cached) and save it to OUT."""
        setup_logging(verbose)
        from rich.table import Table
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # rich draws the progress

        from cltx.clo.api import train_clo

        if max_steps < 0:
            from cltx.errors import bad_arg

            raise bad_arg("max_steps", max_steps, "must be ≥ 0 (0: train for --epochs)")
        spec = data_spec(prompt_fields, response_field, en_key, tgt_key, en_suffix, tgt_suffix, chat_turns)
        with RichProgress() as prog:
            rep = train_clo(
                model,
                data,
                out_dir,
                spec=spec,
                method=method.value,
                lam=lam,
                beta=beta,
                train_mode=train.value,
                epochs=epochs,
                max_steps=max_steps if max_steps > 0 else -1,
                batch_size=batch_size,
                grad_accum=grad_accum,
                lr=lr,
                max_length=max_length,
                bf16=bf16,
                resume=resume,
                seed=seed,
                save_steps=save_steps,
                logging_steps=logging_steps,
                use_chat_template=chat_template,
                system_prompt=system_prompt,
                eval_data=eval_data,
                eval_split=eval_split,
                eval_steps=eval_steps,
                progress=prog,
                warmup_steps=warmup_steps,
                gradient_checkpointing=gradient_checkpointing,
                average_logps=average_logps,
                memory_budget_gib=memory_budget_gib,
                lora_r=lora_r,
                fsdp=fsdp,
                fsdp_config=str(fsdp_config) if fsdp_config is not None else None,
            )
        if os.environ.get("RANK", "0") != "0":  # torchrun / accelerate launch: rank 0 reports
            return
        dr = rep["data_report"]
        table = Table("", "value", title=f"cltx clo ({rep['method']}, train {rep['train']}) → {out_dir}")
        table.add_row("records used", f"{dr['used']} of {dr['records']}")
        if dr.get("examples", dr["used"]) != dr["used"]:
            table.add_row("examples (chat exchanges)", str(dr["examples"]))
        for reason, n in dr["skipped"].items():
            table.add_row(f"skipped: {reason}", f"{n} (first lines {dr['skipped_first_lines'].get(reason)})")
        if dr["truncated_responses"]:
            table.add_row("responses cut to --max-length", str(dr["truncated_responses"]))
        if dr.get("system_turns_ignored"):
            table.add_row("chat system turns ignored", str(dr["system_turns_ignored"]))
        for reason, n in (dr.get("exchanges_skipped") or {}).items():
            table.add_row(f"chat exchanges skipped: {reason}", str(n))
        if dr.get("histories_trimmed"):
            table.add_row("chat histories trimmed to --max-length", str(dr["histories_trimmed"]))
        ref = rep["reference"]
        if ref:
            how = f"computed ({ref['bins_computed']} micro-batches, {ref['seconds']}s)"
            how = "cache hit" if ref["cache_hit"] else how
            table.add_row("reference log-probs", how)
        table.add_row("steps", str(rep["steps"]))
        first, last = rep["first_log"] or {}, rep["last_log"] or {}
        for key in ("loss", "nll", "cl", "rewards/margins", "rewards/accuracies"):
            if key in first or key in last:
                table.add_row(f"{key} first → last log", f"{_fmt(first.get(key))} → {_fmt(last.get(key))}")
        evals = rep.get("eval") or []
        if evals:
            er = rep["eval_data_report"]
            table.add_row("held-out examples", f"{er['examples']} from {er['used']} of {er['records']} records")
            for key in ("eval_loss", "eval_nll", "eval_rewards/margins", "eval_rewards/accuracies"):
                if key in evals[-1]:
                    steps = f" (steps {evals[0]['step']} → {evals[-1]['step']})" if key == "eval_loss" else ""
                    table.add_row(
                        f"held-out {key} first → last{steps}", f"{_fmt(evals[0].get(key))} → {_fmt(evals[-1][key])}"
                    )
        table.add_row("tokens/s", f"{rep['tokens_per_second']:.0f}")
        table.add_row("model", f"{out_dir} (safetensors + tokenizer; report clo_report.json)")
        out.print(table)
