"""bench/clo_phases.py cannot rot: its --smoke mode runs the whole breakdown on the CPU at tiny sizes (the
reference row operations; the Triton interpreter in the interpreter tier) and must capture exactly the
pair plan's products."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _smoke(tmp_path, capsys, argv):
    sys.path.insert(0, str(ROOT))
    from bench import clo_phases

    results = tmp_path / "phases.jsonl"
    assert clo_phases.main(["--smoke", "--results", str(results), *argv]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert all(r["bench"] == "clo_phases" and r["sha"] and "torch" in r for r in rows)
    return out, rows


def _check_products(row):
    P, T, H, V = 2, 48, 64, 1003
    N = 2 * P * T
    # the captured products are exactly the floor's work: 6·N·H·V (4·N·H·V without a weight gradient)
    assert row["product_flops"] == (6 if row["weight_grad"] else 4) * N * H * V, row["products"]
    assert row["product_flops_over_floor"] == 1.0
    roles = {p["role"]: 0 for p in row["products"]}
    for p in row["products"]:
        roles[p["role"]] += p["count"]
    assert ("grad_w = dzᵀ·h" in roles) == row["weight_grad"]
    if row["provider"] == "cltx":  # one product per block of rows: one block for all pairs, else two per chunk
        blocks = 1 if row["chunks"] == 1 else 2 * row["chunks"]
        assert roles["logits = h·Wᵀ"] == roles["grad_h = dz·W"] == blocks, roles
    assert row["products_seq_ms"] > 0 and all(p["ms"] > 0 for p in row["products"])


def test_smoke_runs_every_phase_on_the_cpu(tmp_path, capsys):
    out, rows = _smoke(tmp_path, capsys, [])
    assert [(r["case"], r["provider"]) for r in rows] == [
        (c, p) for c in ("quick", "quick-chunks", "quick-frozen") for p in ("cltx", "cltx_overlap")
    ]
    for r in rows:
        assert r["path"] == "reference" and r["step_ms"] > 0 and r["x_floor"] > 0
        _check_products(r)
        assert r["kernels"] and r["gemm_ms"] > 0  # the CPU profile: aten ops stand in for kernels
        assert r["busy_ms"] is None and r["syncs"] is None  # CUDA-only measures
        assert r["aten_ops"] > 0
    by = {(r["case"], r["provider"]): r for r in rows}
    assert by["quick", "cltx"]["chunks"] == 1 and by["quick-chunks", "cltx"]["chunks"] == 2
    assert by["quick", "cltx"]["stats_ms"] > 0 and by["quick", "cltx"]["rows_step_ms"] > 0
    # the last pair chunk has no free gradient rows to gather into: its weight gradient takes two products
    wgrad = [p for p in by["quick-chunks", "cltx"]["products"] if p["role"].startswith("grad_w")]
    assert sorted((p["product"].split()[0], p["count"]) for p in wgrad) == [("addmm_.default", 2), ("mm.out", 1)]
    for case in ("quick", "quick-chunks", "quick-frozen"):
        assert f"## {case} cltx:" in out
    assert "x_floor" in out and "gaps" in out


@pytest.mark.interpreter
def test_smoke_through_the_triton_interpreter(tmp_path, capsys):
    out, rows = _smoke(tmp_path, capsys, ["--case", "quick-chunks", "--providers", "cltx"])
    assert [r["case"] for r in rows] == ["quick-chunks", "rows-sweep"] and rows[0]["path"] == "triton"
    _check_products(rows[0])
    assert rows[0]["stats_ms"] > 0 and rows[0]["grad_ms"] > 0
    # the row-kernel configurations (small blocks under the interpreter), each run and timed
    sweep = rows[1]["rows_sweep"]
    assert len(sweep) == 2 and all("error" not in s and s["stats_ms"] > 0 and s["grad_gbps"] > 0 for s in sweep)
    assert "config BLOCK_V=512" in out


def test_smoke_times_the_products_through_each_blas_front_end(monkeypatch, tmp_path, capsys):
    """On CUDA the products are timed through cuBLASLt too; on the CPU a stand-in front end runs that code."""
    import contextlib

    sys.path.insert(0, str(ROOT))
    from bench import clo_phases

    switched = []
    monkeypatch.setattr(clo_phases, "blas_libraries", lambda device: ["default", "other"])
    monkeypatch.setattr(clo_phases, "blas_library", lambda name: (switched.append(name), contextlib.nullcontext())[1])
    out, rows = _smoke(tmp_path, capsys, ["--case", "quick", "quick-chunks"])
    first = [r for r in rows if r["provider"] == "cltx"]  # the other front ends: the first provider only
    assert len(first) == 2 and switched == ["default", "other", "default"] * 2  # cltx, cltx_overlap per case
    for r in first:
        assert r["blas_libraries"] == ["default", "other"] and r["products_seq_ms_other"] > 0
        assert all(p["ms_other"] > 0 and p["tflops_other"] > 0 for p in r["products"])
    assert all("products_seq_ms_other" not in r for r in rows if r["provider"] != "cltx")
    assert out.count("through other: products in sequence") == 2
