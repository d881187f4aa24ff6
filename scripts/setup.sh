#!/usr/bin/env bash
# Set up firm_ray on a fresh machine: a virtualenv (unless one is active), torch, the project.
#
# The torch trap: an unpinned torch requirement makes pip fetch several GB of CUDA wheels. So
# torch is installed FIRST (the CPU 2.13.0 wheel, or whatever FIRM_RAY_TORCH names), then the
# installed build is pinned as a pip constraint for every later install, including the isolated
# build environments of packages built from source (PIP_CONSTRAINT reaches those too).
# A GPU cluster user who already has their own CUDA torch in the active environment keeps it.
#
#   bash scripts/setup.sh            # creates ./.venv and installs firm_ray[dev] in it
#   FIRM_RAY_VENV=/path/env ...      # another virtualenv location
#   FIRM_RAY_TORCH="torch==2.13.0"   # the torch requirement used when none is installed
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  venv="${FIRM_RAY_VENV:-.venv}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
fi
py=python
state_dir="$($py -c 'import sys; print(sys.prefix)')"

if ! $py -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing ${FIRM_RAY_TORCH:-torch==2.13.0} first (CPU wheel on this machine)"
  $py -m pip install -q "${FIRM_RAY_TORCH:-torch==2.13.0}"
fi
torch_version="$($py -c 'import torch; print(torch.__version__)')"
constraint="$state_dir/firm-ray-torch-constraint.txt"
echo "torch==$torch_version" > "$constraint"
echo "[setup] torch $torch_version pinned for the rest of the install ($constraint)"

# Skip the (slow) resolver pass when the installed project already matches pyproject.toml.
stamp="$state_dir/firm-ray-setup.stamp"
want="$(cat pyproject.toml "$constraint" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $py -c "import firm_ray" >/dev/null 2>&1; then
  echo "[setup] environment up to date"
else
  PIP_CONSTRAINT="$constraint" $py -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
after="$($py -c 'import torch; print(torch.__version__)')"
if [ "$after" != "$torch_version" ]; then
  echo "[setup] ERROR: torch changed from $torch_version to $after during the install" >&2
  exit 1
fi
echo "[setup] ready: $($py -c 'import sys; print(sys.prefix)')"
