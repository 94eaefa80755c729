#!/usr/bin/env bash
# Set up .venv with stanhier and its test/docs dependencies, make sure a CmdStan is there
# (built once per machine from ../shared/cmdstan if needed), then run the whole test suite:
# every backend-dependent test runs on both engines, pystan and CmdStan.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh "test,docs"
source scripts/ensure-cmdstan.sh
# What every Stan program shares (the precompiled Stan header, CmdStan's main object) is
# compiled once per installation, as CmdStan's own `make build` does, and so are lmer's and
# glmer's fixed programs, as lme4's compiled code is: a no-op once built.
.venv/bin/stanhier prepare
# The tests run in parallel worker processes, one per core up to 4 (each compile uses up to
# ~3 GB); arguments after the command win (`bash scripts/test.sh -n 0` runs them in one process).
workers=$(nproc 2>/dev/null || echo 2)
[ "$workers" -gt 4 ] && workers=4
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
