"""The bench tools that run without a GPU: the static sm_90 kernel report and the SALT phase script's
smoke mode (the phase script itself runs on the GPU machine; its smoke mode keeps it from rotting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cuda_tools_present() -> bool:
    try:
        import triton
    except Exception:
        return False
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return all((bindir / t).exists() for t in ("ptxas", "cuobjdump"))


def test_kernel_report_gives_registers_for_one_kernel():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("compiles for the GPU: not under the interpreter")
    if not _cuda_tools_present():
        pytest.skip("no ptxas/cuobjdump bundled with triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "bench/kernel_report.py", "--only", "clo_row_grad", "--json", "--no-save"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows and all(r["kernel"] == "clo_row_grad" for r in rows)
    for r in rows:
        assert "error" not in r, r
        assert isinstance(r["regs"], int) and 0 < r["regs"] <= 255, r
        assert isinstance(r["instr"], int) and r["instr"] > 0, r
