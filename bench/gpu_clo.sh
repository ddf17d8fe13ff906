#!/usr/bin/env bash
# CLO loss on a GPU (≤ 6 minutes on an H200; the step limits sum to 360 s: 130 of them the GPU tests, which needed more than the 65 s they had on 2026-11-27): the GPU test tier of
# tests/test_clo_loss.py (the Triton path for real, odd shapes vs a float64 oracle, 8,192 tokens × V 128256 vs the
# chunked fp32 reference, the overlapped pair chunks on a real side stream, a sync-free forward), the pair plan's
# phase breakdown (bench/clo_phases.py: the call's own products replayed, row kernels alone and a config sweep,
# one profiled step with gaps and host syncs; cltx and cltx_overlap), then bench/bench_clo_loss.py on the issue-4
# presets (8k, 32k, long; budgets 2 and 0.25 GiB; cltx_overlap beside cltx) and the peers when importable. Called
# by bench/gpu_check.sh from the repo root with cltx installed; rows append to bench/results/clo_loss.jsonl (the
# phase rows too, marked "bench": "clo_phases": a device run brings back at most 8 files). Each step has its own
# time limit so a slow step cannot starve the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
B="$PY bench/bench_clo_loss.py --warmup 2 --repeats 5 --max-seconds 2"
# PART (from gpu_check.sh): speed = phases + cltx bench, tests = GPU tests + peers, all (default) = both.
PART=${PART:-all}
if [ "$PART" != speed ]; then
echo "--- GPU tests (limit ${CLO_TEST_T:=130}s)"
timeout "$CLO_TEST_T" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_clo_loss.py 2>&1 | tail -30 || status=1
fi
if [ "$PART" != tests ]; then
echo "--- bench: cltx, cltx_overlap, reference, plain PyTorch; budgets 2 and 0.25 GiB (limit ${CLO_BENCH_T:=75}s)"
timeout "$CLO_BENCH_T" $B --preset 8k 32k long --budget 2 0.25 --providers cltx cltx_overlap reference plain || status=1
echo "--- phases of the pair plan: 8k, 32k, 8k frozen head; cltx, cltx_overlap (limit ${CLO_PHASES_T:=75}s)"
timeout "$CLO_PHASES_T" "$PY" bench/clo_phases.py --results bench/results/clo_loss.jsonl || status=1
fi
if [ "$PART" != speed ]; then
echo "--- bench: Cut Cross-Entropy exact / filtered (limit ${CLO_CCE_T:=45}s)"
timeout "$CLO_CCE_T" $B --preset 8k 32k long --providers cltx cce-exact cce-filtered || status=1
echo "--- bench: Liger fused DPO (torch.compile; limit ${CLO_LIGER_T:=35}s)"
timeout "$CLO_LIGER_T" $B --preset 8k 32k --providers cltx liger || status=1
fi
exit $status
