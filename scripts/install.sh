#!/usr/bin/env bash
# Create .venv (once) and install def_ray with its pinned dependencies. torch==2.13.0 goes FIRST:
# a torch range resolved by another package would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.def_ray-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
  # the build backend's editable-install notice is a Python warning (a dozen lines); errors still show
  PYTHONWARNINGS=ignore python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  python -m pip check
  touch "$stamp"
fi
