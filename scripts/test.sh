#!/usr/bin/env bash
# Run every test tier this machine allows: lint, CPU tier, Triton-interpreter tier
# (TRITON_INTERPRET=1 must be set before triton is imported: its own pytest process),
# and the GPU tier where CUDA exists (the GPU tests are part of the first pytest run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export CLTX_CACHE="${CLTX_CACHE:-$PWD/.cltx-cache}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set -e
ruff check .
echo "== CPU (and GPU, where CUDA exists) tier"
python -m pytest -q -p no:cacheprovider "$@"
echo "== Triton interpreter tier"
TRITON_INTERPRET=1 python -m pytest -q -p no:cacheprovider -m interpreter "$@"
