#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with diffusion-accel installed (editable).
# On a machine without a CUDA driver, torch is pinned to the CPU build first so that installing
# the package does not pull the multi-GB CUDA stack.  Override with TORCH_SPEC, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install ${TORCH_SPEC:-torch}
  else
    "$PY" -m pip install ${TORCH_SPEC:-torch==2.13.0}
  fi
fi

stamp="$VENV/.diffusion-accel-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PY" -m pip install -e ".[dev]"
  touch "$stamp"
fi
