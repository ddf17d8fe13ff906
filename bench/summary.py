"""One short table of the issue targets from the benchmark rows of a GPU run.

Reads ``bench/results/salt_fit.jsonl`` and ``bench/results/clo_loss.jsonl`` (rows written by
bench_salt_fit.py and bench_clo_loss.py), keeps the GPU rows written at or after ``--since``, and
prints, per measured case, each cltx provider's time, its ratio (salt: to plain PyTorch of the
same run and k; clo: to the floor 6·N·H·V at the run's measured matmul rate), the issue's target
and whether it is met, and the memory verdict. ``bash bench/gpu_check.sh`` calls it last.

  python bench/summary.py --since 2026-11-26T05:00:00
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

SALT_TARGET = 0.25  # issue 3: ≤ 0.25× plain PyTorch in the same run
SALT_PEAK_SLACK = 0.10  # peak ≤ inputs + output + 10 %


def clo_target(preset: str, budget: float | None) -> float | None:
    """Issue 4's bound on time / floor for one case (None: no target for it)."""
    if budget is None:
        return None
    if budget <= 0.25 + 1e-9:
        return 1.7
    if abs(budget - 2.0) < 1e-9:
        return 1.45 if preset == "long" else 1.15
    return None


def _rows(path: Path, since: str | None) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not r.get("gpu") or (since and str(r.get("date", "")) < since):
            continue
        out.append(r)
    return out


def salt_lines(rows: list[dict]) -> list[list[str]]:
    lines = []
    plain = {(r["run_id"], r["k"]): r for r in rows if r.get("provider") == "plain"}
    for r in rows:
        prov = str(r.get("provider", ""))
        if not prov.startswith("cltx") or (r["run_id"], r["k"]) not in plain:
            continue
        ratio = r["ms"] / plain[(r["run_id"], r["k"])]["ms"]
        peak, io = r.get("peak_gib"), r.get("io_gib")
        mem = (
            "-"
            if peak is None or io is None
            else f"{peak:.3f}/{io * (1 + SALT_PEAK_SLACK):.3f} GiB "
            + ("met" if peak <= io * (1 + SALT_PEAK_SLACK) else "MISSED")
        )
        lines.append(
            [
                "salt_fit",
                f"k={r['k']}",
                prov,
                f"{r['ms']:.2f}",
                f"{ratio:.3f}x plain",
                f"<= {SALT_TARGET}",
                "met" if ratio <= SALT_TARGET else "MISSED",
                mem,
            ]
        )
    return lines


def clo_lines(rows: list[dict]) -> list[list[str]]:
    lines = []
    # Issue 4 also asks, under the default budget at 8k and 32k, for no more time than CCE-filtered's
    # in the same run (the bench measures it beside cltx when cut-cross-entropy is installed).
    cce = {(r["run_id"], r["preset"]): r["ms"] for r in rows if r.get("provider") == "cce-filtered"}
    for r in rows:
        if r.get("bench") != "clo_loss" or not str(r.get("provider", "")).startswith("cltx"):
            continue
        target = clo_target(str(r.get("preset")), r.get("budget_gib"))
        x = r.get("x_floor")
        if x is None:
            continue
        budget, grads, over = r.get("budget_gib"), r.get("grads_gib"), r.get("peak_over_inputs_gib")
        mem = "-"
        if None not in (budget, grads, over):
            mem = f"{over:.2f}/{grads + budget:.2f} GiB " + ("met" if over <= grads + budget + 1e-6 else "MISSED")
        verdict = "-" if target is None else ("met" if x <= target else "MISSED")
        ref = cce.get((r["run_id"], r["preset"]))
        if target == 1.15 and ref is not None:
            verdict += f"; vs CCE-filtered {ref:.2f} ms: " + ("met" if r["ms"] <= ref else "MISSED")
        lines.append(
            [
                "clo_loss",
                f"{r['preset']} budget={budget} {r.get('mode')}",
                str(r["provider"]),
                f"{r['ms']:.2f}",
                f"{x:.4f}x floor",
                "-" if target is None else f"<= {target}",
                verdict,
                mem,
            ]
        )
    return lines


def table(lines: list[list[str]]) -> str:
    head = ["kernel", "case", "provider", "ms", "ratio", "target", "verdict", "peak (limit)"]
    rows = [head, *lines]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--since", help="ISO time: only rows dated at or after it (the run's start)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the results .jsonl files")
    args = ap.parse_args(argv)
    lines = salt_lines(_rows(args.results / "salt_fit.jsonl", args.since))
    lines += clo_lines(_rows(args.results / "clo_loss.jsonl", args.since))
    if not lines:
        print("summary: no GPU benchmark rows" + (f" since {args.since}" if args.since else ""))
        return 0
    print(table(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
