"""``cltx run``: the whole transfer (mt → salt → pretrain → clo → eval) from one TOML config, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cltx.cli._ui import RichProgress, console, out, setup_logging, user_errors

_VERDICT_STYLE = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}


def register(app: typer.Typer) -> None:
    @app.command("run")
    @user_errors(on_interrupt="rerun the same command: finished stages are reused")
    def run_cmd(
        config: Annotated[
            str, typer.Argument(help="TOML run config, or a shipped one: 'default', 'quick' (cltx/data/run_*.toml).")
        ],
        quick: Annotated[
            bool, typer.Option("--quick", help="Use the config's [quick.*] budgets (< 5 min on CPU).")
        ] = False,
        out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (overrides run.out).")] = None,
        force: Annotated[
            Optional[list[str]],
            typer.Option("--force", help="Rerun this stage (or section) and everything downstream; repeatable."),
        ] = None,
        check: Annotated[bool, typer.Option("--check", help="Validate the config, list the stages and stop.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    ) -> None:
        """Run the pipeline in CONFIG (reusing finished stages) and write report.md, report.json and plots."""
        setup_logging(verbose)
        _quiet_transformers(verbose)
        from rich.table import Table

        from cltx.run import build_stages, load_config, run_pipeline

        cfg = load_config(config, quick=quick, out=out_dir)
        stages = build_stages(cfg)
        console.print(
            f"[bold]cltx run[/] {cfg.path} → {cfg.run.out}  device={cfg.device}"
            f"{'  (quick budgets)' if cfg.quick else ''}  stages: {', '.join(s.name for s in stages)}",
            highlight=False,
        )
        if check:
            return
        from cltx.run import RunStopped

        try:
            with RichProgress() as prog:
                report = run_pipeline(cfg, force=force, progress=prog)
        except RunStopped as e:
            console.print(f"[yellow]{e}[/]: finished stages are kept; run the same command again to resume")
            raise typer.Exit(code=3) from None

        from cltx.report import summary_rows

        table = Table("paper", "claim", "this run", "verdict", title="Did each step help? (direction, this scale)")
        for paper, claim, numbers, verdict in summary_rows(report):
            table.add_row(paper, claim, numbers, f"[{_VERDICT_STYLE.get(verdict, 'white')}]{verdict}[/]")
        out.print(table)
        times = Table("stage", "wall s", "reused", title="Stages")
        for name, t in report["stages"].items():
            times.add_row(
                name, f"{t['wall_s']:.1f}" if t.get("wall_s") is not None else "—", "yes" if t["reused"] else ""
            )
        out.print(times)
        out.print(
            f"report: {Path(cfg.run.out) / 'report.md'}  (json: report.json; plots: {', '.join(report['plots'])})"
        )


def _quiet_transformers(verbose: bool) -> None:
    """transformers' own tqdm bars (weight loading, shard writing) would interleave with rich's."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not verbose:
        hf_logging.set_verbosity_error()
