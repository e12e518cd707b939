#!/usr/bin/env bash
# The CUDA path on a lent GPU machine (shared/GPU.md has what such a machine holds).
#
# Prepare here, once (wheels for what the bare GPU machine lacks; .whl/ is git-ignored):
#   bash scripts/device_check.sh --prepare
# Check here that every default stage's command runs (CPU, tiny sizes, same scripts and flags):
#   bash scripts/device_check.sh --dry-run            # output under $OUT (default /tmp/device_check)
# Then on the GPU machine, from the repository root, with the wheels carried (device `run`, carry
# [".whl/core"], plus ".whl/media" for the optional train stage):
#   OUT=$OUT bash scripts/device_check.sh [STAGE ...]  # default: the issue-32 stages below
# The device call carries at most 64 MiB (working tree + .whl): check `git ls-files | xargs du -ch | tail -1`
# and `du -sh .whl`; move large untracked/ignored model files aside if the sum is near the limit.
#
# Each stage runs under its own timeout; one failing does not stop the next; summary.txt has each
# stage's exit status (124 = its time limit) and wall time, and the bench scripts write their JSON
# after every length / N, so a stage cut by its limit keeps what it finished. Limits are sized for a
# fresh H200 (Triton compile + autotune included; session 14 measured 86 s for the 9 CUDA tests and
# 38-45 s per default-config bench_train run with the Triton cache warm, ~40% more cold):
#   tests        pytest -m cuda tests/ops/test_attention.py: FlexAttention / blocked / dense SDPA on
#                the GPU == the naive twin (values, gradients, fp32 + bf16), no host sync   limit  75 s
#   gpu_train    bench_train --bf16, configs/gpu_base.yaml vs gpu_base_transformer.yaml at 4K, 16K
#                tokens per sequence (32K tokens per step): tok/s, ratio, MFU, peak memory limit 180 s
#   gpu_train64k the same at 64K tokens per sequence (one row)                              limit 120 s
#   sessions     bench_sessions --device cuda: largest N of default-model sessions in real
#                time (N = 250, 500, 750, 1000, 1500, 2000, 3000; stops at the first miss)  limit  75 s
#   => at most ~7.5 min, typically less.
# Optional stages (name them): cuda_tests (every -m cuda test, 9 + attention: ~90-150 s), train
# (train.py proxy run, 300 s), scan (bench_scan, 150 s), train_fp32 / train_bf16 (default config vs
# its Transformer at 1K/4K/16K, 150 s each: the session-14 comparison after the attention fix),
# gpu_train_compile (gpu_train with both models' forward under torch.compile, train.compile=true;
# compile time unmeasured on a GPU: 300 s).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  # .whl/core (~2 MB): what every default stage needs; .whl/media (~50 MB: PyAV, decord): only the
  # optional train stage (AVWorld written as mp4s). Carry .whl/core alone unless that stage runs.
  rm -rf .whl && mkdir -p .whl/core .whl/media
  PIP=(.venv/bin/python -m pip)
  # pure-Python mamba_ssm: its Mamba-2 SSD kernels are Triton, no CUDA compilation needed
  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
    mamba-ssm==2.3.2.post1 -w .whl/core
  "${PIP[@]}" wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl/core  # an sdist only on PyPI
  # the GPU machine's Python is 3.12 (it has torch, numpy, triton, tokenizers)
  PLAT=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp --platform manylinux2010_x86_64
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
  "${PIP[@]}" download -q "${PLAT[@]}" -d .whl/core omegaconf==2.4.0 pyyaml pytest pluggy iniconfig \
    pytest-timeout tqdm
  "${PIP[@]}" download -q "${PLAT[@]}" -d .whl/media av==18.1.0 decord==0.6.0
  du -sh .whl/core .whl/media  # the device call carries at most 64 MiB, working tree included
  exit 0
fi

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
DEFAULT_STAGES=(tests gpu_train gpu_train64k sessions)
for st in "$@"; do
  case $st in
    tests|gpu_train|gpu_train_compile|gpu_train64k|sessions|cuda_tests|train|scan|train_fp32|train_bf16) ;;
    *) echo "device_check.sh: unknown stage '$st' (tests, gpu_train, gpu_train_compile, gpu_train64k," \
         "sessions, cuda_tests, train, scan, train_fp32, train_bf16)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
if (( DRY )); then
  # CPU, tiny sizes: every command line below runs, nothing is measured
  PY=.venv/bin/python DEV=cpu LEN_A=(600 1200) LEN_B=(1800) TPS=1200 REP=(--warmup 0 --repeat 1)
  SESS=(--sessions 2 3 --rounds 2 --warmup 1 --threads 1) BF16=() SCALE=20
