#!/usr/bin/env bash
# Set up ssm_mm on a fresh Debian machine (Python >= 3.10) or refresh an existing set-up.
#
#   bash scripts/setup.sh            # runtime deps into .venv
#   bash scripts/setup.sh --dev      # + pytest/ruff and mamba_ssm's pure-PyTorch references (tests)
#   bash scripts/setup.sh --cuda     # + mamba-ssm / causal-conv1d kernels (CUDA machines)
#
# Idempotent: a second run re-checks each step and skips what is already there (a few seconds).
# Torch: on a machine without an NVIDIA driver we pin the CPU wheel (torch==2.13.0), because an
# unpinned `torch` pulls a multi-GB CUDA build. With a GPU we keep/installs the default torch.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0; CUDA=0
for a in "$@"; do
  case "$a" in
    --dev) DEV=1 ;;
    --cuda) CUDA=1 ;;
    *) echo "setup.sh: unknown option '$a' (valid: --dev --cuda)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
log() { echo "[setup] $*"; }

# 1. System packages: ffmpeg (ffprobe, test-media encoding). Only as root; otherwise tell the user.
if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ffmpeg (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
  else
    log "WARNING: ffmpeg not found and cannot apt-get install it (not root); media tests that encode files will skip"
  fi
fi

# 1b. --dev: Debian's chromium + its driver for the browser test of the server page (tests/serve).
if [ "$DEV" = 1 ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium + chromium-driver (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } \
      || log "WARNING: could not install chromium; the browser test will skip"
  else
    log "WARNING: chromium-driver not found and cannot apt-get install it (not root); the browser test will skip"
  fi
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true

have() { "$VENV/bin/python" - "$@" <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, _, ver = spec.partition("==")
    try:
        v = m.version(name)
    except m.PackageNotFoundError:
        sys.exit(1)
    if ver and not v.startswith(ver):
        sys.exit(1)
PYEOF
}

# 3. Torch: CPU wheel pinned where there is no GPU.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  have torch || { log "installing torch (CUDA build)"; $PIP install -q torch; }
else
  have torch || { log "installing torch==2.13.0 (CPU build)"; $PIP install -q "torch==2.13.0"; }
fi

# 4. The package itself (editable) and its dependencies. Re-run only when pyproject.toml changed.
stamp="$VENV/.ssm_mm-installed"
extras=""
[ "$DEV" = 1 ] && extras="dev,ref,serve,browser-test"
want="$(sha256sum pyproject.toml | cut -c1-16) extras=$extras"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  log "installing ssm_mm${extras:+[$extras]} (editable)"
  if [ -n "$extras" ]; then $PIP install -q -e ".[$extras]"; else $PIP install -q -e .; fi
  echo "$want" > "$stamp"
fi

# 5. mamba-ssm / causal-conv1d. --dev: build them without CUDA so tests can use their pure-PyTorch
#    references (selective_scan_ref, ssd_minimal_discrete, causal_conv1d_ref) as independent twins.
#    --cuda: build with the CUDA extensions.
if [ "$DEV" = 1 ] || [ "$CUDA" = 1 ]; then
  if ! have mamba-ssm causal-conv1d; then
    if [ "$CUDA" = 1 ]; then
      log "building mamba-ssm + causal-conv1d (CUDA)"
      $PIP install -q wheel packaging ninja
      $PIP install -q --no-build-isolation --no-deps mamba-ssm causal-conv1d
    else
      log "building mamba-ssm + causal-conv1d references (no CUDA extension)"
      MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
      CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
        $PIP install -q --no-build-isolation --no-deps "mamba-ssm==2.3.2.post1" "causal-conv1d==1.6.0" \
        || log "WARNING: could not build mamba-ssm references; their parity tests will skip"
    fi
  fi
fi

"$VENV/bin/python" -c "import ssm_mm, torch; print('[setup] ok: ssm_mm', ssm_mm.__version__, '| torch', torch.__version__)"
