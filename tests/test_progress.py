"""What a user sees on the console: one progress display per stage, no engine chatter,
nothing at all with ``progress=False``, and no third-party FutureWarning on import.

Each fit test runs on both engines (conftest's ``engine`` fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import stanhier as sh

ROOT = Path(__file__).resolve().parents[1]

#: what pystan, httpstan, CmdStan and cmdstanpy print on their own
CHATTER = ("Building", "Gradient evaluation took", "Adjust your expectations", "Messages received",
           "leapfrog steps", "CmdStan start processing", "CmdStan done", "INFO:", "chain 1 |",
           "Sampling completed", "FutureWarning")

FORMULA = "Reaction ~ Days + (1 | Subject)"

#: the runs are short (they test the console, not the posterior): convergence warnings are expected
pytestmark = pytest.mark.filterwarnings("ignore::stanhier.StanhierWarning")


@pytest.fixture(scope="module")
def compiled(sleep, engine):
    """Compile the structure once (whatever that prints), so the tests see a cached structure."""
    sh.brm(FORMULA, data=sleep, chains=2, iter=200, seed=1, progress=False)
    return engine


def test_default_fit_shows_progress_and_no_chatter(compiled, sleep, capfd):
    capfd.readouterr()
    fit = sh.brm(FORMULA, data=sleep, chains=2, iter=200, seed=1)
    out, err = capfd.readouterr()
    assert fit.cache_hit
    assert out == ""  # displays go to stderr; stdout stays for the user's own output
    assert "Compiling Stan program: cached" in err
    assert "Sampling 2 chains" in err and "400/400" in err and "(done)" in err, err
    for word in CHATTER:
        assert word not in err, (word, err)


def test_progress_false_prints_nothing(compiled, sleep, capfd):
    capfd.readouterr()
    sh.brm(FORMULA, data=sleep, chains=2, iter=200, seed=1, progress=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_one_chain_prints_nothing(compiled, sleep, capfd):
    """One chain: brms computes its ESS without comment; ArviZ would log 'Shape validation failed'."""
    import arviz as az

    getattr(getattr(az, "_log", None), "cache", []).clear()  # ArviZ logs each message once per process
    capfd.readouterr()
    fit = sh.brm(FORMULA, data=sleep, chains=1, iter=200, seed=1, progress=False)
    assert fit.diagnostics()["min_bulk_ess"] > 0
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_ml_fit_on_cached_program_is_quiet(sleep, capfd, engine):
    """A quick ML fit of a compiled program prints nothing by default: no 'cached' line, and the
    spinner only appears after a second."""
    sh.lmer(FORMULA, data=sleep, progress=False)  # compile if needed
    capfd.readouterr()
    sh.lmer(FORMULA, data=sleep)
    out, err = capfd.readouterr()
    assert out == ""
    assert "cached" not in err
    for word in CHATTER:
        assert word not in err, (word, err)


def test_import_shows_no_future_warning(tmp_path, engine):
    """ArviZ warns about its refactor once a day (in a fresh user cache): stanhier's users do
    not see it, on import or when ArviZ is first used."""
    if engine != "pystan":
        pytest.skip("engine-independent: runs once")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONWARNINGS": "default"}
    code = "import stanhier, arviz, sys; print('arviz' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning" not in proc.stderr and "ArviZ is undergoing" not in proc.stderr, proc.stderr
    # the same fresh cache without stanhier: ArviZ does warn (so the test above means something)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache2")
    proc = subprocess.run([sys.executable, "-c", "import arviz"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "FutureWarning" in proc.stderr


@pytest.mark.engine_free  # no Stan program runs
def test_spinner_appears_only_after_its_delay(capfd, engine, monkeypatch):
    """The ML spinner on a terminal: nothing for a quick optimization, the evaluation count for a slow one."""
    if engine != "pystan":
        pytest.skip("engine-independent: runs once")
    import time

    from stanhier import progress
    from stanhier.progress import Spinner

    monkeypatch.setattr(progress, "_watched", lambda tqdm_class, file: True)  # as on a terminal

    with Spinner(delay=1.0) as quick:
        quick.tick(5)
    assert capfd.readouterr().err == ""
    with Spinner(delay=0.2) as slow:
        slow.tick(3)
        time.sleep(0.3)
        slow.tick(4)
    err = capfd.readouterr().err
    assert "ML optimization" in err and "7 evaluations" in err, err


@pytest.mark.engine_free  # no Stan program runs
def test_display_in_a_log_file_is_drawn_when_it_starts_and_ends(capfd):
    """stderr to a file (a CI log; capfd is one): no redraw per update, which would fill the log."""
    import time

    from stanhier.progress import LOG_INTERVAL, SamplingProgress

    assert LOG_INTERVAL >= 10
    bar = SamplingProgress(chains=2, iter=100, warmup=50)
    for done in range(0, 201, 10):
        bar.update(done)
        time.sleep(0.05)
    bar.close()
    err = capfd.readouterr().err
    assert err.count("Sampling 2 chains") == 2 and "(done)" in err and "200/200" in err, err
