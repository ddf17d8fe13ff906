"""Where the time of a SALT fit goes (issue 3): the phases of each kernel variant and of the reference.

At the paper shape (n 30,000 new tokens, m 20,000 basis rows, d_in 768, d_out 4096, fp32; k = 16 and
64, neighbours from ``select_neighbors``), CUDA-event medians of:

  full      one ``salt_fit`` call with CLTX_SALT_VARIANT=<variant> (what bench_salt_fit.py times)
  solve     the solve kernel alone with SPLIT forced on: gather, Gram, Gauss–Jordan, refinement,
            flags, the (n, K) weights written (no αᵀY)
  apply     ``_salt_apply_kernel`` alone, from those weights
  fused     the solve kernel with αᵀY fused, where the variant's default fuses it (v1 at K = 16)
  ref_gram / ref_solve / ref_apply   the reference's gather + bmm Gram, batched Cholesky solve (with
            its refinement) and sparse αᵀY; ref_total = salt_fit_reference
  order     the argsort that orders tokens by first neighbour (every Triton call pays it)

then torch.profiler's per-kernel device times of one full call per variant (top kernels), and a
small sweep of the solve kernel's launch configuration per K (warps, BLOCK_D, maxnreg, tokens a
program) and of the apply kernel. Each measurement is in its own try/except (a config that fails
to compile or to run prints one line and the run goes on); each row carries ``err``: the max over
tokens of ‖out − ref‖/‖ref‖ against the reference (SPLIT solve + apply; unconverged tokens, which
salt_fit re-solves, are counted in ``flagged``). Rows append to bench/results/salt_phases.jsonl
(GPU name, versions, git SHA, run id) as they are measured, so a run cut short keeps its rows; a
deadline (--budget-s) stops the sweep first.

  python bench/salt_phases.py                         # on the GPU machine: ≤ ~2 minutes on an H200
  TRITON_INTERPRET=1 python bench/salt_phases.py --smoke --jsonl /tmp/p.jsonl   # CPU: tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from itertools import zip_longest
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_salt_fit import with_variant  # noqa: E402
from bench.harness import machine  # noqa: E402

PAPER = {"n": 30_000, "m": 20_000, "d_in": 768, "d_out": 4096, "ks": [16, 64]}
# Smoke: the same code paths at interpreter sizes (k 9 → K 16: v1 fuses; k 17 → K 32: split).
SMOKE = {"n": 5, "m": 40, "d_in": 24, "d_out": 20, "ks": [9, 17]}

# The sweep: (variant, overrides of _config) per padded K, v3 first (the candidate), each checked with
# bench/kernel_report.py on triton 3.9 (registers a thread, no spill; configs past 255 are left out).
SWEEP = {
    16: [
        ("v3", {"num_warps": 2}),  # tf32x3 Gram, 2 tokens a warp (2026-11-27 sweep: 0.94 ms vs 1.03 on 4 warps)
        ("v3", {"TOKENS": 8, "num_warps": 4}),
        ("v3-ieee", {"num_warps": 2}),  # full-fp32 Gram (1.83 ms on 2 warps, 1.70 on 1 in that sweep)
        ("v3-ieee", {"TOKENS": 8, "num_warps": 2}),
        ("v3", {"SPLIT": False, "BLOCK_N": 64}),  # αᵀY fused into the solve
    ],
    64: [
        ("v3", {"num_stages": 2}),
        ("v3", {"BLOCK_D": 32}),  # 16.4 ms vs 13.0 in that sweep
    ],
}
# Apply-kernel configurations tried per K (on the default variant's weights).
APPLY_SWEEP = {
    16: [
        {"APPLY_BLOCK_N": 512, "APPLY_TOKENS": 2},  # 0.95 ms vs 1.25 (default 256 / 2) in that sweep
        {"APPLY_BLOCK_N": 512, "APPLY_TOKENS": 4},
        {"APPLY_BLOCK_N": 1024, "APPLY_TOKENS": 1, "apply_warps": 8},
    ],
    64: [{"APPLY_BLOCK_N": 128, "APPLY_TOKENS": 2}, {"APPLY_BLOCK_N": 256, "APPLY_TOKENS": 1}],
}
SMOKE_SWEEP = {16: [("v3", {"SPLIT": False, "BLOCK_N": 16})], 32: [("v2", {"BLOCK_D": 16})]}
SMOKE_APPLY_SWEEP = {16: [{"APPLY_BLOCK_N": 16, "APPLY_TOKENS": 3}], 32: []}


class Runner:
    """Times callables (CUDA events or wall clock), keeps rows, appends them to the JSONL file."""

    def __init__(self, device: str, repeats: int, warmup: int, jsonl: Path | None, base: dict):
        self.device, self.repeats, self.warmup, self.jsonl, self.base = device, repeats, warmup, jsonl, base
        self.cuda = device.startswith("cuda")
        self.rows: list[dict] = []
        self.info = machine()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def add(self, **row) -> dict:
        row = {**self.base, **row}
        self.rows.append(row)
        ms = row.get("ms")
        err = row.get("err")
        print(
            f"  k={row['k']:<3} {row['variant']:<10} {row['phase']:<9} "
            f"{'' if ms is None else f'{ms:9.3f} ms'} {'' if err is None else f'err {err:.1e}'} "
            f"{row.get('config', '')} {row.get('error', '')}",
            flush=True,
        )
        if self.jsonl is not None:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with open(self.jsonl, "a") as fh:
                fh.write(json.dumps({"bench": "salt_phases", **self.info, **row}) + "\n")
        return row

    def measure(self, k, variant, phase, fn, *, config="", check=None, **extra):
        """Time ``fn`` (its first call compiles); ``check()`` → (err, flagged) afterwards."""
        try:
            ms = self.time_ms(fn)
            err, flagged = check() if check is not None else (None, None)
            return self.add(k=k, variant=variant, phase=phase, ms=ms, err=err, flagged=flagged, config=config, **extra)
        except Exception as exc:  # one failure must not stop the run
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:240] if str(exc).strip() else ''}"
            if os.environ.get("SALT_PHASES_TRACEBACK"):
                traceback.print_exc()
            return self.add(k=k, variant=variant, phase=phase, ms=None, config=config, error=msg, **extra)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    d = (out.float() - ref.float()).norm(dim=1)
    return (d / ref.float().norm(dim=1).clamp(min=1e-12)).max().item()


def describe(
    cfg: dict, keys=("K", "BLOCK_D", "num_warps", "num_stages", "maxnreg", "TOKENS", "PRECISION", "UNROLL", "SPLIT")
) -> str:
    short = {"BLOCK_D": "D", "BLOCK_N": "N", "num_warps": "w", "num_stages": "s", "TOKENS": "T", "maxnreg": "maxnreg="}
    short["K"] = "K"
    parts = []
    for key in keys:
        if key not in cfg or cfg[key] is None:
            continue
        v = cfg[key]
        if key == "PRECISION":
            parts.append("" if v == "ieee" else v)
        elif key == "UNROLL":
            parts.append("unrolled" if v else "loop")
        elif key == "SPLIT":
            parts.append("split" if v else f"fused N{cfg.get('BLOCK_N')}")
        else:
            parts.append(f"{short[key]}{v}")
    return " ".join(p for p in parts if p)


def reference_phases(run: Runner, k, xq, xb, yb, nb):
    """The reference's three phases, timed apart (its own chunking and solve; fp32 inputs)."""
    from cltx.kernels import reference_salt as rs

    n, d_in = xq.shape
    c = rs._chunk_rows(k, d_in, None)
    valid = (nb >= 0).to(torch.float32)
    G = torch.empty(n, k, k, dtype=torch.float32, device=xq.device)
    r = torch.empty(n, k, dtype=torch.float32, device=xq.device)

    def gram():
        for s in range(0, n, c):
            e = min(n, s + c)
            X = xb.index_select(0, nb[s:e].clamp(min=0).reshape(-1)).view(e - s, k, d_in).float()
            torch.bmm(X, X.transpose(1, 2), out=G[s:e])
            r[s:e] = torch.bmm(X, xq[s:e].float()[:, :, None])[:, :, 0]
        G.mul_(valid[:, :, None] * valid[:, None, :])
        r.mul_(valid)

    block = max(c, min(n, rs._CHUNK_BYTES // (4 * k * k)))
    alpha = torch.zeros(n, k, dtype=torch.float32, device=xq.device)

    def solve():
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            a, _ = rs._solve(G[b0:b1].clone(), r[b0:b1], valid[b0:b1].sum(-1), 0.0, 1e-5, 1)
            alpha[b0:b1] = a * valid[b0:b1]

    run.measure(k, "reference", "ref_gram", gram, config=f"chunk {c}")
    run.measure(k, "reference", "ref_solve", solve, config=f"block {block} (no float64 redo)")
    run.measure(k, "reference", "ref_apply", lambda: rs.apply_alpha(alpha, nb, yb), config="sparse CSR @ Y")


def profile_full(run: Runner, k, variant, fn, top: int):
    """torch.profiler's device time per kernel of one call (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        fn()
        run.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.cuda else [])
        with profile(activities=acts) as prof:
            fn()
            run.sync()
        events = []
        for e in prof.key_averages():
            dev = getattr(e, "self_device_time_total", None)
            if dev is None:
                dev = getattr(e, "self_cuda_time_total", 0)
            t = dev if run.cuda else e.self_cpu_time_total
            if t and t > 0:
                events.append((t / 1e3, e.count, e.key))
        events.sort(reverse=True)
        total = sum(t for t, _, _ in events)
        out = []
        for t, count, name in events[:top]:
            out.append({"kernel": name[:60], "ms": round(t, 4), "calls": count, "share": round(t / total, 3)})
        run.add(k=k, variant=variant, phase="profile", ms=total, config="sum of kernels", kernels=out)
        for o in out:
            print(f"      {o['ms']:9.3f} ms {o['share']:6.1%} x{o['calls']:<3} {o['kernel']}", flush=True)
    except Exception as exc:
        run.add(k=k, variant=variant, phase="profile", ms=None, error=f"{type(exc).__name__}: {str(exc)[:200]}")


class Problem:
    """One k: the inputs, the reference output, and the launches of each variant's phases."""

    def __init__(self, run: Runner, sf, k, xq, xb, yb, nb, ref, interp):
        self.run, self.sf, self.k, self.xq, self.xb, self.yb, self.nb, self.ref = run, sf, k, xq, xb, yb, nb, ref
        self.interp = interp
        self.d_in, self.d_out = xq.shape[1], yb.shape[1]
        self.K = self.config("v1")["K"]

    def config(self, variant):
        return self.sf._config(self.k, self.d_in, self.d_out, interpret=self.interp, variant=variant)

    def launch(self, variant, over=None, split=True):
        cfg = {**self.config(variant), **(over or {})}
        if split:
            cfg["SPLIT"] = True
        return self.sf._SaltLaunch(self.xq, self.xb, self.yb, self.nb, 0.0, False, variant=variant, cfg=cfg)

    def checker(self, lc, with_apply=True):
        def check():
            if with_apply:
                lc.apply()
            self.run.sync()
            return rel_err(lc.out, self.ref), int(lc.flags.sum())

        return check

    def phases(self, variant):
        """solve (SPLIT) and apply alone; fused too where the variant's default fuses αᵀY."""
        run, k = self.run, self.k
        try:
            lc = self.launch(variant)
        except Exception as exc:
            run.add(k=k, variant=variant, phase="solve", ms=None, error=f"{type(exc).__name__}: {exc}"[:240])
            return
        run.measure(k, variant, "solve", lc.solve, config=describe(lc.cfg), check=self.checker(lc))
        run.measure(
            k, variant, "apply", lc.apply, config=describe(lc.apply_meta or {}, ("BLOCK_N", "TOKENS", "num_warps"))
        )
        if not self.config(variant)["SPLIT"]:
            try:
                fused = self.launch(variant, split=False)
            except Exception as exc:
                run.add(k=k, variant=variant, phase="fused", ms=None, error=f"{type(exc).__name__}: {exc}"[:240])
                return
            run.measure(k, variant, "fused", fused.solve, config=describe(fused.cfg), check=self.checker(fused, False))

    def sweep_solve(self, variant, over):
        try:
            lc = self.launch(variant, over, split=over.get("SPLIT", True))
        except Exception as exc:
            self.run.add(k=self.k, variant=variant, phase="sweep", ms=None, config=str(over), error=repr(exc)[:240])
            return
        check = self.checker(lc, with_apply=lc.cfg["SPLIT"])
        self.run.measure(self.k, variant, "sweep", lc.solve, config=describe(lc.cfg), check=check)

    def sweep_apply(self, over):
        variant = self.sf._variant()
        try:
            lc = self.launch(variant, over)
            lc.solve()
        except Exception as exc:
            self.run.add(k=self.k, variant=variant, phase="sweep_apl", ms=None, config=str(over), error=repr(exc)[:240])
            return
        cfg = describe(lc.apply_meta or {}, ("BLOCK_N", "TOKENS", "num_warps"))
        self.run.measure(self.k, variant, "sweep_apl", lc.apply, config=cfg, check=self.checker(lc, False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU through the Triton interpreter")
    ap.add_argument("--ks", type=int, nargs="*", default=None)
    ap.add_argument("--variants", nargs="*", default=None, help="default: every variant in salt_fit.VARIANTS")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--top", type=int, default=4, help="kernels listed per profiled call")
    ap.add_argument("--budget-s", type=float, default=100.0, help="no new sweep config starts after this")
    ap.add_argument(
        "--jsonl", type=Path, default=None, help="default: bench/results/salt_phases.jsonl (none in --smoke)"
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda:
        if not args.smoke:
            print("salt_phases: needs a CUDA device (or --smoke for the CPU interpreter run)", file=sys.stderr)
            return 2
        # The kernels run on the CPU only through Triton's interpreter (set before triton loads).
        os.environ["TRITON_INTERPRET"] = "1"
    import cltx.kernels.salt_fit  # noqa: F401
    from cltx.kernels import salt_fit, select_neighbors
    from cltx.kernels.reference import salt_fit_reference

    sf = sys.modules["cltx.kernels.salt_fit"]
    shape = dict(SMOKE if args.smoke else PAPER)
    ks = args.ks or shape["ks"]
    variants = args.variants or list(sf.VARIANTS)
    device = "cuda" if cuda else "cpu"
    repeats = args.repeats or (5 if cuda else 1)
    jsonl = args.jsonl if args.jsonl is not None else (None if args.smoke else ROOT / "bench/results/salt_phases.jsonl")
    n, m, d_in, d_out = shape["n"], shape["m"], shape["d_in"], shape["d_out"]
    run = Runner(device, repeats, 1 if cuda else 0, jsonl, {"n": n, "m": m, "d_in": d_in, "d_out": d_out})
    interp = not cuda
    print(
        f"salt_phases: n={n} m={m} d_in={d_in} d_out={d_out} fp32 on {run.info.get('gpu') or device}"
        f"{' (Triton interpreter)' if interp else ''}; ks={ks} variants={variants}; torch {run.info['torch']} "
        f"triton {run.info['triton']} sha {run.info['sha']} run {run.info['run_id']}",
        flush=True,
    )
    g = torch.Generator(device=device).manual_seed(0)
    xq = torch.randn(n, d_in, device=device, generator=g)
    xb = torch.randn(m, d_in, device=device, generator=g)
    yb = torch.randn(m, d_out, device=device, generator=g)
    sweep = SMOKE_SWEEP if args.smoke else SWEEP
    apply_sweep = SMOKE_APPLY_SWEEP if args.smoke else APPLY_SWEEP

    problems = {}
    for k in ks:  # 1. every phase of every variant, and the reference's, per k
        nb, _ = select_neighbors(xq, xb, k_max=k, k_min=k)
        p = Problem(run, sf, k, xq, xb, yb, nb, salt_fit_reference(xq, xb, yb, nb), interp)
        problems[k] = p
        print(f"== k={k} (K={p.K})", flush=True)
        run.measure(k, "-", "order", lambda nb=nb: torch.argsort(nb[:, 0]).to(torch.int32), config="argsort")
        run.measure(k, "reference", "ref_total", lambda nb=nb: salt_fit_reference(xq, xb, yb, nb))
        reference_phases(run, k, xq, xb, yb, nb)
        for variant in variants:
            full = with_variant(lambda nb=nb: salt_fit(xq, xb, yb, nb), variant)
            run.measure(k, variant, "full", full, check=lambda full=full, p=p: (rel_err(full(), p.ref), None))
            p.phases(variant)
    if not args.no_profile:  # 2. per-kernel device times of one call each
        for k, p in problems.items():
            print(f"-- profile k={k} (one call each, top {args.top} kernels by device time)", flush=True)
            for variant in variants:
                full = with_variant(lambda nb=p.nb: salt_fit(xq, xb, yb, nb), variant)
                profile_full(run, k, variant, full, args.top)
            profile_full(run, k, "reference", lambda nb=p.nb: salt_fit_reference(xq, xb, yb, nb), args.top)
    if not args.no_sweep:  # 3. launch configurations, until the budget is spent
        # Interleaved, largest K first (k = 64 misses the target most), so a cut budget loses the tail
        # of both lists, not all of one; then the apply kernel's configurations.
        by_k = [[(p, v, over) for v, over in sweep.get(p.K, []) if v in sf.VARIANTS] for p in problems.values()]
        by_k.sort(key=lambda rows: -(rows[0][0].K if rows else 0))
        order = [row for group in zip_longest(*by_k) for row in group if row is not None]
        order += [(p, None, over) for p in problems.values() for over in apply_sweep.get(p.K, [])]
        print(f"-- sweep ({len(order)} configs; solve alone with SPLIT, then the apply kernel)", flush=True)
        for p, variant, over in order:
            if time.perf_counter() - t_start > args.budget_s:
                print(f"  sweep stopped: past the {args.budget_s:.0f} s budget", flush=True)
                break
            if variant is None:
                p.sweep_apply(over)
            else:
                p.sweep_solve(variant, over)

    print_summary(run.rows)
    took = time.perf_counter() - t_start
    print(f"salt_phases: {len(run.rows)} rows in {took:.0f} s" + (f" → {jsonl}" if jsonl else ""))
    return 0


def print_summary(rows: list[dict]) -> None:
    """One compact table: per k, each variant's full / solve / apply (/ fused), the reference's phases."""
    print("\n== summary (median ms; err = max rel. error vs the reference output)")
    for k in sorted({r["k"] for r in rows}):
        sel = [r for r in rows if r["k"] == k and r["phase"] not in ("profile",)]
        by = {}
        for r in sel:
            by.setdefault(r["variant"], {})[r["phase"]] = r
        print(f"k={k}: {'variant':<10} {'full':>8} {'solve':>8} {'apply':>8} {'fused':>8}  solve config")
        for variant, ph in by.items():
            if variant in ("-", "reference"):
                continue

            def cell(p, ph=ph):
                r = ph.get(p)
                return f"{r['ms']:8.3f}" if r and r.get("ms") is not None else f"{'-':>8}"

            cfg = ph.get("solve", {}).get("config", "")
            print(f"      {variant:<10} {cell('full')} {cell('solve')} {cell('apply')} {cell('fused')}  {cfg}")
        refs = by.get("reference", {})
        parts = [f"{p} {refs[p]['ms']:.3f}" for p in ("ref_total", "ref_gram", "ref_solve", "ref_apply") if p in refs]
        parts += [f"order {by['-']['order']['ms']:.3f}"] if "-" in by and by["-"].get("order", {}).get("ms") else []
        print("      reference: " + ", ".join(p for p in parts if p))
        sw = [r for r in sel if r["phase"] in ("sweep", "sweep_apl") and r.get("ms") is not None]
        for r in sorted(sw, key=lambda r: (r["phase"], r["ms"])):
            print(
                f"      {r['phase']:<9} {r['variant']:<10} {r['ms']:8.3f}  err {r.get('err') or 0:.1e}  {r['config']}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
