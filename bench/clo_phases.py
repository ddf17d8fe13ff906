"""Phase breakdown of the CLO loss's pair plan: where the time over the 6·N·H·V floor goes (issue 4).

Cases (bf16, H 4096, V 128256, default 2 GiB budget, pair plan forced): ``8k`` (4 pairs × 2 × 1,024 tokens,
one chunk), ``32k`` (8 pairs × 2 × 2,048, four chunks of two pairs), ``8k-frozen`` (the 8k preset with a
frozen LM head: no weight gradient, floor 4·N·H·V). For each case and provider (``cltx``; ``cltx_overlap`` =
``CLTX_CLO_OVERLAP=1``):

(a) **products**: every matmul one call issues, captured with its exact shapes, strides, dtypes and out= /
    accumulate variant (a ``TorchDispatchMode`` over one call, holding the call's own tensors), then replayed
    alone on those tensors (per product: ms, TFLOP/s; summed: "products alone") and back to back in call
    order ("products in sequence": the same products under a sustained load). Products in sequence over the
    floor (6·N·H·V at the 8192³ rate) is the part of the gap that belongs to cuBLAS at these shapes. For the
    first provider, the same again through cuBLASLt (``torch.backends.cuda.preferred_blas_library``): do its
    heuristics pick faster kernels for these shapes?
(b) **row kernels** alone on a chunk-sized logits buffer: ms and GB/s against the measured copy bandwidth;
    once the cases are done, a few ``BLOCK_V`` / ``num_warps`` configurations beside the default (Triton path;
    ``--no-sweep`` skips them).
(c) **profile** of one whole step (loss forward + backward, torch.profiler with CUDA activity): per kernel
    name, count and total ms (% of the step); kernel sum by class (gemm, row, copy, other), busy time (the
    union of kernel intervals: below the sum where kernels overlap) and gaps = step − busy (host work,
    launches, syncs). Host syncs per step are counted with ``torch.cuda.set_sync_debug_mode("warn")``.

Prints, as each case and provider finishes, its headline, products, row kernels and top kernels, then one
summary table; appends one row per case and provider (and one for the sweep) to ``--results`` (default
``bench/results/clo_phases.jsonl``; gpu_clo.sh sends them to clo_loss.jsonl), with GPU name, versions and git
SHA from bench.harness. About a minute on an H200; no case starts after ``--time-budget`` seconds, and a phase
that fails is reported while the others still run.

``--smoke`` runs the same code on the CPU at tiny sizes (the reference row operations, or the Triton
interpreter with TRITON_INTERPRET=1; CPU-only profile, no sync count) so that the script cannot rot: a CPU
test runs it.

Usage: ``python bench/clo_phases.py [--case 8k 32k 8k-frozen] [--providers cltx cltx_overlap] [--no-sweep]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from bench.bench_clo_loss import PRESETS, make_inputs, step  # noqa: E402
from cltx.kernels.clo_loss import TRITON_ROW_OPS, clo_loss, last_plan  # noqa: E402
from cltx.kernels.reference_clo import REFERENCE_ROW_OPS, padded_cols  # noqa: E402

PROVIDERS = ("cltx", "cltx_overlap")
OVERLAP_ENV = "CLTX_CLO_OVERLAP"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    preset: str
    train_weight: bool = True
    budget_gib: float = 2.0


CASES = {
    "8k": Case("8k", "8k"),
    "32k": Case("32k", "32k"),
    "8k-frozen": Case("8k-frozen", "8k", train_weight=False),
}
# CPU smoke: one chunk, two chunks of one pair each (the gathered weight-gradient rows), a frozen head.
SMOKE_CASES = {
    "quick": Case("quick", "quick"),
    "quick-chunks": Case("quick-chunks", "quick", budget_gib=1e-6),
    "quick-frozen": Case("quick-frozen", "quick", train_weight=False),
}
# Row-kernel configurations timed beside the default (BLOCK_V, num_warps) once all cases are done (the smoke run's
# under the interpreter: the same code at small blocks).
ROW_SWEEP = ((2048, 4), (8192, 8), (8192, 16), (16384, 16))
SMOKE_SWEEP = ((128, 1), (512, 2))
MM_OPS = {"aten::mm", "aten::addmm", "aten::addmm_"}  # what the pair plan calls (mm.out, addmm_, .dtype …)
RESULTS_FILE = harness.RESULTS / "clo_phases.jsonl"
ALLOC_OPS = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros", "aten::zeros_like"}


# ---------------------------------------------------------------------------------------------------
# (a) The products one call issues, captured and replayed
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Product:
    """One captured matmul: the aten overload and the call's own arguments (replaying it rewrites its out)."""

    func: object
    args: tuple
    kwargs: dict
    role: str
    desc: str
    flops: int

    def run(self):
        return self.func(*self.args, **self.kwargs)


