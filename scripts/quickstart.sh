#!/usr/bin/env bash
# Set up a fresh machine (scripts/setup.sh) and run the embedded default experiment:
# FIRM on the built-in world, 8 clients, 5 rounds, 2 local Ray workers. Extra arguments go to
# `firm-ray run` (e.g. --set algorithm.preference=[0.7,0.3]). Prints where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  # shellcheck disable=SC1091
  . "${FIRM_RAY_VENV:-.venv}/bin/activate"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
firm-ray run tune_configs/quickstart.yaml "$@"
