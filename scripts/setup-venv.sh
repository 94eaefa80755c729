#!/usr/bin/env bash
# Sourced by main.sh and test.sh, or run alone (`bash scripts/setup-venv.sh docs`): create .venv
# (Python 3.11) if needed and install stanhier with the extras given as arguments (e.g. "test,docs").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${1:+[$1]}"
