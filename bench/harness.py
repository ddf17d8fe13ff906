"""Shared benchmark harness: timing, peak memory, machine info, result logging.

Every bench script: builds inputs from a named preset, checks parity with the reference first,
then times each provider (median of repeats, after warm-up) and appends one row per provider to
``bench/results/<name>.jsonl`` with GPU name, versions and git SHA. Ratios are only quoted
between rows of one run (same ``run_id``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
RUN_ID = uuid.uuid4().hex[:8]


def git_sha() -> str:
    # The GPU machine gets a copy of the working tree without .git: gpu_check.sh passes CLTX_GIT_SHA.
    if os.environ.get("CLTX_GIT_SHA"):
        return os.environ["CLTX_GIT_SHA"]
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, stderr=subprocess.DEVNULL, text=True
        ).strip()
    except Exception:
        return "unknown"


def machine() -> dict:
    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sha": git_sha(),
        "run_id": RUN_ID,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    else:
        info["gpu"] = None
    return info


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object], *, device: str = "cuda", warmup: int = 2, repeats: int = 5, max_seconds: float = 30.0
) -> dict:
    """Median wall time (ms) and peak memory (GiB, CUDA only) of ``fn()``.

    Peak memory is measured over one extra call after resetting the peak statistics, relative to
    zero (it includes every live tensor: inputs, outputs, gradients).
    """
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    start_all = time.perf_counter()
    for _ in range(repeats):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start_all > max_seconds:
            break
    peak = None
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    return {"ms": statistics.median(times), "ms_min": min(times), "repeats": len(times), "peak_gib": peak}


def record(bench: str, row: dict) -> dict:
    """Append ``row`` (plus machine info) to ``bench/results/<bench>.jsonl`` and return it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    full = {"bench": bench, **machine(), **row}
    with open(RESULTS / f"{bench}.jsonl", "a") as fh:
        fh.write(json.dumps(full) + "\n")
    return full


def table(rows: list[dict], cols: list[str]) -> str:
    """A plain-text table (for logs and the GPU check summary)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths, strict=True)))
    return "\n".join(lines)


def matmul_tflops(device: str = "cuda", n: int = 8192, dtype=torch.bfloat16) -> float:
    """The machine's measured dense matmul rate (TFLOP/s): the ceiling kernels are compared to."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    r = measure(lambda: a @ b, device=device, warmup=3, repeats=10)
    return 2 * n**3 / (r["ms"] * 1e-3) / 1e12


def copy_gbps(device: str = "cuda", nbytes: int = 2**31) -> float:
    """Measured device-to-device bandwidth (GB/s, bytes read + written)."""
    a = torch.empty(nbytes // 4, device=device, dtype=torch.float32)
    b = torch.empty_like(a)
    r = measure(lambda: b.copy_(a), device=device, warmup=3, repeats=10)
    return 2 * nbytes / (r["ms"] * 1e-3) / 1e9
