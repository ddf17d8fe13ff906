#!/usr/bin/env bash
# GPU checks of the SALT kernel (issue 3), for the lead's one GPU script. Installs nothing.
# 1. the GPU test tier of salt_fit and select_neighbors (full paper size vs a float64 oracle);
# 2. the GPU test of the cltx salt pipeline (tests/test_salt_pipeline.py -m gpu, ~20 s);
# 3. the paper-size benchmark (cltx v1 / cltx_v2 / cltx_3xtf32 / reference / plain PyTorch /
#    scikit-learn), which prints a table, the issue-3 target lines per cltx variant, and appends to
#    bench/results/salt_fit.jsonl.
# Budget: about 2.5 minutes on an H100/H200 (most of it Triton compiles and the plain provider).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "== salt: GPU tests"
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_salt_fit.py tests/test_neighbors.py || status=1
echo "== salt: pipeline GPU test"
timeout 60 python -m pytest -q -p no:cacheprovider -m gpu tests/test_salt_pipeline.py || status=1
echo "== salt: benchmark (paper preset, fp32; cltx = default v1, cltx_v2, cltx_3xtf32)"
timeout 120 python bench/bench_salt_fit.py --device cuda --preset paper || status=1
echo "== salt: done (status $status)"
exit $status
