#!/usr/bin/env bash
# The CUDA path on a lent GPU machine (shared/GPU.md has what such a machine holds).
#
# Prepare here, once (wheels for what the bare GPU machine lacks; .whl/ is git-ignored, ~50 MB):
#   bash scripts/device_check.sh --prepare
# Then on the GPU machine, from the repository root, with .whl carried (device `run`, carry [".whl"]):
#   bash scripts/device_check.sh [STAGE ...]     # default: every stage; output under $OUT
# The device call carries at most 64 MiB (working tree + .whl): the models committed under results/
# push the tree over it, so move results/ aside for the call (nothing here reads it).
#
# Stages (each under its own timeout; one failing does not stop the next; summary.txt has each
# stage's exit status and wall time). Measured on an H200 (torch 2.11+cu130, Triton 3.6), with the
# Triton cache warm; on a fresh machine the first stage that meets a kernel shape compiles and
# autotunes it first (minutes: the first call timed out every stage at the limits below minus ~40%):
#   tests       pytest -m cuda: the Triton SSD kernel against ssd_chunked (values, gradients), the
#               model and its sessions on CUDA (tests/streaming/test_cuda.py)           86 s
#   train       train.py on CUDA: a small AVWorld proxy run (generation, 300 steps, validation,
#               the streaming evaluation)                                    (210 steps in 180 s)
#   scan        eval/bench_scan.py --device cuda (ours, the Triton kernel, ssd_minimal)  55 s
#   train_fp32, train_bf16   eval/bench_train.py --device cuda [--bf16]                  45 s, 38 s
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .whl
  PIP=(.venv/bin/python -m pip)
  # pure-Python mamba_ssm: its Mamba-2 SSD kernels are Triton, no CUDA compilation needed
  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
    mamba-ssm==2.3.2.post1 -w .whl
  "${PIP[@]}" wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl  # an sdist only on PyPI
  # the GPU machine's Python is 3.12 (it has torch, numpy, triton, tokenizers)
  "${PIP[@]}" download -q --only-binary=:all: --no-deps -d .whl --python-version 3.12 --implementation cp \
    --platform manylinux2010_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 omegaconf==2.4.0 pyyaml pytest pluggy iniconfig pytest-timeout tqdm \
    av==18.1.0 decord==0.6.0
  du -sh .whl  # the device call carries at most 64 MiB
  exit 0
fi

for st in "$@"; do
  case $st in
    tests|train|scan|train_fp32|train_bf16) ;;
    *) echo "device_check.sh: unknown stage '$st' (tests, train, scan, train_fp32, train_bf16)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
SITE=/tmp/device_site
PY=python3
summary="$OUT/summary.txt"
: > "$summary"

# what the machine lacks, from the carried wheels (never shadowing what it has: its numpy, torch)
for pair in omegaconf:omegaconf yaml:pyyaml antlr4:antlr4_python3_runtime pytest:pytest pluggy:pluggy \
            iniconfig:iniconfig pytest_timeout:pytest_timeout tqdm:tqdm av:av decord:decord mamba_ssm:mamba_ssm; do
  mod=${pair%%:*} whl=${pair#*:}
  if ! $PY -c "import $mod" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/"$whl"-*.whl >> "$OUT/install.log" 2>&1 \
      || echo "install $whl failed" >> "$summary"
  fi
done
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  $PY -c "from ssm_mm.ops.ssd import cuda_ssd_available as a; from ssm_mm.ops.mamba_ref import mamba_refs_error as e; print('triton ssd:', a(), e())"
} > "$OUT/machine.txt" 2>&1

stage() {  # stage NAME TIMEOUT_S CMD...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc wall_s=$(( $(date +%s) - t0 ))" >> "$summary"
}

want() {  # whether stage $1 was asked for (no arguments: all)
  [[ ${#STAGES[@]} -eq 0 ]] || [[ " ${STAGES[*]} " == *" $1 "* ]]
}
STAGES=("$@")

want tests && stage tests 300 $PY -m pytest -q -p no:cacheprovider -m cuda tests/ops tests/streaming/test_cuda.py
if want train; then
  stage train 300 $PY train.py --config configs/avworld_proxy.yaml data.avworld.streams=24 \
    data.avworld.val_streams=4 data.cache_dir=/tmp/device_cache train.max_steps=300 train.ckpt_every=300 \
    eval.plots=false logging.wandb.mode=disabled train.run_dir="$OUT/run"
  rm -rf "$OUT/run/checkpoints" "$OUT/run/final"  # keep metrics, config and results, not the weights
fi
want scan && stage scan 150 $PY eval/bench_scan.py --device cuda --lengths 2048 8192 32768 --chunk-sizes 64 \
  --repeat 5 --warmup 1 --out "$OUT/bench_scan_cuda.json"
want train_fp32 && stage train_fp32 150 $PY eval/bench_train.py --device cuda --max-load 1e9 --warmup 2 \
  --repeat 5 --out "$OUT/bench_train_cuda.json"
want train_bf16 && stage train_bf16 150 $PY eval/bench_train.py --device cuda --bf16 --max-load 1e9 \
  --warmup 2 --repeat 5 --out "$OUT/bench_train_cuda_bf16.json"
cat "$summary"
