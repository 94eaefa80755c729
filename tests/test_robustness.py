"""Robustness with real processes: concurrent compiles, broken cache entries, Ctrl-C,
reproducibility across processes, and column names that are not identifiers.

Each test runs on both engines (conftest's ``engine`` fixture sets ``$STANHIER_BACKEND``,
which the child processes inherit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import stanhier as sh
from conftest import LOG_NOTES, TINY_NORMAL, quiet_brm

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_NORMAL  # its objects are shared (compiled once); each test's private cache builds its own module


def run_py(code: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


COMPILE = LOG_NOTES + """
    import json, sys
    from stanhier.backends import get_backend
    model = get_backend("auto").compile(sys.argv[1] if len(sys.argv) > 1 else {code!r}, progress=False)
    d = model.log_density({{"N": 2, "y": [1.0, 3.0]}})
    print(json.dumps({{"hit": model.cache_hit, "lp": d.log_prob([2.0]),
                      "built_header": any(n.startswith("built the precompiled Stan header") for n in notes)}}))
"""


@pytest.fixture
def private_cache(tmp_path_factory, engine) -> Path:
    """An empty cache for each test (so no test finds another's program in it, whatever order
    the workers run them in) with the shared files (precompiled header, CmdStan's main object,
    the services object) of the
    session's cache, which are built once per installation, not per cache (test_toolchain
    checks how the header is built), and its program objects, which both engines link (so the
    second engine's compile of TINY only links, as for a user; test_backends checks that)."""
    from stanhier import cache
    from stanhier.backends import toolchain

    toolchain.precompiled_header()  # the session's, if `stanhier prepare` has not built it
    path = tmp_path_factory.mktemp(f"cache-{engine}")
    for name in ("pch", "objects"):
        shared = cache.cache_dir() / name
        shared.mkdir(parents=True, exist_ok=True)
        (path / name).symlink_to(shared, target_is_directory=True)
    return path


def _entries(cache: Path, engine: str) -> list[Path]:
    root = cache / "pystan" / "models" if engine == "pystan" else cache / "cmdstanpy"
    # compiled programs only (CmdStan's per-process scratch folders live in cmdstanpy/work)
    return [p for p in root.iterdir() if p.is_dir() and p.name != "work"]


def _binaries(entry: Path) -> list[Path]:
    """The compiled program of a cache entry (an extension module, or CmdStan's executable)."""
    return list(entry.glob("*.so")) + [p for p in [entry / "model"] if p.is_file()]


def test_two_processes_compile_one_program(private_cache, tmp_path, engine):
    """Both processes start at once: one compiles under the lock, the other waits and reuses it.
    Nothing is written to the working directory (the compiler's build folder stays in the cache).
    Neither process builds the shared header: they use the session's (test_toolchain checks the
    header's build by two processes)."""
    env = {**os.environ, "STANHIER_CACHE_DIR": str(private_cache)}
    code = textwrap.dedent(COMPILE.format(code=TINY))
    workdir = tmp_path / "work"
    workdir.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["hit"] for r in results) == [False, True], outs
    # log density of y = (1, 3) at mu = 2 under normal(mu, 1), Jacobian off, constants dropped by ~
    assert all(r["lp"] == pytest.approx(-1.0) for r in results)
    assert list(workdir.iterdir()) == []
    assert not any(r["built_header"] for r in results)  # the session's header is found (same key), not rebuilt


def test_partial_cache_entry_is_rebuilt(private_cache, engine):
    """A killed build leaves an entry without its COMPLETE marker: it is detected and rebuilt."""
    env = {"STANHIER_CACHE_DIR": str(private_cache)}
    code = COMPILE.format(code=TINY)
    first = run_py(code, env)
    assert first.returncode == 0, first.stderr
    entries = _entries(private_cache, engine)
    assert len(entries) == 1
    (entries[0] / "COMPLETE").unlink()
    assert _binaries(entries[0])
    for so in _binaries(entries[0]):
        so.write_bytes(b"truncated")  # what a crash mid-link could leave
    again = run_py(code, env)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["hit"] is False and result["lp"] == pytest.approx(-1.0)
    assert (entries[0] / "COMPLETE").is_file()


