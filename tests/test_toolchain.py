"""The pystan backend's compiler set-up: the cache key ignores how the interpreter is
spelled, and the shared precompiled header is built once when two processes need it at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import LOG_NOTES, TINY_NORMAL
from stanhier.backends import get_backend, toolchain

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_NORMAL

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


FIRST = LOG_NOTES + """
    import json, time
    from stanhier.backends import get_backend
    t0 = time.time()
    model = get_backend("pystan").compile({code!r}, progress=False)
    lp = model.log_density({{"N": 2, "y": [1.0, 3.0]}}).log_prob([2.0])
    header = [n.split("precompiled header: ")[1].rstrip(")") for n in notes if "precompiled header: " in n]
    print(json.dumps({{"hit": model.cache_hit, "lp": lp, "seconds": time.time() - t0, "header": header}}))
"""


@pytest.mark.slow
def test_first_program_skips_the_header_then_two_processes_build_it_once(tmp_path, monkeypatch, caplog):
    """In an empty cache the installation's first program compiles without building the shared
    header (a one-model user never pays for it). In a cache that has compiled a program before,
    two processes compile a program each at the same moment, with no header yet: both succeed,
    and the header is built once (by the process that took its lock, while its program compiled;
    the other compiled without it), leaving no temporary file. The next program finds it."""
    import shutil

    from stanhier import cache

    flags = toolchain.compile_flags()
    get_backend("pystan").compile(TINY, progress=False)  # in the session's cache
    compiled = cache.cache_dir() / "objects" / toolchain.model_name_for(TINY).split("/")[1]
    with toolchain.services_alongside(flags, None) as shared:  # the session's (TINY's compile linked it)
        services = shared.path
    monkeypatch.setenv("STANHIER_CACHE_DIR", str(tmp_path / "empty"))
    with caplog.at_level("DEBUG", logger="stanhier"), toolchain.header_alongside(flags) as header:
        assert header is None  # the decision only: what a first program compiles with
    assert "the first program of this installation" in caplog.text
    assert not list((tmp_path / "empty").glob("pch/pystan-*"))  # no header build started
    # a cache that has compiled a program before: a copy of one the session compiled; and the
    # session's services object (once per installation too, but not this test's subject)
    shutil.copytree(compiled, tmp_path / "objects" / compiled.name)
    if not toolchain.stan_threads():
        (tmp_path / "pch").mkdir()
        (tmp_path / "pch" / services.parent.name).symlink_to(services.parent, target_is_directory=True)
    env = {**os.environ, "STANHIER_CACHE_DIR": str(tmp_path)}
    programs = [f"{TINY}// toolchain, program {i}\n" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(FIRST.format(code=code))], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for code in programs]
    outs = [p.communicate(timeout=1800) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert [r["hit"] for r in results] == [False, False]
    assert all(r["lp"] == pytest.approx(-1.0) for r in results)  # normal(1 | 2, 1) + normal(3 | 2, 1), no constants
    folders = [p for p in (tmp_path / "pch").glob("pystan-*") if p.is_dir()]
    assert len(folders) == 1
    folder = folders[0]
    assert (folder / "stan_pch.hpp.gch").is_file() and (folder / "COMPLETE").is_file()
    assert len((folder / "builds").read_text().splitlines()) == 1
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert sorted(r["header"] == ["None"] for r in results) == [True, True]  # neither waited for it
    monkeypatch.setenv("STANHIER_CACHE_DIR", str(tmp_path))
    with toolchain.header_alongside(flags) as header:  # the next program compiles with it
        assert header == folder / "stan_pch.hpp"
    assert len((folder / "builds").read_text().splitlines()) == 1


def test_header_key_follows_flags():
    """Another flag set is another header (a .gch is only valid for the flags it was built with)."""
    assert toolchain._header_key(["-O3", "-g0"]) != toolchain._header_key(["-O2", "-g0"])
    assert "-g0" in toolchain.compile_flags() or os.environ.get(toolchain.CXXFLAGS_ENV)


# no '~' statement: both propto variants are the full density, so the split instantiates two
SPLIT = """
functions {
  real scaled_lpdf(vector y, real mu, real s) { return normal_lpdf(y | mu, s) - log(s); }
}
data { int N; vector[N] y; }
parameters { real mu; real<lower=0> sigma; cholesky_factor_corr[3] L; }
model {
  target += scaled_lpdf(y | mu, sigma) + student_t_lpdf(sigma | 3, 0, 2) + lkj_corr_cholesky_lpdf(L | 2);
}
generated quantities { real z = normal_rng(mu, sigma); }  // toolchain split
"""

EVAL = """
    import json, numpy as np
    from stanhier.backends import get_backend
    model = get_backend("pystan").compile({code!r}, progress=False)
    dens = model.log_density({{"N": 3, "y": [0.5, 1.5, -0.2]}})
    thetas = np.random.default_rng(4).normal(size=(5, 5))
    print(json.dumps({{"name": model.model_name, "values": [[dens.log_prob_grad(t, jac)[0], *dens.log_prob_grad(t, jac)[1]]
                                                        for t in thetas for jac in (False, True)],
                      "constrained": [np.concatenate([np.ravel(v) for _, v in sorted(dens.constrain(t).items())]).tolist()
                                      for t in thetas]}}))
