#!/usr/bin/env bash
# Set up .venv with stanhier and its test/docs dependencies, make sure a CmdStan is there
# (built once per machine from ../shared/cmdstan if needed), then run the whole test suite:
# every backend-dependent test runs on both engines, pystan and CmdStan.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh "test,docs"
source scripts/ensure-cmdstan.sh
exec .venv/bin/python -m pytest "$@"
