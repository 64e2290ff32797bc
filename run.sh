#!/usr/bin/env bash
# SeaChange: ./run.sh (window on the demo preset) | ./run.sh test | ./run.sh train PRESET [--set k=v ...]
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$VENV/.seachange-installed" ] || [ pyproject.toml -nt "$VENV/.seachange-installed" ]; then
    # Install torch only when none is importable: an unpinned torch would pull a multi-GB CUDA build.
    if ! "$PY" -c "import torch" 2>/dev/null; then
      "$PY" -m pip install -q "torch==2.13.0"
    fi
    "$PY" -m pip install -q -e ".[dev]"
    touch "$VENV/.seachange-installed"
  fi
}

setup
cmd="${1:-window}"
case "$cmd" in
  test)
    shift
    exec "$PY" -m pytest -q "$@"
    ;;
  train)
    shift
    exec "$PY" -m trainer train "$@"
    ;;
  window)
    if "$PY" -c "import app.window" 2>/dev/null; then
      exec "$PY" -m app --preset presets/demo.json
    fi
    exec "$PY" -m trainer train presets/demo.json
    ;;
  *)
    exec "$PY" -m "$@"
    ;;
esac