def _layout(t: torch.Tensor) -> str:
    """N: row-major, T: column-major (a transposed view), with the leading dimension."""
    if t.stride(-1) == 1:
        return f"N(ld {t.stride(0)})"
    if t.stride(0) == 1:
        return f"T(ld {t.stride(1)})"
    return f"S{tuple(t.stride())}"


class _Capture(TorchDispatchMode):
    """Logs every aten call of one step: the matmuls with their arguments, the rest counted by name."""

    def __init__(self, H: int, V: int):
        super().__init__()
        self.H, self.V = H, V
        self.products: list[Product] = []
        self.ops: collections.Counter = collections.Counter()
        self.allocs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if name in MM_OPS:
            a, b = (args[0], args[1]) if name == "aten::mm" else (args[1], args[2])
            res = out if isinstance(out, torch.Tensor) else kwargs.get("out")
            M, K = a.shape
            N = b.shape[1]
            role = "grad_w = dzᵀ·h" if M == self.V else ("logits = h·Wᵀ" if K == self.H else "grad_h = dz·W")
            extra = ""
            if name == "aten::addmm_" or (name == "aten::addmm" and res.data_ptr() == args[0].data_ptr()):
                extra = " +="  # accumulates into its output
            elif name == "aten::addmm":
                extra = " +bias"
            desc = (
                f"{func.__name__:16s} {M}x{K}·{K}x{N} A {_layout(a)} B {_layout(b)} "
                f"→ {str(res.dtype).replace('torch.', '')} {_layout(res)}{extra}"
            )
            self.products.append(Product(func, args, kwargs, role, desc, 2 * M * N * K))
        elif name in ALLOC_OPS:
            self.allocs += 1
        elif not getattr(func, "is_view", False) and name not in ("aten::detach", "aten::alias", "aten::lift_fresh"):
            self.ops[name] += 1
        return out


def capture(fn, H: int, V: int) -> _Capture:
    cap = _Capture(H, V)
    with cap:
        fn()
    return cap


def blas_libraries(device: str) -> list[str]:
    """The cuBLAS front ends the products are timed through: torch's default and, on CUDA, cuBLASLt."""
    return ["default", "cublaslt"] if device == "cuda" else ["default"]


@contextlib.contextmanager
def blas_library(name: str):
    """Route torch's matmuls through ``name`` (``torch.backends.cuda.preferred_blas_library``) inside."""
    if name == "default":
        yield
        return
    old = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(old)


