"""Static report of cltx's Triton kernels compiled for sm_90 (H100/H200), without a GPU.

Each kernel is compiled ahead of time at the configuration its launcher picks (the same helpers:
``salt_fit._config`` / ``salt_fit._launch_meta``, ``clo_loss._row_config``), with the bundled
ptxas; ``cuobjdump`` then gives the registers a thread, spill bytes (LOCAL), static shared
memory, and the SASS is counted: instructions, barriers (BAR), warp shuffles (SHFL), local-memory
loads/stores (LDL/STL: spills in the code). A guide to latency and occupancy, not a timing: the
GPU machine may run another triton (3.6) than this one.

  python bench/kernel_report.py                     # every kernel; saves bench/results/kernel_report_sm90.txt
  python bench/kernel_report.py --only salt_fwd --variants v1 v3 --ks 64 --no-save
  python bench/kernel_report.py --only clo_row_stats --json --no-save

Pointer arguments and integer arguments divisible by 16 at the example shape get Triton's
divisibility hint, as the JIT does at launch, so the loads vectorise as they do on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The paper shape (issue 3) and the CLO shapes (issue 4).
SALT_SHAPE = {"n": 30_000, "m": 20_000, "d_in": 768, "d_out": 4096}
CLO_VOCABS = (128_256, 1024)  # Llama-3 vocabulary in one slab; a narrow slab
COLUMNS = ["kernel", "config", "regs", "spill", "shared", "instr", "bar", "shfl", "ldl_stl", "loops", "compile_s"]


@dataclass
class Spec:
    """One compile: a JIT kernel, argument types, constexprs, launch options."""

    kernel: str
    config: str
    fn: object
    ptrs: dict  # pointer argument → element type ("fp32", "bf16", "i64", "i32", "i8")
    constexprs: dict
    options: dict
    ints: dict = field(default_factory=dict)  # integer argument → example value (for divisibility)
    floats: tuple = ()


def tool(name: str) -> str | None:
    """A CUDA binary bundled with triton (ptxas, cuobjdump), else one on PATH."""
    try:
        import triton

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if p.exists():
            return str(p)
    except Exception:
        pass
    return shutil.which(name)


def compile_sm90(spec: Spec):
    """Compile ``spec`` for sm_90 with triton's own pipeline (no driver needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec.fn
    names = fn.arg_names
    constexpr_names = {p.name for p in fn.params if p.is_constexpr}
    missing = constexpr_names - set(spec.constexprs)
    if missing:
        raise ValueError(f"{spec.kernel}: constexprs not given: {sorted(missing)}")
    sig, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constexpr_names:
            sig[name] = "constexpr"
        elif name in spec.ptrs:
            sig[name] = "*" + spec.ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in spec.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if spec.ints.get(name, 1) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in spec.constexprs.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(spec.options))


