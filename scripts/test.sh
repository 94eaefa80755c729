#!/usr/bin/env bash
# Set up .venv with stanhier and its test/docs dependencies, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh "test,docs"
exec .venv/bin/python -m pytest "$@"