def time_products(cap: _Capture, device: str, args, others: bool = False) -> dict:
    """Each distinct product alone (median ms), their count-weighted sum, and all of them back to back; with
    ``others``, the same through the other BLAS front ends too (does cuBLASLt pick faster kernels here?)."""
    by_sig: dict[str, list[Product]] = {}
    for p in cap.products:
        by_sig.setdefault(p.desc, []).append(p)
    libs = blas_libraries(device) if others else ["default"]
    out = {"products": [], "product_flops": sum(p.flops for p in cap.products), "blas_libraries": libs}
    recs: dict[str, dict] = {}
    with torch.no_grad():
        for lib in libs:
            suffix = "" if lib == "default" else f"_{lib}"
            try:
                with blas_library(lib):
                    alone = 0.0
                    for sig, ps in by_sig.items():
                        r = harness.measure(ps[0].run, device=device, warmup=1, repeats=args.repeats, max_seconds=2)
                        alone += r["ms"] * len(ps)
                        rec = recs.setdefault(sig, {"role": ps[0].role, "product": sig, "count": len(ps)})
                        rec[f"ms{suffix}"] = r["ms"]
                        rec[f"tflops{suffix}"] = ps[0].flops / (r["ms"] * 1e-3) / 1e12
                    seq = harness.measure(
                        lambda: [p.run() for p in cap.products],
                        device=device,
                        warmup=1,
                        repeats=args.repeats,
                        max_seconds=4,
                    )
            except Exception as e:  # another front end that cannot run these products: the default's still count
                if lib == "default":
                    raise
                print(f"# products through {lib} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                out["blas_libraries"] = [x for x in out["blas_libraries"] if x != lib]
                for rec in recs.values():
                    rec.pop(f"ms{suffix}", None)
                    rec.pop(f"tflops{suffix}", None)
                continue
            out[f"products_alone_ms{suffix}"] = alone
            out[f"products_seq_ms{suffix}"] = seq["ms"]
    out["products"] = list(recs.values())
    return out


# ---------------------------------------------------------------------------------------------------
# (b) The row kernels alone
# ---------------------------------------------------------------------------------------------------


def time_rows(n: int, V: int, dtype, device: str, row_ops: dict, args, sweep: tuple) -> dict:
    """stats (one read of n×V logits) and grad (one read, one write) on a chunk-sized buffer, with the default
    configuration and each (BLOCK_V, num_warps) of ``sweep`` (Triton only)."""
    g = torch.Generator(device=device).manual_seed(1)
    ld = padded_cols(V)
    z0 = (torch.randn(n, ld, device=device, generator=g) * 2).to(dtype)[:, :V]
    z = torch.empty(n, ld, dtype=dtype, device=device)[:, :V]  # the chunk buffer's layout: rows padded to 8 elements
    z.copy_(z0)
    labels = torch.randint(0, V, (n,), device=device, generator=g)
    labels[: n // 4] = -100
    coef = torch.randn(n, device=device, generator=g) * 1e-3
    elt = z.element_size()
    configs = [None, *sweep]
    out = {"rows_tokens": n, "rows_sweep": []}
    for cfg in configs:
        kw = {} if cfg is None else {"config": {"BLOCK_V": cfg[0], "num_warps": cfg[1]}}
        try:
            lse, _ = row_ops["stats"](z, labels, 0, **kw)
            st = harness.measure(
                lambda kw=kw: row_ops["stats"](z, labels, 0, **kw),
                device=device,
                warmup=1,
                repeats=args.repeats,
                max_seconds=2,
            )
            gr = harness.measure(
                lambda kw=kw, lse=lse: row_ops["grad"](z, labels, lse, coef, 0, **kw),
                device=device,
                warmup=1,
                repeats=args.repeats,
                max_seconds=2,
            )
        except Exception as e:  # a configuration this GPU cannot run: reported, not fatal
            out["rows_sweep"].append({"config": cfg, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        rec = {
            "config": cfg,
            "stats_ms": st["ms"],
            "stats_gbps": n * V * elt / (st["ms"] * 1e-3) / 1e9,
            "grad_ms": gr["ms"],
            "grad_gbps": 2 * n * V * elt / (gr["ms"] * 1e-3) / 1e9,
        }
        if cfg is None:
            out.update({k: v for k, v in rec.items() if k != "config"})
        else:
            out["rows_sweep"].append(rec)
        z.copy_(z0)
    return out


# ---------------------------------------------------------------------------------------------------
# (c) One profiled step
# ---------------------------------------------------------------------------------------------------


def kernel_class(name: str) -> str:
    low = name.lower()
    if "_clo_row" in low:
        return "row"
    gemm_keys = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_", "sm80_", "matmul", "aten::mm", "aten::addmm")
    if any(k in low for k in gemm_keys):
        return "gemm"
    if "memcpy" in low or "copy" in low or "memset" in low:
        return "copy"
    return "other"


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total / 1e3


def profile_step(fn, device: str) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    harness.sync(device)
    with profile(activities=acts) as prof:
        fn()
        harness.sync(device)
    by_name: dict[str, list[float]] = {}
    intervals = []
    if cuda:
        for e in prof.events():
            if getattr(e, "device_type", None) != DeviceType.CUDA:
                continue
            a, b = e.time_range.start, e.time_range.end
            intervals.append((a, b))
            by_name.setdefault(e.name, []).append((b - a) / 1e3)
    else:  # CPU: the aten ops' own time stands in for kernels
        for e in prof.key_averages():
            if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
                by_name[e.key] = [e.self_cpu_time_total / 1e3 / max(e.count, 1)] * e.count
    kernels = sorted(
        ({"name": k, "class": kernel_class(k), "count": len(v), "ms": sum(v)} for k, v in by_name.items()),
        key=lambda r: -r["ms"],
    )
    classes = collections.Counter()
    for k in kernels:
        classes[k["class"]] += k["ms"]
    return {
        "kernels": kernels,
        "kernel_sum_ms": sum(k["ms"] for k in kernels),
        "busy_ms": _union_ms(intervals) if cuda else None,
        "n_kernels": sum(k["count"] for k in kernels),
        **{f"{c}_ms": classes.get(c, 0.0) for c in ("gemm", "row", "copy", "other")},
    }


def count_syncs(fn, device: str) -> tuple[int | None, list[str]]:
    """Host syncs of one step (CUDA only): torch's sync debug mode warns at each synchronising call."""
    if device != "cuda":
        return None, []
    harness.sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    harness.sync(device)
    sites = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    return len(sites), sites


# ---------------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------------


def provider_fn(prov: str, inp: dict, budget: float):
    h, w, lab = inp["hidden"], inp["weight"], inp["labels"]

    def loss():
        old = os.environ.get(OVERLAP_ENV)
        os.environ[OVERLAP_ENV] = "1" if prov == "cltx_overlap" else "0"
        try:
            return clo_loss(
                h, w, lab, inp["ref_c"], inp["ref_r"], inp["nll_mask"], memory_budget_gib=budget, mode="pair"
            )[0]
        finally:
            if old is None:
                del os.environ[OVERLAP_ENV]
            else:
                os.environ[OVERLAP_ENV] = old

    return loss


def run_case(case: Case, args, device: str, dtype, rate: float, copy_gbps: float | None) -> list[dict]:
    preset = PRESETS[case.preset]
    P, T, H, V = preset["P"], preset["T"], preset["H"], preset["V"]
    N = 2 * P * T
    inp = make_inputs(preset, device, dtype)
    if not case.train_weight:
        inp["weight"].requires_grad_(False)
    flops = (6 if case.train_weight else 4) * N * H * V
    floor_ms = flops / (rate * 1e12) * 1e3
    rows = []
    rows_done = False
    for prov in args.providers:
        loss = provider_fn(prov, inp, case.budget_gib)

        def fn(loss=loss):
            return step(loss, inp)

        for _ in range(args.warmup):
            fn()
        plan = last_plan()
        if plan.mode != "pair":
            raise RuntimeError(f"{case.name}: expected the pair plan, got {plan.mode}")
        meas = harness.measure(fn, device=device, warmup=0, repeats=args.repeats, max_seconds=args.max_seconds)
        # each phase on its own: one that fails (a profiler without CUPTI, a kernel configuration) is reported
        # and the others still come back from the one unattended run
        cap = _phase("capture", None, capture, fn, H, V)
        others = prov == args.providers[0]  # the other BLAS front ends: once per case
        prod = {} if cap is None else _phase("products", {}, time_products, cap, device, args, others)
        seq_ms, pflops = prod.get("products_seq_ms"), prod.get("product_flops")
        row = {
            "case": case.name,
            "provider": prov,
            "preset": case.preset,
            "tokens": N,
            "H": H,
            "V": V,
            "dtype": str(dtype).replace("torch.", ""),
            "budget_gib": case.budget_gib,
            "weight_grad": case.train_weight,
            "path": plan.path,
            "chunks": len(plan.chunks),
            "chunk_tokens": plan.max_tokens,
            "matmul_tflops": rate,
            "copy_gbps": copy_gbps,
            "floor_ms": floor_ms,
            "step_ms": meas["ms"],
            "step_ms_min": meas["ms_min"],
            "peak_gib": meas["peak_gib"],
            "x_floor": meas["ms"] / floor_ms,
            "products": prod.get("products", []),
            "products_alone_ms": prod.get("products_alone_ms"),
            "products_seq_ms": seq_ms,
            **{k: v for k, v in prod.items() if k.startswith("products_") and k.count("_ms_")},
            "blas_libraries": prod.get("blas_libraries"),
            "product_flops": pflops,
            "x_floor_products": None if seq_ms is None else seq_ms / floor_ms,
            "product_flops_over_floor": None if pflops is None else pflops / flops,  # 1: the floor's work exactly
            "products_tflops": None if seq_ms is None else pflops / (seq_ms * 1e-3) / 1e12,
            "aten_ops": None if cap is None else sum(cap.ops.values()),
            "aten_allocs": None if cap is None else cap.allocs,
            "aten_top": None if cap is None else cap.ops.most_common(8),
        }
        del cap
        if not rows_done:  # the row kernels do not depend on the provider
            row_ops = TRITON_ROW_OPS if plan.path == "triton" else REFERENCE_ROW_OPS
            row.update(_phase("rows", {}, time_rows, plan.max_tokens, V, dtype, device, row_ops, args, ()))
            if "stats_ms" in row:
                row["rows_step_ms"] = len(plan.chunks) * (row["stats_ms"] + row["grad_ms"])
            rows_done = True
        prof = _phase("profile", {"kernels": [], "busy_ms": None}, profile_step, fn, device)
        row.update(prof)
        row["kernels"] = prof["kernels"][: args.top]
        row["gaps_ms"] = None if prof["busy_ms"] is None else meas["ms"] - prof["busy_ms"]
        if device == "cuda" and not prof["kernels"]:
            print("# WARNING: the profiler recorded no CUDA kernels (CUPTI unavailable?)", flush=True)
        row["syncs"], row["sync_sites"] = _phase("syncs", (None, []), count_syncs, fn, device)
        rows.append(record(args.results, row))
        print("\n".join(details(row)), flush=True)
        inp["hidden"].grad = None
        inp["weight"].grad = None
    return rows


def _phase(what: str, default, fn, *args):
    """``fn(*args)``, or ``default`` with a printed line when it fails."""
    try:
        return fn(*args)
    except Exception as e:
        print(f"# {what} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return default


def record(path: Path, row: dict) -> dict:
    """Append ``row`` with the machine info (GPU, versions, git SHA) of bench.harness, as harness.record does, to
    ``path`` (gpu_clo.sh points it at clo_loss.jsonl: a device run brings back at most 8 files)."""
    full = {"bench": "clo_phases", **harness.machine(), **row}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(full) + "\n")
    return full


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _f(v, fmt=".2f"):
    return "-" if v is None else format(v, fmt)


SUMMARY_COLS = (
    "case provider step floor x_floor products x_prod prod_TF/s rows k_gemm k_row k_copy k_other busy gaps syncs "
    "aten_ops"
).split()


def summary(r: dict) -> dict:
    return {
        "case": r["case"],
        "provider": r["provider"],
        "step": _f(r["step_ms"]),
        "floor": _f(r["floor_ms"]),
        "x_floor": _f(r["x_floor"], ".3f"),
        "products": _f(r["products_seq_ms"]),
        "x_prod": _f(r["x_floor_products"], ".3f"),
        "prod_TF/s": _f(r["products_tflops"], ".0f"),
        "rows": _f(r.get("rows_step_ms")),
        "k_gemm": _f(r.get("gemm_ms")),
        "k_row": _f(r.get("row_ms")),
        "k_copy": _f(r.get("copy_ms")),
        "k_other": _f(r.get("other_ms")),
        "busy": _f(r["busy_ms"]),
        "gaps": _f(r["gaps_ms"]),
        "syncs": "-" if r["syncs"] is None else str(r["syncs"]),
        "aten_ops": str(r["aten_ops"]),
    }


def details(r: dict) -> list[str]:
    """The lines of one row: its headline, products, row kernels (and sweep), top kernels, host syncs."""
    if r["case"] == "rows-sweep":
        lines = [f"## row kernels on {r['rows_tokens']} × {r['V']} logits (default, then the sweep)"]
    else:
        lines = [
            f"## {r['case']} {r['provider']}: {r['chunks']} chunk(s) of {r['chunk_tokens']} tokens; step "
            f"{r['step_ms']:.2f} ms = {r['x_floor']:.3f}× the floor {r['floor_ms']:.2f}; products in sequence "
            f"{_f(r['products_seq_ms'])} ({_f(r['x_floor_products'], '.3f')}×, {_f(r['products_tflops'], '.0f')} "
            f"TF/s), alone {_f(r['products_alone_ms'])}; busy {_f(r['busy_ms'])}, gaps {_f(r['gaps_ms'])}; syncs "
            f"{'-' if r['syncs'] is None else r['syncs']}; {r['aten_ops']} aten ops"
        ]
        others = [lib for lib in r.get("blas_libraries") or [] if lib != "default"]
        for lib in others:
            lines.append(
                f"   through {lib}: products in sequence {_f(r.get(f'products_seq_ms_{lib}'))}, alone "
                f"{_f(r.get(f'products_alone_ms_{lib}'))}"
            )
        for p in r["products"]:
            alt = "".join(f" ({lib} {p[f'ms_{lib}']:.3f} ms {p[f'tflops_{lib}']:4.0f})" for lib in others)
            lines.append(
                f"   {p['role']:15s} ×{p['count']:<2d} {p['ms']:8.3f} ms {p['tflops']:6.0f} TF/s{alt}  {p['product']}"
            )
    if "stats_ms" in r:
        cb = f" (copy {r['copy_gbps']:.0f} GB/s)" if r["copy_gbps"] else ""
        lines.append(
            f"   rows alone: stats {r['stats_ms']:.3f} ms {r['stats_gbps']:.0f} GB/s, grad {r['grad_ms']:.3f} ms "
            f"{r['grad_gbps']:.0f} GB/s{cb}"
        )
    for sw in r.get("rows_sweep", []):
        if "error" in sw:
            lines.append(f"     config {sw['config']}: {sw['error']}")
        else:
            b, nw = sw["config"]
            lines.append(
                f"     config BLOCK_V={b:<5d} warps={nw:<2d}: stats {sw['stats_ms']:.3f} ({sw['stats_gbps']:.0f}"
                f" GB/s)  grad {sw['grad_ms']:.3f} ({sw['grad_gbps']:.0f} GB/s)"
            )
    for k in r.get("kernels", [])[:8]:
        pct = 100 * k["ms"] / r["step_ms"] if r["step_ms"] else 0.0
        lines.append(f"   {k['class']:5s} ×{k['count']:<3d} {k['ms']:8.3f} ms {pct:5.1f}%  {k['name'][:90]}")
    if r.get("sync_sites"):
        lines.append(f"   host syncs: {', '.join(r['sync_sites'])}")
    return lines


def report(rows: list[dict]) -> str:
    """The summary table of the case rows."""
    rows = [r for r in rows if r["case"] != "rows-sweep"]
    return "\n".join(
        [
            "# summary (ms): floor = {6|4}·N·H·V at the 8192³ matmul rate; products = the call's own matmuls "
            "replayed back to back; rows = stats + grad alone × chunks; k_* = kernel time by class in one "
            "profiled step; busy = union of its kernel intervals; gaps = step − busy",
            harness.table([summary(r) for r in rows], SUMMARY_COLS),
        ]
    )


def sweep_rows(first: dict, args, device: str, dtype) -> dict | None:
    """The row kernels at the first case's chunk shape under each configuration of the sweep (Triton only)."""
    if first["path"] != "triton":
        return None
    n, V = first["chunk_tokens"], first["V"]
    row = {"case": "rows-sweep", "provider": "cltx", "preset": first["preset"], "V": V, "copy_gbps": first["copy_gbps"]}
    row.update(time_rows(n, V, dtype, device, TRITON_ROW_OPS, args, SMOKE_SWEEP if args.smoke else ROW_SWEEP))
    return record(args.results, row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="+", default=list(CASES), choices=sorted(CASES) + sorted(SMOKE_CASES))
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU sizes (the test's mode)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    ap.add_argument("--top", type=int, default=12, help="kernels kept per row in the results file")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the row-kernel configurations")
    ap.add_argument("--results", type=Path, default=RESULTS_FILE, help="JSON-lines file the rows append to")
    ap.add_argument("--time-budget", type=float, default=60.0, help="no case or sweep starts after this many s")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = torch.bfloat16
    if args.smoke:
        args.case = [c for c in args.case if c in SMOKE_CASES] or list(SMOKE_CASES)
        args.warmup, args.repeats, args.max_seconds = 1, 1, 1.0
    cases = [{**CASES, **SMOKE_CASES}[c] for c in args.case]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        rate = harness.matmul_tflops(device="cuda")
        copy_gbps = harness.copy_gbps(device="cuda")
        name = torch.cuda.get_device_name()
        print(f"# {name}: bf16 matmul {rate:.0f} TFLOP/s, copy {copy_gbps:.0f} GB/s", flush=True)
    else:
        rate = harness.matmul_tflops(device="cpu", n=256, dtype=torch.float32)
        copy_gbps = None
        print(f"# CPU smoke: fp32 matmul {rate * 1e3:.1f} GFLOP/s (stands in for the floor)", flush=True)
    rows = []
    for case in cases:
        if time.perf_counter() - t0 > args.time_budget:
            print(f"# skipped {case.name}: past the {args.time_budget:.0f} s budget", flush=True)
            continue
        try:
            rows += run_case(case, args, device, dtype, rate, copy_gbps)
        except Exception as e:  # e.g. out of memory on a smaller GPU: the other cases still run
            print(f"# {case.name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    if rows:
        print(report(rows), flush=True)
    if args.sweep and rows and time.perf_counter() - t0 > args.time_budget:
        print(f"# skipped the row-kernel sweep: past the {args.time_budget:.0f} s budget", flush=True)
    elif args.sweep and rows:
        sw = sweep_rows(rows[0], args, device, dtype)
        if sw is not None:
            rows.append(sw)
            print("\n".join(details(sw)), flush=True)
    print(f"# clo_phases: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