def inspect_cubin(cubin: bytes) -> dict:
    """Registers and spill bytes (STACK + LOCAL) from ``cuobjdump -res-usage``; SASS counts."""
    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (triton's bundled CUDA tools or PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        res = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True, check=True).stdout
    use = {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", res)}
    # SASS lines look like "/*0120*/   @P0 FFMA R1, R2, R3, R4 ;": count opcodes.
    instrs = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", sass)
    ops = [op for _, op, _ in instrs]
    return {
        "loops": loops(instrs),
        "regs": use.get("REG", 0),
        "spill": use.get("STACK", 0) + use.get("LOCAL", 0),
        "instr": len(ops),
        "bar": sum(op.startswith("BAR") for op in ops),
        "shfl": sum(op.startswith("SHFL") for op in ops),
        "ldl_stl": sum(op.startswith(("LDL", "STL")) for op in ops),
    }


_SHORT = {"num_warps": "w", "num_stages": "s", "maxnreg": "maxnreg=", "BLOCK_D": "D", "BLOCK_N": "N", "TOKENS": "T"}
_QUIET = {"REFINE", "UPCAST", "WRITE_ALPHA"}  # the same in every row of the report


def compact(meta: dict) -> str:
    """``K16 D64 N256 fused unrolled w4 s2``: a configuration in one short label."""
    parts = []
    for key, v in meta.items():
        if key in _QUIET or (key == "PRECISION" and v == "ieee"):
            continue
        if key == "SPLIT":
            parts.append("split" if v else "fused")
        elif key == "UNROLL":
            parts.append("unrolled" if v else "loop")
        elif key == "BLOCK_N" and meta.get("SPLIT"):
            continue  # the solve kernel's αᵀY tile is unused when split
        elif key in _SHORT:
            parts.append(f"{_SHORT[key]}{v}")
        else:
            parts.append(f"{key if key != 'K' else 'K'}{'' if key == 'K' else '='}{v}")
    return " ".join(parts)


def loops(instrs: list[tuple[str, str, str]]) -> str:
    """The loops (backward branches) of a kernel, outermost first: ``instructions/BAR/SHFL`` of
    each body, e.g. ``48i/0b/0s 612i/2b/40s``; what one iteration of a Gram or sweep loop costs."""
    addr = [int(a, 16) for a, _, _ in instrs]
    found = []
    for i, (a, op, rest) in enumerate(instrs):
        m = re.match(r"\s*(0x[0-9a-f]+)", rest) if op == "BRA" else None
        if m and int(m.group(1), 16) < int(a, 16):
            lo = addr.index(int(m.group(1), 16)) if int(m.group(1), 16) in addr else 0
            body = [o for _, o, _ in instrs[lo : i + 1]]
            bar = sum(o.startswith("BAR") for o in body)
            shfl = sum(o.startswith("SHFL") for o in body)
            found.append((lo, f"{len(body)}i/{bar}b/{shfl}s"))
    return " ".join(txt for _, txt in sorted(found))


# ---- the kernels and the configurations their launchers pick ----------------------------------
def salt_specs(
    variants: list[str] | None, ks: list[int], dtype: str = "fp32", overrides: list[tuple[str, int, dict]] | None = None
) -> list[Spec]:
    """Solve (+ apply) kernels of each variant at the paper shape, as ``_SaltLaunch`` launches them;
    ``overrides`` (variant, K, changes to ``_config``) compiles those configurations instead (solve only)."""
    import cltx.kernels.salt_fit  # noqa: F401  (the module object is callable: take it from sys.modules)

    sf = sys.modules["cltx.kernels.salt_fit"]
    from cltx.kernels.reference_salt import regularisation

    sh = SALT_SHAPE
    plan = overrides or [(v, k, None) for v in (variants or list(sf.VARIANTS)) for k in ks]
    specs = []
    for variant, k, over in plan:
        cfg = sf._config(k, sh["d_in"], sh["d_out"], interpret=False, variant=variant)
        if over is not None:
            cfg = {**cfg, "SPLIT": True, **over}
        _, _, refine = regularisation(k, sh["d_in"], gram_fp64=False)
        fn, fwd, apply = sf._launch_meta(
            cfg, variant, refine=refine, upcast=False, write_alpha=False, fp32_inputs=dtype == "fp32", interpret=False
        )
        options = {o: fwd[o] for o in ("num_warps", "num_stages", "maxnreg") if o in fwd}
        constexprs = {c: v for c, v in fwd.items() if c not in options}
        label = f"{variant} k={k} " + compact({**constexprs, **options})
        ptrs = {"xq_ptr": dtype, "xb_ptr": dtype, "yb_ptr": dtype, "nbr_ptr": "i64", "order_ptr": "i32"}
        ptrs.update({"out_ptr": dtype, "alpha_ptr": "fp32", "flag_ptr": "i8", "coef_ptr": "fp32"})
        ints = {"k": k, "d_in": sh["d_in"], "d_out": sh["d_out"], "n": sh["n"], "stride_q": sh["d_in"]}
        ints.update({"stride_b": sh["d_in"], "stride_y": sh["d_out"], "stride_nbr": k, "stride_out": sh["d_out"]})
        ints["stride_alpha"] = sh["d_out"]  # alpha aliases out when it is not returned
        floats = ("ridge", "eps_full", "eps_deficient")
        specs.append(Spec("salt_fwd", label, fn, ptrs, constexprs, options, ints, floats))
        if apply is not None and over is None:
            aopts = {"num_warps": apply["num_warps"], "num_stages": 2}
            aconst = {c: v for c, v in apply.items() if c != "num_warps"}
            alabel = f"{variant} k={k} " + compact({**aconst, **aopts})
            aptrs = {"coef_ptr": "fp32", "nbr_ptr": "i64", "order_ptr": "i32", "yb_ptr": dtype, "out_ptr": dtype}
            aints = {"n": sh["n"], "k": k, "d_out": sh["d_out"], "stride_nbr": k, "stride_y": sh["d_out"]}
            aints["stride_out"] = sh["d_out"]
            specs.append(Spec("salt_apply", alabel, sf._salt_apply_kernel, aptrs, aconst, aopts, aints))
    return specs


def sweep_specs() -> list[Spec]:
    """The solve configurations bench/salt_phases.py sweeps on the GPU (to check them for spills first)."""
    from bench.salt_phases import SWEEP

    return salt_specs(None, [], overrides=[(v, K, over) for K, rows in SWEEP.items() for v, over in rows])


def clo_specs(vocabs=CLO_VOCABS, dtype: str = "bf16") -> list[Spec]:
    """The CLO row kernels at ``_row_config`` for each slab width (logits in ``dtype``)."""
    from cltx.kernels import clo_loss as _  # noqa: F401

    cl = sys.modules["cltx.kernels.clo_loss"]
    specs = []
    for V in vocabs:
        cfg = cl._row_config(V)
        opts = {"num_warps": cfg["num_warps"], "num_stages": 2}
        label = f"V={V} {dtype} BLOCK_V={cfg['BLOCK_V']} num_warps={cfg['num_warps']}"
        ints = {"V": V, "STRIDE_Z": V, "COL0": 0}
        stats_ptrs = {"Z": dtype, "LABELS": "i64", "LSE": "fp32", "ZLAB": "fp32"}
        grad_ptrs = {"Z": dtype, "LABELS": "i64", "LSE": "fp32", "COEF": "fp32"}
        const = {"BLOCK_V": cfg["BLOCK_V"], "TRANSFORM": 0}  # plain logits (the usual LM head)
        floats = ("SCALE", "CAP")
        specs.append(Spec("clo_row_stats", label, cl._clo_row_stats_kernel, stats_ptrs, const, opts, ints, floats))
        specs.append(Spec("clo_row_grad", label, cl._clo_row_grad_kernel, grad_ptrs, const, opts, ints, floats))
    return specs


def kernel_inventory() -> dict[str, list[str]]:
    """Every ``*_kernel`` JIT function of the kernel modules (so a new one is not silently missed)."""
    import cltx.kernels  # noqa: F401

    found = {}
    for mod in ("cltx.kernels.salt_fit", "cltx.kernels.neighbors", "cltx.kernels.clo_loss"):
        m = sys.modules.get(mod)
        names = []
        for name, obj in vars(m).items() if m else []:
            if name.endswith("_kernel") and hasattr(obj, "arg_names") and hasattr(obj, "params"):
                names.append(name)
        found[mod] = sorted(names)
    return found


def run(specs: list[Spec]) -> list[dict]:
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        row = {"kernel": spec.kernel, "config": spec.config}
        try:
            compiled = compile_sm90(spec)
            row.update(inspect_cubin(compiled.asm["cubin"]))
            # Triton's shared memory is dynamic (what the launch requests), not the cubin's static SHARED.
            row["shared"] = getattr(compiled.metadata, "shared", None)
        except Exception as exc:  # one kernel failing to compile must not hide the others
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc) else ''}"
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(v):
        return "" if v is None else str(v)

    cols = [c for c in COLUMNS]
    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    for r in rows:
        line = "  ".join(fmt(r.get(c)).ljust(widths[c]) for c in cols)
        if "error" in r:
            line += f"  ERROR {r['error']}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="keep kernels whose name contains one of these")
    ap.add_argument("--variants", nargs="*", default=None, help="salt variants (default: all of VARIANTS)")
    ap.add_argument("--ks", nargs="*", type=int, default=[16, 64], help="salt neighbour counts")
    ap.add_argument("--sweep", action="store_true", help="also the solve configs bench/salt_phases.py sweeps")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/kernel_report_sm90.txt")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernel_report_sm90.txt")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernel_report: unset TRITON_INTERPRET (it compiles for the GPU)", file=sys.stderr)
        return 2
    if tool("ptxas") is None or tool("cuobjdump") is None:
        print("kernel_report: needs ptxas and cuobjdump (bundled with triton's NVIDIA backend)", file=sys.stderr)
        return 2
    import triton

    want = lambda name: args.only is None or any(o in name for o in args.only)  # noqa: E731
    specs = []
    if want("salt_fwd") or want("salt_apply"):
        specs += salt_specs(args.variants, args.ks)
    if want("clo_row_stats") or want("clo_row_grad"):
        specs += clo_specs()
    if args.sweep:
        specs += [s for s in sweep_specs() if s.config not in {t.config for t in specs}]
    specs = [s for s in specs if want(s.kernel)]
    t0 = time.perf_counter()
    rows = run(specs)
    if args.json:
        print(json.dumps(rows))
    else:
        header = [
            f"cltx kernels compiled for sm_90 (triton {triton.__version__}, no GPU: static numbers, not timings); "
            "salt at the paper shape, fp32: " + " ".join(f"{k}={v}" for k, v in SALT_SHAPE.items()),
            "regs: registers a thread; spill: STACK+LOCAL bytes a thread; shared: bytes a program (dynamic); "
            "instr/bar/shfl/ldl_stl: SASS instruction, barrier, warp-shuffle, local load/store counts (static); "
            "loops: each loop body (i instructions / b BAR / s SHFL), in code order",
        ]
        inv = kernel_inventory()
        covered = {s.fn.__name__ if hasattr(s.fn, "__name__") else "" for s in specs}
        for mod, names in inv.items():
            if not names:
                header.append(f"{mod}: no Triton kernels (pure PyTorch)")
            elif args.only is None and set(names) - covered:
                header.append(f"{mod}: NOT IN THIS REPORT: {', '.join(sorted(set(names) - covered))}")
        text = (
            "\n".join(header)
            + "\n\n"
            + format_table(rows)
            + f"\n\n({len(rows)} compiles, {time.perf_counter() - t0:.0f} s)\n"
        )
        print(text, end="")
        if not args.no_save:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
            print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
