"""``cltx mt``: translate multi-field JSONL with a Catalyst Statement + Indicator Tokens."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cltx.cli._ui import RichProgress, out, setup_logging, user_errors
from cltx.errors import bad_arg


class Mode(str, Enum):
    joint = "joint"
    separate = "separate"


class OnFlag(str, Enum):
    keep = "keep"
    retry = "retry"
    reject = "reject"


def render_report(report: dict) -> None:
    """The end-of-run report as rich tables."""
    from rich.table import Table

    s = report["session"]
    t = Table("metric", "value", title=f"cltx mt — {report['mode']} — {report['engine']}", title_justify="left")
    rate = report["joint_success_rate"]
    rows = [
        ("records (output)", report["records"]),
        ("rejected (input)", report["rejected"]),
        ("joint success rate", "n/a (separate mode)" if rate is None else f"{rate:.1%}"),
        ("  of which after an IT-style retry", report["joint_after_style_retry"]),
        ("fallbacks", report["fallbacks"]),
        ("failures", report["failures"]),
        ("records split for length", report["split_records"]),
        ("translated this session", s["records"]),
        ("records/s", s["records_per_s"]),
        ("source chars/s", s["source_chars_per_s"]),
    ]
    for k, v in rows:
        t.add_row(k, "" if v is None else str(v))
    out.print(t)
    if report.get("fallback_reasons"):
        r = Table("fallback reason", "records", title_justify="left")
        for k, v in report["fallback_reasons"].items():
            r.add_row(k, str(v))
        out.print(r)
    q = report.get("quality") or {}
    if q.get("checked"):
        qt = Table("quality flag", "fields", title=f"quality (--on-flag {q['on_flag']})", title_justify="left")
        for k, v in q["by_flag"].items():
            qt.add_row(k, str(v))
        qt.add_row("records flagged", str(q["flagged_records"]))
        if q["on_flag"] == "retry":
            qt.add_row("records retried / retry kept", f"{q['retried']} / {q['retry_kept']}")
        if q["on_flag"] == "reject":
            qt.add_row("records rejected", str(q["rejected"]))
        out.print(qt)
    p = report.get("protect") or {}
    if p.get("on"):
        out.print(
            f"protected spans: {p['records_with_spans']} records had some; "
            f"{p['marker_lost_fallbacks']} lost a marker and took the fallback path"
        )
    c = report.get("cache")
    if c:
        out.print(
            f"translation cache: {c['hits']} hits, {c['misses']} misses, {c['engine_calls']} engine calls "
            f"({c['engine_texts']} texts) — {c['path']}"
        )
    if report.get("scores"):
        # the skipped column (turns/records with no usable reference) only when something was skipped
        skips = any(v.get("skipped") for v in report["scores"].values())
        sc = Table("field", "n", "BLEU", "chrF", title="against references", title_justify="left")
        if skips:
            sc.add_column("skipped")
        for f, v in report["scores"].items():
            row = [f, str(v["n"])] + ["n/a" if v[k] is None else f"{v[k]:.2f}" for k in ("bleu", "chrf")]
            sc.add_row(*row, *([str(v.get("skipped", 0))] if skips else []))
        out.print(sc)


def register(app: typer.Typer) -> None:
    @app.command("mt")
    @user_errors(on_interrupt="rerun with --resume to continue")
    def mt(
        input: Annotated[Path, typer.Argument(help="English records: JSONL (one object per line) or a JSON array.")],
        output: Annotated[Path, typer.Argument(help="Where to write the translated JSONL.")],
        fields: Annotated[
            str,
            typer.Option(
                "--fields",
                help="Comma-separated fields to translate (in joint order); other fields pass through. A chat field "
                "(a list of {role, content} or ShareGPT {from, value} turns) is translated turn by turn.",
            ),
        ],
        src: Annotated[str, typer.Option("--src", help="Source language code.")] = "en",
        tgt: Annotated[str, typer.Option("--tgt", help="Target language code.")] = "pt",
        engine: Annotated[
            str,
            typer.Option(
                "--engine", help="bergamot (embedded en<->pt) | hf:MODEL | openai:MODEL | python:MODULE:FUNCTION."
            ),
        ] = "bergamot",
        mode: Annotated[
            Mode, typer.Option("--mode", help="joint: CS + ITs, one pass per record; separate: field by field.")
        ] = Mode.joint,
        catalyst: Annotated[
            str,
            typer.Option(
                "--catalyst",
                help="auto (template by field names) | none | kind:instruction|qa|nli|search | @FILE.json "
                "(sentence per field list) | your own sentence.",
            ),
        ] = "auto",
        it_styles: Annotated[
            str, typer.Option("--it-styles", help="Indicator-Token styles to try, in order: bracket,paren,...")
        ] = "bracket,paren,double_bracket,pipe",
        style_retries: Annotated[
            int,
            typer.Option(
                "--style-retries", help="Joint re-tries with the next IT style before falling back to fields."
            ),
        ] = 1,
        require_all: Annotated[
            bool, typer.Option("--require-all", help="Every record must have every named field (else: invalid).")
        ] = False,
        skip_invalid: Annotated[
            bool, typer.Option("--skip-invalid", help="Write invalid input lines to the rejects file, don't stop.")
        ] = False,
        rejects: Annotated[
            Path | None, typer.Option("--rejects", help="Rejects file (default: OUTPUT-stem.rejects.jsonl).")
        ] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into OUTPUT.")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT.")] = False,
        references: Annotated[
            Path | None, typer.Option("--references", help="Reference translations (JSONL) for BLEU/chrF per field.")
        ] = None,
        max_errors: Annotated[
            int, typer.Option("--max-errors", help="Records the engine may fail on before the run stops.")
        ] = 10,
        batch_records: Annotated[
            int, typer.Option("--batch-records", help="Records per engine round (and per incremental write).")
        ] = 32,
        engine_option: Annotated[
            list[str] | None,
            typer.Option(
                "--engine-option",
                help="KEY=VALUE passed to the engine (hf: device, dtype, batch_tokens, max_length, num_beams, "
                "src_code, tgt_code; bergamot: threads, max_input_len, sentences=false; openai: base_url, "
                "api_key_env, concurrency, timeout, max_retries, temperature, max_tokens, system_prompt). Repeatable.",
            ),
        ] = None,
        keep_newlines: Annotated[
            Optional[bool],
            typer.Option(
                help="Translate line by line so line breaks survive sentence-level engines (default: on, "
                "off for openai: chat models, which keep them)."
            ),
        ] = None,
        on_flag: Annotated[
            OnFlag,
            typer.Option(
                "--on-flag",
                help="Records with quality flags: keep (marked in _mt.flags), retry (other mode, better kept), "
                "reject (to the rejects file).",
            ),
        ] = OnFlag.keep,
        no_checks: Annotated[bool, typer.Option("--no-checks", help="Skip the quality checks.")] = False,
        protect: Annotated[
            list[str] | None,
            typer.Option(
                "--protect",
                metavar="PATTERN",
                help="Extra regex whose matches are never translated (repeatable; Python syntax).",
            ),
        ] = None,
        no_protect: Annotated[
            bool,
            typer.Option(
                "--no-protect",
                help="Send code, URLs, placeholders, tags, symbols and foreign-script words to the engine as they are.",
            ),
        ] = False,
        cache: Annotated[
            Path | None,
            typer.Option(
                "--cache",
                metavar="DIR",
                help="Translation cache folder (default: the cltx cache dir, CLTX_CACHE). python: engines are "
                "cached only when this is given.",
            ),
        ] = None,
        no_cache: Annotated[
            bool, typer.Option("--no-cache", help="Translate everything; read and write no cache.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no table.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log fallbacks and engine retries.")] = False,
    ) -> None:
        """Translate the named fields of every record, jointly (CS + Indicator Tokens) or field by field.

        Output: JSONL in input order with the translated fields replaced, `_source` (the English) and
        `_mt` (status joint/fallback/separate/failed/empty, IT style, splits); a record's own `_source`/`_mt`
        (translating a cltx mt output again) are kept as `_source_prev`/`_mt_prev`. A report is printed and
        written to OUTPUT-stem.report.json. Under torchrun/accelerate (WORLD_SIZE > 1) each rank
        translates its share and rank 0 merges in order.

        Guards, on by default: protected spans (code, URLs, e-mails, placeholders, tags, emoji and other
        non-ASCII symbols, words in scripts foreign to the language pair) are never sent to the engine;
        every field gets quality flags (_mt.flags: wrong language, untranslated, repetition, length ratio,
        leftover markers or Catalyst Statement, dropped symbols); translations are cached in
        SQLite, so a re-run translates only what changed.
        """
        setup_logging(verbose)
        from cltx.mt.engines import default_keep_newlines, make_engine, parse_options
        from cltx.mt.markers import parse_styles
        from cltx.mt.pipeline import MTConfig
        from cltx.mt.runner import dist_env, run_file

        if not input.exists():
            raise FileNotFoundError(2, "no such file", str(input))
        if references is not None and not references.exists():
            raise FileNotFoundError(2, "no such file", str(references))
        config = MTConfig(
            fields=fields, src=src, tgt=tgt, mode=mode.value, styles=parse_styles(it_styles), catalyst=catalyst,
            require_all=require_all, max_errors=max_errors, batch_records=batch_records, style_retries=style_retries,
            protect=not no_protect, protect_patterns=tuple(protect or ()), quality=not no_checks,
            on_flag=on_flag.value,
        )  # fmt: skip
        if no_protect and protect:
            raise bad_arg("--protect", protect, "cannot be combined with --no-protect; drop one of them")
        if no_cache and cache is not None:
            raise bad_arg("--cache", str(cache), "cannot be combined with --no-cache; drop one of them")
        rank, _ = dist_env()  # a bad RANK/WORLD_SIZE is reported before an hf: engine loads its model
        engine_options = parse_options(engine_option)
        if keep_newlines is None:
            keep_newlines = default_keep_newlines(engine)
        eng = make_engine(engine, src, tgt, options=engine_options, keep_newlines=keep_newlines)
        # bergamot and hf engines are cached by default: their identity (package version, weight
        # files) is in the key. A python: engine may depend on what cltx cannot see (an API's model
        # version, environment variables): cached only when --cache names a folder.
        if not no_cache and (cache is not None or not engine.startswith("python:")):
            from cltx.mt.tcache import CachedEngine, TranslationCache, engine_identity

            eid, eopts = engine_identity(engine, engine_options, keep_newlines=keep_newlines)
            eng = CachedEngine(eng, TranslationCache(cache), engine=eid, options=eopts, src=src, tgt=tgt)
        with RichProgress(disable=quiet or rank != 0) as progress:
            report = run_file(
                input, output, eng, config, resume=resume, overwrite=overwrite, skip_invalid=skip_invalid,
                rejects_path=rejects, progress=progress, references=references,
                settings={"engine_options": engine_options, "keep_newlines": keep_newlines},
            )  # fmt: skip
        if report is not None and not quiet:
            render_report(report)
            rp = output.with_name(output.stem + ".report.json")
            if report.get("already_complete"):
                out.print(f"{report['output']} was already complete: nothing translated, nothing rewritten ({rp})")
            else:
                out.print(f"wrote {report['output']} and its report {rp}")