else
  PY=python3 DEV=cuda LEN_A=(4096 16384) LEN_B=(65536) TPS=32768 REP=(--warmup 1 --repeat 3)
  SESS=(--warmup 2 --rounds 10) BF16=(--bf16) SCALE=1
  SITE=/tmp/device_site
  # what the machine lacks, from the carried wheels (never shadowing what it has: its numpy, torch)
  for pair in omegaconf:omegaconf yaml:pyyaml antlr4:antlr4_python3_runtime pytest:pytest pluggy:pluggy \
              iniconfig:iniconfig pytest_timeout:pytest_timeout tqdm:tqdm av:av decord:decord mamba_ssm:mamba_ssm; do
    mod=${pair%%:*} whl=${pair#*:}
    if ! $PY -c "import $mod" 2>/dev/null; then
      if compgen -G ".whl/*/$whl-*.whl" > /dev/null; then
        $PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/*/"$whl"-*.whl >> "$OUT/install.log" 2>&1 \
          || echo "install $whl failed" >> "$summary"
      else
        echo "$whl: no wheel carried (needed only by stages that import $mod)" >> "$OUT/install.log"
      fi
    fi
  done
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
    $PY -c "from ssm_mm.ops.ssd import cuda_ssd_available as a; from ssm_mm.ops.mamba_ref import mamba_refs_error as e; print('triton ssd:', a(), e())"
  } > "$OUT/machine.txt" 2>&1
fi

stage() {  # stage NAME TIMEOUT_S CMD...   (dry run: the limit x SCALE, CPU being slower)
  local name=$1 limit=$(( $2 * SCALE )) t0 rc
  shift 2
  t0=$(date +%s)
  echo "[$(date +%T)] $name (limit ${limit}s): $*" >> "$OUT/stages.log"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc wall_s=$(( $(date +%s) - t0 ))" >> "$summary"
}

want() {  # whether stage $1 was asked for (no arguments: the default stages)
  local asked=("${STAGES[@]}")
  [[ ${#asked[@]} -eq 0 ]] && asked=("${DEFAULT_STAGES[@]}")
  [[ " ${asked[*]} " == *" $1 "* ]]
}
STAGES=("$@")
GPU_BASE=(--config configs/gpu_base.yaml --baseline configs/gpu_base_transformer.yaml)

want tests && stage tests 75 $PY -m pytest -q -p no:cacheprovider -m cuda tests/ops/test_attention.py
want gpu_train && stage gpu_train 180 $PY eval/bench_train.py --device $DEV "${BF16[@]}" "${GPU_BASE[@]}" \
  --lengths "${LEN_A[@]}" --tokens-per-step $TPS "${REP[@]}" --max-load 1e9 --out "$OUT/bench_train_gpu_base.json"
want gpu_train_compile && stage gpu_train_compile 300 $PY eval/bench_train.py --device $DEV "${BF16[@]}" \
  "${GPU_BASE[@]}" --compile --lengths "${LEN_A[@]}" --tokens-per-step $TPS "${REP[@]}" --max-load 1e9 \
  --out "$OUT/bench_train_gpu_base_compile.json"
want gpu_train64k && stage gpu_train64k 120 $PY eval/bench_train.py --device $DEV "${BF16[@]}" "${GPU_BASE[@]}" \
  --lengths "${LEN_B[@]}" --tokens-per-step $TPS "${REP[@]}" --max-load 1e9 --out "$OUT/bench_train_gpu_base_64k.json"
want sessions && stage sessions 75 $PY eval/bench_sessions.py --device $DEV "${SESS[@]}" --max-load 1e9 \
  --out "$OUT/bench_sessions_cuda.json"
want cuda_tests && stage cuda_tests 240 $PY -m pytest -q -p no:cacheprovider -m cuda tests/ops tests/streaming/test_cuda.py
if want train; then
  stage train 300 $PY train.py --config configs/avworld_proxy.yaml data.worlds.avworld.streams=24 \
    data.worlds.avworld.val_streams=4 data.cache_dir=/tmp/device_cache train.max_steps=300 train.ckpt_every=300 \
    eval.plots=false logging.wandb.mode=disabled train.run_dir="$OUT/run"
  rm -rf "$OUT/run/checkpoints" "$OUT/run/final"  # keep metrics, config and results, not the weights
fi
want scan && stage scan 150 $PY eval/bench_scan.py --device $DEV --lengths 2048 8192 32768 --chunk-sizes 64 \
  --repeat 5 --warmup 1 --out "$OUT/bench_scan_cuda.json"
want train_fp32 && stage train_fp32 150 $PY eval/bench_train.py --device $DEV --max-load 1e9 --warmup 2 \
  --repeat 5 --out "$OUT/bench_train_cuda.json"
want train_bf16 && stage train_bf16 150 $PY eval/bench_train.py --device $DEV --bf16 --max-load 1e9 \
  --warmup 2 --repeat 5 --out "$OUT/bench_train_cuda_bf16.json"
cat "$summary"
