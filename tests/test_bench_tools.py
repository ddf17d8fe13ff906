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


# The default kernel and the candidate (the other variants go through the same code in the script).
VARIANTS = ("v1", "v3")


@pytest.mark.interpreter
def test_salt_phases_smoke_runs_every_phase(tmp_path):
    """bench/salt_phases.py --smoke: every phase runs (interpreter, tiny sizes) and agrees with the
    reference; the GPU run gets one try, so the script must not fail on its first real use."""
    out = tmp_path / "phases.jsonl"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "bench/salt_phases.py", "--smoke", "--variants", *VARIANTS, "--jsonl", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in rows if r.get("error")]
    assert not errors, errors
    phases = {r["phase"] for r in rows}
    want = {"order", "full", "solve", "apply", "fused", "ref_total", "ref_gram", "ref_solve", "ref_apply", "profile"}
    assert want | {"sweep", "sweep_apl"} <= phases, phases
    for k in {r["k"] for r in rows}:
        assert set(VARIANTS) <= {r["variant"] for r in rows if r["k"] == k and r["phase"] == "solve"}
    for r in rows:
        assert r.get("ms") is not None and r["ms"] >= 0, r
        if r.get("err") is not None:
            assert r["err"] < 1e-3, r
    assert "summary" in proc.stdout
