#!/usr/bin/env bash
# GPU checks of the SALT kernel (issue 3), for the lead's one GPU script. Installs nothing.
# 1. the GPU test tier of salt_fit and select_neighbors (full paper size vs a float64 oracle; v1 and
#    the candidate v3, whose edge cases run on the GPU too);
# 2. the GPU test of the cltx salt pipeline (tests/test_salt_pipeline.py -m gpu, ~20 s);
# 3. the paper-size benchmark: cltx (default v3) / cltx_v1 / cltx_v3ieee / cltx_v3x (v3-3xtf32) / reference / plain PyTorch /
#    scikit-learn; prints a table and the issue-3 target lines per cltx variant, appends to
#    bench/results/salt_fit.jsonl;
# 4. the phase breakdown (bench/salt_phases.py): solve alone / apply alone / fused per variant, the
#    reference's gram / solve / apply, torch.profiler's top kernels, a launch-config sweep cut at
#    SALT_PHASES_BUDGET seconds; appends to bench/results/salt_phases.jsonl as it goes;
# 5. the static sm_90 report of v1 and v3 with this machine's triton (registers, spills; ~15 s).
# Budget: about 4 minutes on an H200 (gpu_check.sh's SALT_T), most of it Triton compiles; each step has
# its own limit, so a slow step cannot starve the ones after it.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# PART (from gpu_check.sh): tests = steps 1-2, speed = steps 3-5, all (default) = every step.
PART=${PART:-all}
if [ "$PART" != speed ]; then
echo "== salt: GPU tests (limit ${SALT_TEST_T:=120}s)"
timeout "$SALT_TEST_T" python -m pytest -q -p no:cacheprovider -m gpu tests/test_salt_fit.py tests/test_neighbors.py || status=1
echo "== salt: pipeline GPU test (limit ${SALT_PIPE_T:=45}s)"
timeout "$SALT_PIPE_T" python -m pytest -q -p no:cacheprovider -m gpu tests/test_salt_pipeline.py || status=1
fi
if [ "$PART" != tests ]; then
echo "== salt: benchmark (paper preset, fp32; cltx = default v3, cltx_v1, cltx_v3ieee, cltx_v3x; limit ${SALT_BENCH_T:=110}s)"
timeout "$SALT_BENCH_T" python bench/bench_salt_fit.py --device cuda --preset paper \
  --providers cltx,cltx_v1,cltx_v3ieee,cltx_v3x,reference,plain,sklearn || status=1
echo "== salt: phases (limit ${SALT_PHASES_T:=100}s, sweep budget ${SALT_PHASES_BUDGET:=70}s)"
timeout "$SALT_PHASES_T" python bench/salt_phases.py --budget-s "$SALT_PHASES_BUDGET" || status=1
echo "== salt: static sm_90 report, this triton (limit ${SALT_REPORT_T:=30}s)"
timeout "$SALT_REPORT_T" python bench/kernel_report.py --only salt --variants v1 v3 v3-ieee --no-save || true
fi
echo "== salt: done (status $status)"
exit $status
