#!/usr/bin/env bash
# CLO loss on a GPU (≤ 3.5 minutes on an H200): the GPU test tier of tests/test_clo_loss.py (the Triton
# path for real, odd shapes vs a float64 oracle, 8,192 tokens × V 128256 vs the chunked fp32 reference),
# then bench/bench_clo_loss.py on the issue-4 presets (8k, 32k, long; budgets 2 and 0.25 GiB) and the
# peers when importable. Called by bench/gpu_check.sh from the repo root with cltx installed; rows append
# to bench/results/clo_loss.jsonl. Each step has its own time limit so a slow step cannot starve the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
B="$PY bench/bench_clo_loss.py --warmup 2 --repeats 5 --max-seconds 2"
echo "--- GPU tests (limit ${CLO_TEST_T:=55}s)"
timeout "$CLO_TEST_T" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_clo_loss.py 2>&1 | tail -30 || status=1
echo "--- bench: cltx, reference, plain PyTorch; budgets 2 and 0.25 GiB (limit ${CLO_BENCH_T:=75}s)"
timeout "$CLO_BENCH_T" $B --preset 8k 32k long --budget 2 0.25 --providers cltx reference plain || status=1
echo "--- bench: Cut Cross-Entropy exact / filtered (limit ${CLO_CCE_T:=45}s)"
timeout "$CLO_CCE_T" $B --preset 8k 32k long --providers cltx cce-exact cce-filtered || status=1
echo "--- bench: Liger fused DPO (torch.compile; limit ${CLO_LIGER_T:=35}s)"
timeout "$CLO_LIGER_T" $B --preset 8k 32k --providers cltx liger || status=1
exit $status
