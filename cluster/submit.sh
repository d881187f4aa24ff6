#!/usr/bin/env bash
# Submit one firm_ray experiment to a Ray cluster as a Ray job and follow its log:
#
#   cluster/submit.sh CONFIG [--set KEY=VALUE ...]
#   cluster/submit.sh --resume RUN_DIR     (RUN_DIR as the head sees it, on shared storage)
#
# runs, from the repository root (CONFIG is taken relative to it; the repository is uploaded
# with the job, so CONFIG must live inside it):
#
#   ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
#       --runtime-env cluster/runtime_env.yaml --working-dir . -- python -m firm_ray run CONFIG ...
#
# Environment:
#   RAY_ADDRESS          the cluster's dashboard/job API (default http://127.0.0.1:8265: a local
#                        head, the tunnel of `ray dashboard cluster/ray-cluster.yaml`, or
#                        `kubectl port-forward svc/<cluster>-head-svc 8265:8265`)
#   RAY_AUTH_MODE        default token: Ray 2.60 clusters started by cluster/ require the head's
#                        token, read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
#                        (`ray get-auth-token` on the head prints it)
#   FIRM_RAY_OUTPUT_DIR  if set, adds --set experiment.output_dir=$FIRM_RAY_OUTPUT_DIR (shared
#                        storage seen by the head; otherwise runs/ lands in the job's temporary
#                        working directory on the head)
#   FIRM_RAY_SUBMIT_ARGS extra `ray job submit` options, e.g. "--no-wait --submission-id qwen-1"
#
# Ctrl-C stops following the log, not the job: `ray job logs -f ID`, `ray job stop ID`.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  [ $# -ge 1 ] && exit 0
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
if [ "$1" = "--resume" ]; then
  if [ $# -ne 2 ]; then
    echo "error: --resume takes one RUN_DIR and nothing else (the run keeps its saved config)" >&2
    exit 2
  fi
  run=(run --resume "$2")
  shift 2
else
  config="$1"
  shift
  if [ ! -f "$config" ]; then
    echo "error: config $config not found" >&2
    exit 2
  fi
  config_abs="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
  case "$config_abs" in
    "$repo"/*) config="${config_abs#"$repo"/}" ;;
    *)
      echo "error: $config is outside the repository $repo; the job only sees files uploaded" \
        "with --working-dir, so put the config under tune_configs/" >&2
      exit 2
      ;;
  esac
  run=(run "$config")
  if [ -n "${FIRM_RAY_OUTPUT_DIR:-}" ]; then
    run+=(--set "experiment.output_dir=$FIRM_RAY_OUTPUT_DIR")
  fi
fi

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [ "$RAY_AUTH_MODE" = "token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
  && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  echo "error: RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN (the head's" \
    "\`ray get-auth-token\`) or put it in ~/.ray/auth_token" >&2
  exit 2
fi

extra=()
if [ -n "${FIRM_RAY_SUBMIT_ARGS:-}" ]; then
  read -r -a extra <<< "$FIRM_RAY_SUBMIT_ARGS"
fi

cd "$repo"
set -x
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env cluster/runtime_env.yaml --working-dir . \
  ${extra[@]+"${extra[@]}"} \
  -- python -m firm_ray "${run[@]}" "$@"