def test_stale_executable_is_rebuilt(private_cache, engine):
    """A complete CmdStan entry whose executable no longer runs (its CmdStan tree moved: the
    loader cannot find libtbb.so.2) is not trusted: it is rebuilt, not reported as a hit."""
    if engine != "cmdstanpy":
        pytest.skip("pystan's extension modules do not link an external tree")
    env = {"STANHIER_CACHE_DIR": str(private_cache)}
    code = COMPILE.format(code=TINY)
    first = run_py(code, env)
    assert first.returncode == 0, first.stderr
    (entry,) = _entries(private_cache, engine)
    assert (entry / "COMPLETE").is_file()
    (entry / "model").write_text("#!/bin/sh\necho 'libtbb.so.2: cannot open shared object file' >&2\nexit 127\n")
    again = run_py(code, env)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["hit"] is False and result["lp"] == pytest.approx(-1.0)


SAMPLE = """
    import sys, numpy as np, pandas as pd, warnings, stanhier as sh
    warnings.simplefilter("ignore")
    sleep = pd.read_csv("tests/data/sleepstudy.csv")
    fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=2, iter={iter}, seed=11,
                 progress={progress})
    np.save(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", fit.raw.draws["b"])
    print("FINISHED-SAMPLING")
"""


def test_same_seed_same_draws_across_processes(sleep_fit, tmp_path):
    outs = []
    for i in range(2):
        path = tmp_path / f"draws{i}.npy"
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SAMPLE.format(iter=300, progress=False)),
                               str(path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        outs.append(np.load(path))
    np.testing.assert_array_equal(outs[0], outs[1])


def _group_alive(pgid: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,pgid,stat,cmd"], capture_output=True, text=True).stdout
    alive = []
    for line in ps.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] == str(pgid) and not parts[2].startswith("Z"):
            alive.append(line)
    return alive


def test_ctrl_c_stops_sampling_without_orphans(sleep_fit):
    # Ctrl-C's default action, also when pytest itself was started in the background by a shell
    # without job control (which starts it with SIGINT ignored, and children inherit that)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SAMPLE.format(iter=200000, progress=True))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait for the sampling display (iterations of 2 x 200000): imports and cache lookup done, chains running
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while "/400000" not in "".join(seen) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # a second into sampling
    assert proc.poll() is None and "/400000" in "".join(seen), "".join(seen)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("sampling did not stop within 60 s of Ctrl-C")
    reader.join(timeout=10)
    out = "".join(seen)
    assert proc.returncode != 0 and "FINISHED-SAMPLING" not in out
    assert "KeyboardInterrupt" in out or "interrupted" in out.lower()
    time.sleep(1)
    assert _group_alive(proc.pid) == [], "orphan processes left behind"


def test_non_identifier_column_names(sleep, sleep_fit):
    """Spaces, dots, unicode and Stan's reserved words go end to end (names only matter at the boundary)."""
    df = sleep.rename(columns={"Reaction": "reaction time", "Days": "lower", "Subject": "sujet.ü"})
    fit = quiet_brm("`reaction time` ~ lower + (lower | `sujet.ü`)", data=df, chains=2, iter=400, seed=3)
    assert fit.cache_hit  # the same structure as sleepstudy: nothing compiles
    post = fit.idata.posterior
    assert "b_lower" in post and "sd_sujet.ü__lower" in post and "r_sujet.ü" in post
    assert fit.fixef().loc["lower", "Estimate"] == pytest.approx(10.5, abs=2.0)
    assert "~sujet.ü (Number of levels: 18)" in str(fit)


ML = """
    import json, numpy as np, pandas as pd, stanhier as sh
    sleep = pd.read_csv("tests/data/sleepstudy.csv")
    m = sh.lmer("Reaction ~ Days + (Days | Subject)", data=sleep, REML=False)
    g = sh.glmer("cbind(y, n - y) ~ x + (1 | g)", data=pd.DataFrame({{
        "y": [3, 5, 2, 8, 6, 1, 4, 7, 2, 5, 6, 3], "n": [10] * 12,
        "x": np.linspace(-1, 1, 12), "g": list("aabbccddeeff")}}), family="binomial")
    print(json.dumps({{"lmer": m.fixef().tolist() + m.theta.tolist() + [m.logLik()],
                       "glmer": g.fixef().tolist() + g.theta.tolist() + [g.logLik()]}}))
"""


def test_ml_estimates_identical_across_processes():
    outs = []
    for _ in range(2):
        proc = run_py(ML.format())
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]  # bit for bit: no randomness in the optimizer's path


def test_non_identifier_column_names_ml(sleep):
    df = sleep.rename(columns={"Reaction": "reaction time", "Days": "lower", "Subject": "sujet.ü"})
    m = sh.lmer("`reaction time` ~ lower + (lower | `sujet.ü`)", data=df, REML=False)
    assert list(m.fixef().index) == ["(Intercept)", "lower"]
    assert m.logLik() == pytest.approx(-875.9697, abs=0.01)
    assert "sujet.ü" in str(m)
