#!/usr/bin/env bash
# Set up .venv with stanhier, then fit the seed's fish example and print the results.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh ""
exec .venv/bin/python examples/fish.py "$@"
