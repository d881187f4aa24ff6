#!/usr/bin/env bash
# Wheels the GPU machine's image lacks for the client path (pydantic and its three
# requirements), for its Python (3.12, manylinux x86_64), into .gpu_wheels/ (git-ignored).
# The device machine has no network: carry the folder and point scripts/gpu_check.sh at it:
#
#   bash scripts/gpu_wheels.sh
#   # device run, carry [".gpu_wheels"]:  FIRM_RAY_WHEELS=.gpu_wheels bash scripts/gpu_check.sh
#
# Versions follow this environment's pydantic so both sides run the same config code.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
pins=$("$py" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
      ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")))
PY
)
rm -rf .gpu_wheels && mkdir -p .gpu_wheels
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d .gpu_wheels $pins
ls -l .gpu_wheels
