#!/usr/bin/env bash
# The one GPU check: install cltx on the lent GPU machine, run the GPU test tier and the kernel
# benchmarks, print a short table. Usage (on the GPU machine, repo root), from this machine's device tool:
#   export OUT; CLTX_GIT_SHA=<git rev-parse --short HEAD here> PART=speed bash bench/gpu_check.sh 2>&1 | tee $OUT/all.log
# then the same with PART=tests on the warm machine (the GPU machine's copy of the tree has no .git:
# CLTX_GIT_SHA names the commit in the results rows).
# Peers (liger-kernel, cut-cross-entropy) travel as wheels in .whl/ (see bench/README or docs).
set -uo pipefail
OUT=${OUT:-/tmp/cltx-gpu-out}; mkdir -p "$OUT"
# At most 8 files come back from $OUT: install.log, salt.log, clo.log and the results files this run
# appended to (salt_fit, salt_phases, clo_loss .jsonl); past 8 they are joined into one results.jsonl.
started=$(mktemp); touch "$started"
since=$(python3 -c "import time; print(time.strftime('%Y-%m-%dT%H:%M:%S'))")  # the harness's date format
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
rm -f bench/results/*.jsonl.gpu
status=0
# PART=speed: the benchmarks and phase breakdowns (worst case ~7 min; 187 s on an H200 on 2026-11-27, salt
# alone ~110 s); PART=tests: the GPU test tiers and the peer benchmarks (worst case ~8 min; ~280 s that day);
# PART=all: both (two device calls' worth: a device call is capped at 600 s). The step limits below are caps.
export PART=${PART:-all}
case "$PART" in
  speed) SALT_T=${SALT_T:-245}; CLO_T=${CLO_T:-155}; SKIP_MISC=${SKIP_MISC:-1} ;;
  tests) SALT_T=${SALT_T:-170}; CLO_T=${CLO_T:-220}; MISC_T=${MISC_T:-150} ;;
  all) SALT_T=${SALT_T:-420}; CLO_T=${CLO_T:-360}; MISC_T=${MISC_T:-150} ;;
  *) echo "PART=$PART: use speed, tests or all"; exit 2 ;;
esac
echo "=== part: $PART (sha ${CLTX_GIT_SHA:-unknown})"
if [ -z "${SKIP_SALT:-}" ]; then
  echo "=== salt_fit (limit ${SALT_T}s)"
  timeout "$SALT_T" bash bench/gpu_salt.sh 2>&1 | tee "$OUT/salt.log" || status=1
fi
if [ -z "${SKIP_CLO:-}" ]; then
  echo "=== clo_loss (limit ${CLO_T}s)"
  timeout "$CLO_T" bash bench/gpu_clo.sh 2>&1 | tee "$OUT/clo.log" || status=1
fi
if [ -z "${SKIP_MISC:-}" ]; then
  echo "=== other GPU-tier tests: CLO trainer (bf16), FSDP through torchrun + Trainer.train, hf MT engine (limit ${MISC_T:=150}s)"
  timeout "$MISC_T" python3 -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_clo_trainer.py tests/test_clo_fsdp.py \
    tests/test_mt_hf.py \
    2>&1 | tail -15 || status=1
fi
changed=$(find bench/results -maxdepth 1 -name '*.jsonl' -newer "$started" | sort)
n_logs=$(find "$OUT" -maxdepth 1 -type f | wc -l)
if [ -n "$changed" ] && [ $((n_logs + $(echo "$changed" | wc -l))) -le 8 ]; then
  cp $changed "$OUT/"
elif [ -n "$changed" ]; then
  cat $changed >"$OUT/results.jsonl"  # each row names its bench
fi
rm -f "$started"
echo "=== summary: the issue targets, from this run's rows"
python3 bench/summary.py --since "$since" || true
echo "=== files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
