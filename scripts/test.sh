#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: lint, then pytest without the slow tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh tests/ops`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check ssm_mm tests eval research $(ls train.py 2>/dev/null)
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest -q "$@"