"""


#: the child's compile sees stanc's text as it wrote it (the rewrites of split_program and
#: one_unit do not apply): the reference the rewritten units are checked against
AS_WRITTEN = """
    from stanhier.backends import toolchain
    toolchain.one_unit = lambda cpp, propto=True: None
"""


def test_rewritten_units_compute_what_stancs_unit_does(tmp_path):
    """Two translation units compiled at once (toolchain.split_program) and one rewritten unit
    (toolchain.one_unit) give the module stanc's own unit gives: the same log density and
    gradient, with and without the Jacobian, through a user-defined density, constrained
    parameters and a generated quantity; and the same constrained values and generated quantity
    (write_array on Eigen copies)."""
    from stanhier import cache

    configs = {"two": ("1", ""), "one": ("0", ""), "stanc": ("0", AS_WRITTEN)}
    folders, results = {}, {}
    for label, (split, patch) in configs.items():
        folders[label] = tmp_path / label
        folders[label].mkdir()
        (folders[label] / "pch").symlink_to(cache.cache_dir() / "pch", target_is_directory=True)
        results[label] = _run(sys.executable, patch + EVAL.format(code=SPLIT),
                              {"STANHIER_CACHE_DIR": str(folders[label]), toolchain.SPLIT_ENV: split})
    assert len({r["name"] for r in results.values()}) == 1
    units = {label: [p.read_text() for p in sorted(folder.rglob("model_*.cpp"))] for label, folder in folders.items()}
    assert [len(u) for u in units.values()] == [2, 1, 1]
    assert "defined in the gradient's translation unit" in units["two"][0]
    assert "log_prob_reverse" in units["one"][0] and "log_prob_reverse" not in units["stanc"][0]
    for label in ("two", "one"):
        np.testing.assert_allclose(results[label]["values"], results["stanc"]["values"], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(results[label]["constrained"], results["stanc"]["constrained"], rtol=1e-13,
                                   atol=1e-13)


@pytest.mark.engine_free  # no Stan program runs
def test_two_units_only_when_a_core_is_idle(monkeypatch):
    monkeypatch.setenv(toolchain.SPLIT_ENV, "1")
    assert toolchain.two_units_pay()
    monkeypatch.setenv(toolchain.SPLIT_ENV, "0")
    assert not toolchain.two_units_pay()
    monkeypatch.setenv(toolchain.SPLIT_ENV, "auto")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for load, two in ((0.4, True), (1.0, True), (1.9, False), (3.0, False)):
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        assert toolchain.two_units_pay() is two, load
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not toolchain.two_units_pay()  # one core: never


def test_propto_detection_reads_statements_not_comments():
    assert toolchain.uses_propto(TINY) and not toolchain.uses_propto(SPLIT)
    assert toolchain.uses_propto("model { target += normal_lupdf(y | 0, 1); }")


def test_autodiff_stack_is_a_plain_global():
    """Programs compile without ``STAN_THREADS`` (toolchain.macros): in the module httpstan imports,
    Stan's autodiff stack is a plain global, not a thread-local variable (whose every access from
    a shared library is a call to ``__tls_get_addr``), and the module links stanhier's services
    object, compiled the same way (a mismatch would not link)."""
    import shutil

    import httpstan.cache

    if shutil.which("readelf") is None:
        pytest.skip("needs readelf (binutils)")
    if toolchain.stan_threads():
        pytest.skip(f"${toolchain.THREADS_ENV} asks for STAN_THREADS")
    model = get_backend("pystan").compile(TINY, progress=False)
    (module,) = httpstan.cache.model_directory(model.model_name).glob("*.so")
    symbols = subprocess.run(["readelf", "-sW", str(module)], capture_output=True, text=True, check=True).stdout
    stack = [line.split() for line in symbols.splitlines() if "AutodiffStackSingleton" in line and "instance_" in line]
    assert stack and {fields[3] for fields in stack} == {"OBJECT"}, stack  # not TLS
