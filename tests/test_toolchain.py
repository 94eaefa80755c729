"""The pystan backend's compiler set-up: the cache key ignores how the interpreter is
spelled, and the shared precompiled header is built once when two processes need it at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stanhier.backends import get_backend, toolchain

ROOT = Path(__file__).resolve().parents[1]
# a program no other test uses
TINY = "data { int N; vector[N] y; } parameters { real mu; } model { y ~ normal(mu, 1); } // toolchain\n"

COMPILE = """
    import json, sys
    import httpstan.models
    from stanhier.backends import get_backend
    model = get_backend("pystan").compile({code!r}, progress=False)
    lp = model.log_density({{"N": 2, "y": [1.0, 3.0]}}).log_prob([2.0])
    print(json.dumps({{"hit": model.cache_hit, "name": model.model_name, "exe": sys.executable, "lp": lp}}))
"""


@pytest.fixture(autouse=True)
def pystan_only(engine):
    if engine != "pystan":
        pytest.skip("the pystan backend's compiler set-up")


def _run(python: str, code: str, env: dict | None = None) -> dict:
    proc = subprocess.run([python, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_key_ignores_interpreter_spelling(tmp_path):
    """httpstan's own model name hashes sys.executable; stanhier's does not: the same program
    compiled through one spelling of the interpreter is a cache hit through another."""
    model = get_backend("pystan").compile(TINY, progress=False)
    link = tmp_path / "env"
    link.symlink_to(Path(sys.prefix), target_is_directory=True)
    other = link / Path(sys.executable).relative_to(sys.prefix) if Path(sys.executable).is_relative_to(
        sys.prefix) else link / "bin" / Path(sys.executable).name
    result = _run(str(other), COMPILE.format(code=TINY))
    assert result["exe"] != sys.executable and result["exe"].startswith(str(link))
    assert result["hit"] is True and result["name"] == model.model_name
    assert result["lp"] == pytest.approx(-1.0)


HEADER = """
    import json, logging, time
    from stanhier.backends import toolchain
    t0 = time.time()
    built = []
    hpp = toolchain.precompiled_header(on_build=lambda: built.append(True))
    print(json.dumps({"hpp": str(hpp), "built": bool(built), "seconds": time.time() - t0}))
"""


@pytest.mark.slow
def test_two_processes_need_the_header_at_once(tmp_path):
    """Two processes start with an empty cache and both ask for the precompiled header: one
    builds it under the lock, the other waits and uses it; the build leaves no temporary file."""
    env = {**os.environ, "STANHIER_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(HEADER)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1800) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["hpp"] == results[1]["hpp"] != "None"
    folder = Path(results[0]["hpp"]).parent
    assert (folder / "stan_pch.hpp.gch").is_file() and (folder / "COMPLETE").is_file()
    assert len((folder / "builds").read_text().splitlines()) == 1
    assert not list(folder.glob(".*.gch"))


def test_header_key_follows_flags():
    """Another flag set is another header (a .gch is only valid for the flags it was built with)."""
    assert toolchain._header_key(["-O3", "-g0"]) != toolchain._header_key(["-O2", "-g0"])
    assert "-g0" in toolchain.compile_flags() or os.environ.get(toolchain.CXXFLAGS_ENV)
