#!/usr/bin/env bash
# Create .venv and install the pinned requirements (runtime; `--dev` adds test tools).
# llama-cpp-python compiles on first install (about 9 minutes on 2 cores); pip caches it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "ragstream needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))." >&2
  exit 1
fi
# llama-cpp-python builds with a C/C++ compiler and CMake.
if ! command -v g++ >/dev/null || ! command -v cmake >/dev/null || ! command -v make >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq build-essential cmake >/dev/null
  else
    echo "Install a C++ compiler, make and cmake (e.g. apt-get install build-essential cmake)." >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
stamp=.venv/.installed-$(cat requirements*.txt | cksum | cut -d' ' -f1)-$requirements
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  echo "Installing $requirements into .venv (the first time compiles llama-cpp-python: ~10 min)..."
  .venv/bin/python -m pip install -q -r "$requirements"
  touch "$stamp"
fi
# The project itself, editable: `backend` and `frontend` import from anywhere (bench/, tests).
if ! .venv/bin/python -c 'import importlib.metadata as m; m.distribution("ragstream")' 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
fi
