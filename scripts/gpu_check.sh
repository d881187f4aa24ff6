#!/usr/bin/env bash
# The GPU check, on a bare GPU image (torch, transformers, peft installed; no venv, no pip
# install of the project, no network): run from the repository root or anywhere,
#
#   bash scripts/gpu_check.sh
#
# 1. preflight: every module the client path imports, named if missing (then it stops);
# 2. the gpu smoke test (tests/gpu, pytest -m gpu) on FIRM_RAY_TEST_DEVICE (default cuda);
# 3. bench/gpu.py in float32, then bfloat16 weights with bf16 autocast.
# Logs and JSON go to $OUT when set (else bench/results/): gpu_check.log, gpu_float32.json,
# gpu_bfloat16.json. Every step runs even if an earlier one failed; the exit status is non-zero
# if any did.
#
# Environment: PYTHON (default python3); FIRM_RAY_TEST_DEVICE (cuda | cpu); BENCH_ARGS (extra
# bench/gpu.py flags, e.g. "--layers 2 --new-tokens 16 --steps 1 --warmup 0" for a CPU try);
# FIRM_RAY_WHEELS: a folder of wheels for modules the image lacks (pydantic, pydantic-core,
# annotated-types, typing-inspection on an image with only torch/transformers/peft), installed
# with pip --no-index into a temporary folder put first on PYTHONPATH (nothing else is installed).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-bench/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export FIRM_RAY_TEST_DEVICE=${FIRM_RAY_TEST_DEVICE:-cuda}

say() { echo "[gpu_check] $*" | tee -a "$LOG"; }

if [ -n "${FIRM_RAY_WHEELS:-}" ]; then
  site=$(mktemp -d)
  say "installing $(ls "$FIRM_RAY_WHEELS"/*.whl | wc -l) wheels from $FIRM_RAY_WHEELS into $site"
  "$PY" -m pip install -q --no-index --no-deps --target "$site" "$FIRM_RAY_WHEELS"/*.whl \
    2>&1 | tee -a "$LOG" || exit 1
  export PYTHONPATH="$site:$PYTHONPATH"
fi

say "preflight ($PY, device $FIRM_RAY_TEST_DEVICE)"
"$PY" - "$FIRM_RAY_TEST_DEVICE" <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, sys

# Third-party modules the client path, the smoke test and the bench import.
needed = ["torch", "transformers", "peft", "tokenizers", "safetensors", "numpy", "yaml",
          "filelock", "pydantic", "pydantic_core", "annotated_types", "typing_inspection",
          "pytest"]
missing = []
for name in needed:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
if missing:
    sys.exit("[gpu_check] missing modules: " + "; ".join(missing)
             + "\n[gpu_check] provide them as wheels in FIRM_RAY_WHEELS (see this script's header)")
for name in ["firm_ray.trainer", "firm_ray.models.policy", "firm_ray.rewards", "firm_ray.data"]:
    importlib.import_module(name)
import peft, torch, transformers
print(f"[gpu_check] torch {torch.__version__} (cuda {torch.version.cuda}), transformers "
      f"{transformers.__version__}, peft {peft.__version__}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("[gpu_check] FIRM_RAY_TEST_DEVICE=cuda but torch sees no GPU")
    print(f"[gpu_check] {torch.cuda.get_device_name(0)}")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

status=0
say "smoke test: pytest tests/gpu -m gpu"
"$PY" -m pytest tests/gpu -m gpu -q -p no:cacheprovider 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; say "smoke test FAILED"; }

for dtype in float32 bfloat16; do
  say "bench/gpu.py --dtype $dtype"
  # shellcheck disable=SC2086
  "$PY" bench/gpu.py --device "$FIRM_RAY_TEST_DEVICE" --dtype "$dtype" ${BENCH_ARGS:-} \
    --out "$RESULTS/gpu_$dtype.json" 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; say "bench $dtype FAILED"; }
done
say "done (status $status); results in $RESULTS"
exit "$status"
