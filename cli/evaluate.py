"""``cltx eval``: answer-language share and held-out NLL per language, models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cltx.cli._ui import RichProgress, out, setup_logging, user_errors
from cltx.cli.clo import ChatTurns

EVAL_CHAT_TURNS_HELP = (
    "Chat records (messages/conversations): ask every exchange's prompt (after the conversation before "
    "it), or only the first or last."
)


def _unit(res: dict) -> str:
    """What the table counts: records, or examples where chat records gave one per exchange."""
    chat = any("turn" in smp for m in res["models"] for smp in m.get("samples", []))
    return "examples (chat exchanges)" if chat else "records"


def summary_lines(res: dict, limit) -> list[str]:
    """The lines under the eval table: skipped records, skipped exchanges, what --limit left out, and chat
    histories shortened so that every model answers the same conversation."""
    lines: list[str] = []
    skipped = res["skipped"]
    if skipped:
        first = res.get("skipped_first_lines", {})
        parts = [
            f"{n} {reason}" + (f" (first lines {first[reason]})" if first.get(reason) else "")
            for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1])
        ]
        lines.append(f"skipped {sum(skipped.values())} of {res['records']} records: " + ", ".join(parts))
    exchanges = res.get("exchanges_skipped") or {}
    if exchanges:  # records that give examples from their other exchanges: not skipped records
        n = sum(exchanges.values())
        reasons = ", ".join(f"{k} {r}" for r, k in sorted(exchanges.items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped {n} chat exchange{'s' * (n != 1)} of records that still give examples: {reasons}")
    if res.get("examples_beyond_limit"):
        total = res["usable"] + res["examples_beyond_limit"]
        lines.append(
            f"--limit {limit}: evaluated {res['usable']} of {total} usable examples "
            f"(from {res['records_evaluated']} records)"
        )
    if n := res.get("histories_trimmed_for_other_models"):
        lines.append(
            f"{n} chat example{'s' * (n != 1)} asked with fewer earlier turns than some model could take, "
            "so that every model answers the same conversation"
        )
    return lines


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def eval_cmd(
        model: Annotated[
            list[str], typer.Option("--model", help="Model to evaluate (repeat to compare, e.g. base, CLO, SFT).")
        ],
        data: Annotated[Path, typer.Option("--data", help="Held-out records (cltx mt output or bilingual JSONL).")],
        tgt: Annotated[
            Optional[str], typer.Option("--tgt", help="Target-language code (default: the records' _mt.tgt).")
        ] = None,
        limit: Annotated[
            int,
            typer.Option(
                "--limit", help="Evaluate the first N usable examples (a chat record gives one per exchange; 0: all)."
            ),
        ] = 0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Greedy answer length bound.")] = 64,
        max_length: Annotated[int, typer.Option("--max-length", help="Prompt + reference response tokens.")] = 1024,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per generation batch.")] = 8,
        json_out: Annotated[
            Optional[Path], typer.Option("--json", help="Write the full report (with every answer) here.")
        ] = None,
        prompt_fields: Annotated[
            Optional[str], typer.Option("--prompt-fields", help="Comma-separated prompt fields (default: auto).")
        ] = None,
        response_field: Annotated[Optional[str], typer.Option("--response-field", help="Response field.")] = None,
        en_key: Annotated[str, typer.Option("--en-key", help="Record key with the English fields.")] = "_source",
        tgt_key: Annotated[Optional[str], typer.Option("--tgt-key", help="Record key with the target fields.")] = None,
        en_suffix: Annotated[Optional[str], typer.Option("--en-suffix", help="English field suffix, e.g. _en.")] = None,
        tgt_suffix: Annotated[Optional[str], typer.Option("--tgt-suffix", help="Target suffix, e.g. _pt.")] = None,
        chat_turns: Annotated[ChatTurns, typer.Option("--chat-turns", help=EVAL_CHAT_TURNS_HELP)] = ChatTurns.all,
        chat_template: Annotated[
            Optional[bool],
            typer.Option("--chat-template/--no-chat-template", help="Use the model's chat template (default: if any)."),
        ] = None,
        system_prompt: Annotated[
            Optional[str],
            typer.Option("--system-prompt", help="System message for the chat template (as given to cltx clo)."),
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    ) -> None:
        """Ask held-out prompts in English and in the target language; report the share answered in
        the prompt's language (py3langid) and the held-out NLL per language, one row per model."""
        setup_logging(verbose)
        from rich.table import Table
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # rich draws the progress

        from cltx.cli.clo import data_spec
        from cltx.clo.evaluate import evaluate_models, summary_rows

        spec = data_spec(prompt_fields, response_field, en_key, tgt_key, en_suffix, tgt_suffix, chat_turns)
        with RichProgress() as prog:
            res = evaluate_models(
                model,
                data,
                tgt=tgt,
                spec=spec,
                limit=limit,
                max_new_tokens=max_new_tokens,
                max_length=max_length,
                batch_size=batch_size,
                use_chat_template=chat_template,
                system_prompt=system_prompt,
                out=json_out,
                progress=prog,
            )
        t = res["tgt"]
        held = f"{res['usable']} held-out {_unit(res)}"
        table = Table(
            "model",
            "en prompt → en answer",
            f"{t} prompt → {t} answer",
            "NLL en",
            f"NLL {t}",
            title=f"cltx eval: {held} × 2 languages, greedy ≤ {res['max_new_tokens']} tokens",
        )
        for r in summary_rows(res):
            table.add_row(
                r["model"],
                f"{r['en_in_language']:.1%}",
                f"{r['tgt_in_language']:.1%}",
                f"{r['nll_en']:.4f}",
                f"{r['nll_tgt']:.4f}",
            )
        out.print(table)
        for line in summary_lines(res, limit):
            out.print(line)
        if json_out:
            out.print(f"report: {json_out}")
