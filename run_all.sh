#!/usr/bin/env bash
# Run every stage of one experiment: bash run_all.sh [configs/X.yaml] [--force] [--setup-only]
#   configs/demo.yaml (default): the built-in demo, minutes on a CPU.
#   --force       redo stages whose outputs already exist (default: skip finished work)
#   --setup-only  create/update the virtual environment and stop
# Environment: VENV (default .venv), TORCH_SPEC (default torch==2.13.0 without a GPU).
set -euo pipefail
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"   # see src/tokenfocus/__init__.py
cd "$(dirname "${BASH_SOURCE[0]}")"

CONFIG=configs/demo.yaml
FORCE=()
SETUP_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=(--force) ;;
    --setup-only) SETUP_ONLY=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    -*) echo "run_all.sh: unknown option $arg" >&2; exit 2 ;;
    *) CONFIG="$arg" ;;
  esac
done
[ -f "$CONFIG" ] || { echo "run_all.sh: config not found: $CONFIG" >&2; exit 2; }

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating virtual environment $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
  fi
  # A CUDA torch already in the environment is kept; otherwise the CPU build unless a GPU is seen.
  if ! "$PY" -c "import torch" 2>/dev/null; then
    local spec="${TORCH_SPEC:-}"
    if [ -z "$spec" ]; then
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="torch"
      else
        spec="torch==2.13.0"
      fi
    fi
    echo "== installing $spec"
    "$PY" -m pip install -q "$spec"
  fi
  local stamp="$VENV/.requirements-$(cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "== installing requirements"
    "$PY" -m pip install -q -r requirements.txt
    "$PY" -m pip install -q --no-deps -e .
    rm -f "$VENV"/.requirements-*
    touch "$stamp"
  fi
}

stage() {
  local script="$1"; shift
  echo
  echo "== $script"
  local t0; t0=$(date +%s)
  "$PY" "src/$script" --config "$CONFIG" "${FORCE[@]}" "$@"
  echo "-- $script: $(( $(date +%s) - t0 )) s"
}

setup
[ "$SETUP_ONLY" = 1 ] && { echo "environment ready: $PY"; exit 0; }

START=$(date +%s)
stage 00_make_demo_data.py
stage tools/validate_data.py
stage 01_eda.py
stage 02_make_folds.py
stage 03_train.py
stage 04_infer.py
stage 05_ensemble.py
stage 06_evaluate.py
stage 07_notebooks.py
echo
echo "done in $(( $(date +%s) - START )) s"
