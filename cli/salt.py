"""``cltx salt``: give an LLM a target-language PLM's vocabulary (SALT and its peers)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cltx.cli._ui import RichProgress, console, out, setup_logging, user_errors


class Method(str, Enum):
    salt = "salt"
    focus = "focus"
    wechsel = "wechsel"
    subword_mean = "subword-mean"
    mean = "mean"
    random = "random"
    all = "all"


def _fmt(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def _marker(entry: dict) -> str:
    """One chat-template marker of the report, as the summary line shows it."""
    how = entry["handled"]
    if how == "rewritten":
        return f"{entry['token']} → {entry['to']}"
    if how == "added":
        return f"{entry['token']} added as {entry['id']}"
    if how == "paired":
        return f"{entry['token']} paired with {entry['id']}"
    return f"{entry['token']} kept as text"


def register(app: typer.Typer) -> None:
    @app.command("salt")
    @user_errors
    def salt(
        out_dir: Annotated[
            Path,
            typer.Option(
                "--out",
                help="Output folder (--method all: a subfolder per method): new, empty, or an earlier "
                "cltx salt output, whose results are replaced.",
            ),
        ],
        llm: Annotated[
            str, typer.Option("--llm", help="The LLM: embedded name (smollm2-135m), model folder or hub id.")
        ] = "smollm2-135m",
        plm: Annotated[
            str,
            typer.Option("--plm", help="The target-language PLM whose tokenizer the LLM gets (embedded: minilm-l6)."),
        ] = "minilm-l6",
        method: Annotated[
            Method, typer.Option("--method", help="Initialisation rule, or 'all' to compare every rule.")
        ] = Method.salt,
        vectors: Annotated[
            Path | None,
            typer.Option("--vectors", help="fastText .vec file: neighbours by similarity of these word vectors."),
        ] = None,
        eval_text: Annotated[
            Path | None,
            typer.Option(
                "--eval-text",
                help="Held-out text (one document a line) scored in bits per byte; "
                "--method all defaults to the packaged cltx/data/eval_en.txt.",
            ),
        ] = None,
        k_max: Annotated[int, typer.Option("--k-max", help="Most neighbours per new token.")] = 64,
        k_min: Annotated[int, typer.Option("--k-min", help="Fewest neighbours per new token.")] = 1,
        temperature: Annotated[
            float, typer.Option("--temperature", help="Sparsemax temperature over cosine similarities.")
        ] = 0.1,
        ridge: Annotated[float, typer.Option("--ridge", help="Ridge of each least-squares fit (0 = paper).")] = 0.0,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random draws.")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    ) -> None:
        """Swap in a PLM's vocabulary: overlapping tokens keep the LLM's embeddings, every new token
        gets its own least-squares fit from its neighbours (SALT), or a peer rule for comparison."""
        from rich.markup import escape
        from rich.table import Table

        from cltx.salt.transfer import EVAL_TABLE, REPORT, SaltConfig, transfer_vocabulary

        setup_logging(verbose)
        config = SaltConfig(
            llm=llm,
            plm=plm,
            method=method.value,
            vectors=str(vectors) if vectors is not None else None,
            eval_text=str(eval_text) if eval_text is not None else None,
            k_max=k_max,
            k_min=k_min,
            temperature=temperature,
            ridge=ridge,
            seed=seed,
            device=device,
        )
        try:
            with RichProgress() as progress:
                summary = transfer_vocabulary(config, out_dir, progress=progress)
        except KeyboardInterrupt:
            # Not the shared handler's "--resume" hint: salt has no resume, a rerun starts over.
            console.print(
                f"[yellow]interrupted[/]: {escape(str(out_dir))} is incomplete; rerun the same command to start over",
                highlight=False,
            )
            raise typer.Exit(code=130) from None

        m = summary["matching"]
        counts = ", ".join(f"{k} {v}" for k, v in m["match_counts"].items() if v)
        out.print(
            f"[bold]{m['plm_vocab_size']}[/] PLM tokens ({m['plm_family']}"
            f"{', lower-cased' if m['plm_lowercase'] else ''}) onto {m['llm_vocab_size']} LLM tokens "
            f"({m['llm_family']}): [bold]{m['overlap']}[/] keep the LLM's rows ({counts}), "
            f"[bold]{m['new_tokens']}[/] new",
            highlight=False,
        )
        # An added token (the LLM's bos where the PLM has none apart from its eos) changes the vocabulary size.
        for note in m.get("notes") or []:
            out.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
        chat = m.get("chat_template") or {}
        if chat.get("carried"):
            how = ", ".join(_marker(e) for e in chat.get("markers") or [])
            out.print(escape(f"chat template: carried over ({how or 'no markers'})"), highlight=False)
        table = Table("method", "bits/byte", "Δ vs LLM", "hold-out cos", "hold-out rel. err", "fallback", "init s")
        base = summary.get("llm_bits_per_byte")
        if base is not None:
            table.add_row("LLM, own tokenizer", _fmt(base), "", "", "", "", "")
        for name, r in summary["methods"].items():
            bpb = r["bits_per_byte"]
            delta = None if bpb is None or base is None else bpb - base
            table.add_row(
                name,
                _fmt(bpb),
                _fmt(delta, "+.4f"),
                _fmt(r["holdout_cosine"], ".3f"),
                _fmt(r["holdout_relative_error"], ".3f"),
                str(r["fallback_random"]),
                _fmt(r["init_seconds"], ".1f"),
            )
        out.print(table)
        where = [r["path"] for r in summary["methods"].values()]
        out.print(f"saved: {', '.join(where)} (each with {REPORT})", highlight=False)
        if base is not None:
            out.print(f"bits per byte table: {Path(summary['out']) / EVAL_TABLE}", highlight=False)
