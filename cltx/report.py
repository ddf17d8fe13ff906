"""The report of a ``cltx run``: ``report.json`` (every number), ``report.md`` and PNG plots.

Each paper's claim is checked *in direction* on this run's scale, with the same budget on both
sides, and the verdict is one of ``reproduced``, ``not reproduced`` or ``inconclusive`` (a tie, or
a number missing). Small runs (the shipped ``--quick`` budget) are far below the papers' scale; the
report says so rather than dressing a tie up as a result.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
# Differences smaller than these are ties (noise at this scale), not verdicts.
TOL_NATS = 0.01  # NLL / training loss, nats per token
TOL_BPB = 0.005  # bits per byte


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def compare(
    paper: str,
    claim: str,
    left_name: str,
    left: Any,
    right_name: str,
    right: Any,
    *,
    lower_is_better: bool,
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """One claim checked in direction: ``left`` should beat ``right``.

    A difference within ``tolerance`` is a tie (inconclusive); so is a missing number.
    """
    a, b = _num(left), _num(right)
    if a is None or b is None:
        verdict, diff = INCONCLUSIVE, None
    else:
        diff = a - b
        better = -diff if lower_is_better else diff
        verdict = REPRODUCED if better > tolerance else NOT_REPRODUCED if better < -tolerance else INCONCLUSIVE
    sign = "<" if lower_is_better else ">"
    return {
        "paper": paper,
        "claim": claim,
        "check": f"{left_name} {sign} {right_name}",
        left_name: a,
        right_name: b,
        "difference": diff,
        "verdict": verdict,
    }


# ------------------------------------------------------------------------------- sections


def mt_section(results: dict[str, dict]) -> tuple[dict, list[dict]]:
    joint = results.get("mt")
    if not joint:
        return {}, []
    sep = results.get("mt-separate") or {}

    def view(r: dict) -> dict:
        qa = r.get("qa") or {}
        return {
            "records": r.get("records"),
            "decomposition_success_rate": r.get("joint_success_rate"),
            "fallbacks": r.get("fallbacks"),
            "failures": r.get("failures"),
            "records_per_s": r.get("records_per_s"),
            "source_chars_per_s": r.get("source_chars_per_s"),
            "qa_records": qa.get("qa_records"),
            "qa_answer_in_passage_share": qa.get("share"),
        }

    sec = {"engine": joint.get("engine"), "joint": view(joint)}
    claims = []
    if sep:
        sec["separate"] = view(sep)
        sec["separate"]["decomposition_success_rate"] = None  # no decomposition in separate mode
        sec["separate"].pop("decomposition_success_rate")
        sec["separate"].pop("fallbacks")
        claims.append(
            compare(
                "MT (CS + IT), arXiv 2404.16257",
                "joint translation keeps the relation between fields (QA answer still in the passage)",
                "joint",
                sec["joint"]["qa_answer_in_passage_share"],
                "separate",
                sec["separate"]["qa_answer_in_passage_share"],
                lower_is_better=False,
            )
        )
    sec["split"] = {k: joint.get(k) for k in ("train_records", "heldout_records")}
    return sec, claims


def salt_section(results: dict[str, dict]) -> tuple[dict, list[dict]]:
    salt = results.get("salt") or {}
    if not salt and not any(k.startswith("pretrain-") for k in results):
        return {}, []
    bpb = {m: _num(v) for m, v in (salt.get("bits_per_byte") or {}).items()}
    sec: dict[str, Any] = (
        {}
        if not salt
        else {
            "llm": salt.get("llm"),
            "plm": salt.get("plm"),
            "eval_text": salt.get("eval_text"),
            "bits_per_byte_after_init": bpb,
            "base_llm_bits_per_byte": _num(salt.get("base_bits_per_byte")),
            "overlap": salt.get("overlap"),
            "vocab_size": salt.get("vocab_size"),
            "new_tokens": salt.get("new_tokens"),
            "note": salt.get("note"),
        }
    )
    claims = []
    for peer in ("focus", "random"):
        if "salt" in bpb and peer in bpb:
            claims.append(
                compare(
                    "SALT, arXiv 2505.10945",
                    f"SALT init starts lower than {peer} init (held-out bits per byte, no training)",
                    "salt",
                    bpb["salt"],
                    peer,
                    bpb[peer],
                    lower_is_better=True,
                    tolerance=TOL_BPB,
                )
            )
    pre = {k.split("-", 1)[1]: v for k, v in results.items() if k.startswith("pretrain-")}
    if pre:
        runs = {}
        for init, r in pre.items():
            curve = r.get("loss_curve") or []
            losses = [c["loss"] for c in curve]
            k = max(1, len(losses) // 4)
            runs[init] = {
                "tokens_trained": r.get("tokens_trained"),
                "steps": r.get("steps"),
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "mean_loss_last_quarter": sum(losses[-k:]) / k if losses else None,
                "mean_loss": sum(losses) / len(losses) if losses else None,
                "heldout_bpb_before": _num((r.get("eval_before") or {}).get("bits_per_byte")),
                "heldout_bpb_after": _num((r.get("eval_after") or {}).get("bits_per_byte")),
                "tokens_per_s": r.get("tokens_per_s"),
                "curve": [{"tokens": c["tokens"], "loss": c["loss"]} for c in curve],
            }
        sec["continued_training"] = runs
        budgets = {v["tokens_trained"] for v in runs.values()}
        sec["same_token_budget"] = len(budgets) == 1
        if "salt" in runs:
            for peer in ("focus", "random"):
                if peer in runs:
                    claims.append(
                        compare(
                            "SALT, arXiv 2505.10945",
                            f"continued training from SALT converges faster than from {peer} "
                            "(mean training loss over the same token budget)",
                            "salt",
                            runs["salt"]["mean_loss"],
                            peer,
                            runs[peer]["mean_loss"],
                            lower_is_better=True,
                            tolerance=TOL_NATS,
                        )
                    )
                    claims.append(
                        compare(
                            "SALT, arXiv 2505.10945",
                            f"after the same budget SALT's held-out bits per byte is lower than {peer}'s",
                            "salt",
                            runs["salt"]["heldout_bpb_after"],
                            peer,
                            runs[peer]["heldout_bpb_after"],
                            lower_is_better=True,
                            tolerance=TOL_BPB,
                        )
                    )
    return sec, claims


def clo_section(results: dict[str, dict]) -> tuple[dict, list[dict]]:
    ev = results.get("eval")
    trained = {k: results[k] for k in ("clo", "sft", "clo-half") if k in results}
    if not ev and not trained:
        return {}, []
    models = (ev or {}).get("models", {})
    sec: dict[str, Any] = {"models": models, "training": {}}
    for name, r in trained.items():
        curve = r.get("curve") or []
        sec["training"][name] = {
            "method": r.get("method"),
            "input_records": r.get("input_records"),
            "records": r.get("records"),
            "pairs": r.get("pairs"),
            "steps": r.get("steps"),
            "first_loss": curve[0]["loss"] if curve else None,
            "last_loss": curve[-1]["loss"] if curve else None,
            "last_margin": next((c["margin"] for c in reversed(curve) if c.get("margin") is not None), None),
            "wall_s": r.get("wall_s"),
            "curve": curve,
        }
        held = r.get("heldout_curve")
        if held:  # clo.eval_heldout: the held-out records scored with the training loss during training
            sec["training"][name].update(
                {
                    "heldout_records": r.get("heldout_records"),
                    "heldout_first_loss": held[0]["loss"],
                    "heldout_last_loss": held[-1]["loss"],
                    "heldout_last_accuracy": held[-1].get("accuracy"),
                    "heldout_curve": held,
                }
            )
    claims = []
    paper = "CLO, arXiv 2505.14297"

    def m(name: str, key: str):
        return (models.get(name) or {}).get(key)

    if "clo" in models and "sft" in models:
        claims += [
            compare(paper, "CLO answers target-language prompts in the target language more often than SFT",
                    "clo", m("clo", "target_prompt_share"), "sft", m("sft", "target_prompt_share"),
                    lower_is_better=False),
            compare(paper, "CLO keeps answering English prompts in English at least as well as SFT",
                    "clo", m("clo", "english_prompt_share"), "sft", m("sft", "english_prompt_share"),
                    lower_is_better=False),
            compare(paper, "CLO's held-out target-language NLL is lower than SFT's (same data, same steps)",
                    "clo", m("clo", "nll_target"), "sft", m("sft", "nll_target"), lower_is_better=True,
                    tolerance=TOL_NATS),
            compare(paper, "CLO's held-out English NLL is lower than SFT's (English is kept)",
                    "clo", m("clo", "nll_english"), "sft", m("sft", "nll_english"), lower_is_better=True,
                    tolerance=TOL_NATS),
        ]  # fmt: skip
    if "clo" in models and "base" in models:
        claims.append(
            compare(
                paper,
                "CLO training raises the share of target-language answers to target prompts over the start model",
                "clo",
                m("clo", "target_prompt_share"),
                "base",
                m("base", "target_prompt_share"),
                lower_is_better=False,
            )
        )
    if "clo-half" in models and "sft" in models:
        claims.append(
            compare(
                paper,
                "CLO on half the pairs answers target prompts in the target language more often than SFT on all",
                "clo-half",
                m("clo-half", "target_prompt_share"),
                "sft",
                m("sft", "target_prompt_share"),
                lower_is_better=False,
            )
        )
    return sec, claims


# ------------------------------------------------------------------------------- plots


def _plots(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    runs = (report.get("salt") or {}).get("continued_training") or {}
    if runs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for init, r in runs.items():
            xs = [c["tokens"] for c in r["curve"]]
            ax.plot(xs, [c["loss"] for c in r["curve"]], marker="o", ms=2.5, label=f"{init} init")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title("Continued training after vocabulary transfer")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "pretrain_loss.png", dpi=110)
        plt.close(fig)
        made.append("pretrain_loss.png")
    bpb = (report.get("salt") or {}).get("bits_per_byte_after_init") or {}
    if bpb:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        names = list(bpb)
        ax.bar(names, [bpb[n] or 0.0 for n in names], color=["C3" if n == "salt" else "C0" for n in names])
        ax.set_ylabel("bits per byte (held-out)")
        ax.set_title("Right after initialisation, before training")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "salt_bits_per_byte.png", dpi=110)
        plt.close(fig)
        made.append("salt_bits_per_byte.png")
    training = (report.get("clo") or {}).get("training") or {}
    if training:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.0))
        for i, (name, r) in enumerate(training.items()):
            curve, color = r["curve"], f"C{i}"  # one colour per run in both panels
            xs, ys = [c["step"] for c in curve], [c["loss"] for c in curve]
            ax1.plot(xs, ys, marker="o", ms=2.5, label=name, color=color)
            margins = [(c["step"], c["margin"]) for c in curve if c.get("margin") is not None]
            if margins:
                ax2.plot(*zip(*margins, strict=True), marker="o", ms=2.5, label=name, color=color)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax1.set_title("CLO vs SFT: loss")
        ax2.set_xlabel("step")
        ax2.set_ylabel("reward margin (chosen − rejected)")
        ax2.set_title("CLO: reward margins")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        fig.savefig(out / "clo_vs_sft.png", dpi=110)
        plt.close(fig)
        made.append("clo_vs_sft.png")
    return made


# ------------------------------------------------------------------------------- markdown


def _f(x: Any, nd: int = 3) -> str:
    v = _num(x)
    if v is None:
        return "—" if x is None else str(x)
    if float(v).is_integer() and abs(v) < 1e12 and not isinstance(x, float):
        return f"{int(v):,}"
    return f"{v:.{nd}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """``(paper, check, numbers, verdict)`` per claim: the CLI's closing table."""
    rows = []
    for c in report.get("claims", []):
        left, right = c["check"].split(" ")[0], c["check"].split(" ")[-1]
        rows.append((c["paper"].split(",")[0], c["claim"], f"{_f(c.get(left))} vs {_f(c.get(right))}", c["verdict"]))
    return rows


