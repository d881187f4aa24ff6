#!/usr/bin/env bash
# Set up everything from a fresh clone, then run the checks CI runs: ruff, the import-layer
# contracts, and the pytest suite (unit + end-to-end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  # shellcheck disable=SC1091
  . "${FIRM_RAY_VENV:-.venv}/bin/activate"
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
echo "[test] ruff"
ruff check .
ruff format --check .
echo "[test] import contracts"
lint-imports
echo "[test] pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] ERROR: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
