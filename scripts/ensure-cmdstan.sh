#!/usr/bin/env bash
# Sourced by test.sh (after setup-venv.sh): make sure the test run finds a CmdStan, so every
# backend-dependent test runs on both engines (pystan and CmdStan).
#  - a CmdStan that cmdstanpy already finds ($CMDSTAN, ~/.cmdstan) is used as is;
#  - else, when ../shared/cmdstan/build.sh exists (machines without GitHub, such as CI), CmdStan
#    2.35.0 is built ONCE per machine into ${XDG_CACHE_HOME:-~/.cache}/stanhier/cmdstan-2.35.0:
#    in a temporary sibling directory renamed into place when the build succeeded (a half-built
#    tree is never used), under a lock (flock) so two runs never build at the same time.
# Exports CMDSTAN. Without a CmdStan, CI=true fails here; elsewhere the CmdStan tests are skipped.
set -euo pipefail
_cmdstan_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_cmdstan_target="${XDG_CACHE_HOME:-$HOME/.cache}/stanhier/cmdstan-2.35.0"
_cmdstan_builder="$_cmdstan_root/../shared/cmdstan/build.sh"

_cmdstan_found() {
  "$_cmdstan_root/.venv/bin/python" -c "import cmdstanpy, sys; sys.stdout.write(cmdstanpy.cmdstan_path())" \
    2>/dev/null
}

if ! _cmdstan_path="$(_cmdstan_found)"; then
  if [ ! -f "$_cmdstan_target/makefile" ] && [ -f "$_cmdstan_builder" ]; then
    mkdir -p "$(dirname "$_cmdstan_target")"
    (
      flock 9
      if [ ! -f "$_cmdstan_target/makefile" ]; then
        tmp="$_cmdstan_target.tmp.$$"
        rm -rf "$_cmdstan_target".tmp.*  # left by a killed build; we hold the lock, so none is running
        echo "Building CmdStan 2.35.0 into $_cmdstan_target (once per machine; 3-8 minutes)..." >&2
        start=$(date +%s)
        if ! bash "$_cmdstan_builder" "$tmp" -j"$(nproc 2>/dev/null || echo 2)" > "$_cmdstan_target.build.log" 2>&1; then
          tail -30 "$_cmdstan_target.build.log" >&2
          rm -rf "$tmp"
          echo "CmdStan build failed (log: $_cmdstan_target.build.log)" >&2
          exit 1
        fi
        mv "$tmp" "$_cmdstan_target"
        echo "CmdStan built in $(( $(date +%s) - start )) s." >&2
      fi
    ) 9>"$_cmdstan_target.lock"
  fi
  if [ -f "$_cmdstan_target/makefile" ]; then
    export CMDSTAN="$_cmdstan_target"
  elif [ "${CI:-}" = "true" ]; then
    echo "CI=true but no CmdStan was found and none could be built (no $_cmdstan_builder);" \
         "the CmdStan half of the suite cannot run." >&2
    exit 1
  fi
else
  export CMDSTAN="$_cmdstan_path"
fi