def render_markdown(report: dict) -> str:
    run, env = report["run"], report["environment"]
    md = [
        "# cltx run report",
        "",
        f"Run folder `{run['out']}`, config `{run.get('config')}`{' (--quick budgets)' if run.get('quick') else ''}, "
        f"device **{env.get('device')}**{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, seed {run.get('seed')}, "
        f"{run.get('src')} → {run.get('tgt')}. Finished {run.get('finished')}.",
        "",
        "Scale: the shipped configs run a 135M-parameter model for minutes on a CPU; the papers train 2B–13B "
        "models on thousands of examples. A claim marked *inconclusive* tied or lacked a number at this "
        "scale (differences under 0.01 nats or 0.005 bits/byte count as ties); *not reproduced* means the opposite "
        "direction was measured here — it does not refute the paper.",
        "",
        "## Claims checked",
        "",
        _table(
            ["paper", "claim", "this run", "verdict"],
            [[p, c, n, f"**{v}**"] for p, c, n, v in summary_rows(report)],
        ),
    ]
    mt = report.get("mt") or {}
    if mt:
        md += ["", "## MT: joint (Catalyst Statement + Indicator Tokens) vs separate", ""]
        cols = ["records", "decomposition_success_rate", "fallbacks", "failures", "records_per_s", "qa_records",
                "qa_answer_in_passage_share"]  # fmt: skip
        rows = [[mode] + [mt[mode].get(c) for c in cols] for mode in ("joint", "separate") if mode in mt]
        md += [_table(["mode"] + cols, rows), "", f"Engine: `{mt.get('engine')}`. Split: {mt.get('split')}."]
    salt = report.get("salt") or {}
    if salt:
        md += ["", "## SALT: vocabulary transfer", ""]
        if salt.get("note"):
            md += [f"> {salt['note']}", ""]
        bpb = salt.get("bits_per_byte_after_init") or {}
        md += [
            f"LLM `{salt.get('llm')}`, PLM `{salt.get('plm')}`; held-out bits per byte right after "
            f"initialisation (base LLM with its own tokenizer: {_f(salt.get('base_llm_bits_per_byte'))}):",
            "",
            _table(["method", "bits/byte"], [[m, v] for m, v in sorted(bpb.items(), key=lambda kv: kv[1] or 1e9)]),
        ]
        runs = salt.get("continued_training") or {}
        if runs:
            cols = ["tokens_trained", "first_loss", "last_loss", "mean_loss", "heldout_bpb_before", "heldout_bpb_after"]
            md += [
                "",
                "Continued training on the same token budget "
                f"({'same' if salt.get('same_token_budget') else 'DIFFERENT'} budget for every init):",
                "",
                _table(["init"] + cols, [[i] + [r.get(c) for c in cols] for i, r in runs.items()]),
                "",
                "![continued training](pretrain_loss.png)",
            ]
    clo = report.get("clo") or {}
    if clo:
        md += ["", "## CLO vs SFT (same translated data, same steps)", ""]
        models = clo.get("models") or {}
        cols = ["target_prompt_share", "english_prompt_share", "nll_target", "nll_english"]
        md += [
            "Share of answers in the prompt's language (py3langid) for target-language and English prompts; "
            "held-out NLL (nats/token) of the reference answers:",
            "",
            _table(["model"] + cols, [[n] + [r.get(c) for c in cols] for n, r in models.items()]),
        ]
        tr = clo.get("training") or {}
        if tr:
            cols = ["method", "input_records", "records", "steps", "first_loss", "last_loss", "last_margin", "wall_s"]
            md += ["", _table(["run"] + cols, [[n] + [r.get(c) for c in cols] for n, r in tr.items()])]
            held = {n: r for n, r in tr.items() if r.get("heldout_curve")}
            if held:
                cols = ["heldout_records", "heldout_first_loss", "heldout_last_loss", "heldout_last_accuracy"]
                md += [
                    "",
                    "The held-out records scored with each run's own training loss, before the first step and after "
                    "the last (CLO: λ·NLL + (1 − λ)·CL and the share of pairs whose reward prefers the prompt's "
                    "language; SFT: the NLL of both directions; so compare a run with itself, not CLO with SFT):",
                    "",
                    _table(["run"] + cols, [[n] + [r.get(c) for c in cols] for n, r in held.items()]),
                ]
            md += ["", "![CLO vs SFT](clo_vs_sft.png)"]
    md += ["", "## Machine, versions, timings", ""]
    md += [_table(["", "value"], [[k, "—" if v is None else str(v)] for k, v in env.items()])]
    md += [
        "",
        _table(
            ["stage", "wall s", "process CPU s", "reused"],
            [
                [k, v.get("wall_s"), v.get("cpu_s"), "yes" if v.get("reused") else "no"]
                for k, v in report["stages"].items()
            ],
        ),
    ]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------- entry point


def build_report(results: dict[str, dict], timings: dict, env: dict, run_info: dict) -> dict:
    mt, c1 = mt_section(results)
    salt, c2 = salt_section(results)
    clo, c3 = clo_section(results)
    return {
        "run": run_info,
        "environment": env,
        "stages": timings,
        "mt": mt,
        "salt": salt,
        "clo": clo,
        "claims": c1 + c2 + c3,
    }


def write_report(ctx, timings: dict, env: dict) -> dict:
    """Write ``report.json``, ``report.md`` and the plots into the run folder; return the report."""
    import dataclasses

    cfg = ctx.cfg
    run_info = {
        "out": str(ctx.out),
        "config": str(cfg.path) if cfg.path else None,
        "quick": cfg.quick,
        "seed": cfg.run.seed,
        "src": cfg.run.src,
        "tgt": cfg.run.tgt,
        "device": cfg.device,
        "options": {k: dataclasses.asdict(cfg.section(k)) for k in ("mt", "salt", "pretrain", "clo", "eval")},
        "stage_wall_s_total": sum((t.get("wall_s") or 0.0) for t in timings.values()),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    report = build_report(ctx.results, timings, env, run_info)
    report["plots"] = _plots(report, ctx.out)
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (ctx.out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report
