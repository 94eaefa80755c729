"""Shared fixtures: data sets, references, the engine, and session-scoped fits.

Every test runs once per engine (``pystan`` and ``cmdstanpy``): the session-scoped,
autouse ``engine`` fixture sets ``$STANHIER_BACKEND``, which ``backend="auto"`` follows,
so the session-scoped fits below are made once per engine. Tests in modules that never
reach a backend (``ENGINE_FREE``) run once. Fixtures that fit a model and are scoped to a
module or the session must request ``engine`` so they are made once per engine. The
CmdStan runs carry the ``cmdstan`` marker (``-m cmdstan`` selects them); without CmdStan
they are skipped, except under ``CI=true``, where the session fails instead. A test
marked ``cmdstan`` explicitly compares the engines itself and runs once; a test marked
``pystan`` names the pystan engine itself (a Stan program checked against numpy, say) and
runs once, in the pystan half; so does a test marked ``engine_free`` (it never reaches an
engine, in a module that does).

Compiled programs are cached by stanhier (``STANHIER_CACHE_DIR`` or the user cache),
so each model structure compiles at most once per machine and engine.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stanhier.backends import ENGINE_ENV, cmdstan_available

DATA = Path(__file__).parent / "data"
REF = Path(__file__).parent / "reference"
ENGINES = ("pystan", "cmdstanpy")
#: Test modules that never compile or run Stan: run once, not once per engine.
ENGINE_FREE = {"test_formula.py", "test_design.py", "test_priors.py", "test_codegen.py", "test_architecture.py",
               "test_docs.py"}
ON_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    if ON_CI and not cmdstan_available()[0]:
        raise pytest.UsageError(f"CI=true but CmdStan is not usable ({cmdstan_available()[1]}); run the "
                                "tests through scripts/test.sh, which builds it.")


def pytest_collection_modifyitems(config, items):
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("engine") if callspec else None
        if engine == "cmdstanpy" and (Path(str(item.fspath)).name in ENGINE_FREE
                                      or item.get_closest_marker("engine_free")):
            dropped.append(item)
            continue
        if engine == "pystan" and item.get_closest_marker("cmdstan"):
            dropped.append(item)  # compares the engines itself: one run (the CmdStan half) is enough
            continue
        if engine == "cmdstanpy" and item.get_closest_marker("pystan"):
            dropped.append(item)  # names the pystan engine itself: the CmdStan half would rerun it as is
            continue
        if engine == "cmdstanpy":
            item.add_marker(pytest.mark.cmdstan)
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    if any(item.get_closest_marker("cmdstan") for item in keep):
        _start_cmdstan_main()


_MAIN_BUILD: list = []


def _start_cmdstan_main() -> None:
    """CmdStan's main object is compiled once per installation (``stanhier prepare``, which the
    test command runs first, or when the first CmdStan program needs it). If it is missing,
    start it now, in a thread, so it compiles while the pystan half runs instead of holding up
    the CmdStan half's first test; that test then finds it built (or waits for this build under
    its lock)."""
    import threading

    from stanhier.backends import shared_cmdstan, toolchain

    path = shared_cmdstan()
    if path is None:
        return

    def build() -> None:
        with toolchain.cmdstan_main_alongside(path, toolchain.compile_flags(), None):
            pass

    thread = threading.Thread(target=build, name="cmdstan-main", daemon=True)
    thread.start()
    _MAIN_BUILD.append(thread)


def pytest_sessionfinish(session, exitstatus):
    for thread in _MAIN_BUILD:
        thread.join()  # never leave the compiler running (nor its half-written object) behind


def pytest_runtest_setup(item):
    if item.get_closest_marker("cmdstan") and not cmdstan_available()[0]:
        pytest.skip(f"needs CmdStan: {cmdstan_available()[1]}")


@pytest.fixture(scope="session", params=ENGINES, autouse=True)
def engine(request) -> str:
    """The engine ``backend="auto"`` runs for this half of the session."""
    name = request.param
    if name == "cmdstanpy" and not cmdstan_available()[0]:
        pytest.skip(f"needs CmdStan: {cmdstan_available()[1]}")
    saved = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = name
    yield name
    if saved is None:
        os.environ.pop(ENGINE_ENV, None)
    else:
        os.environ[ENGINE_ENV] = saved


#: The smallest program of the compile-mechanism tests (test_toolchain, test_robustness): one
#: compile of it in the session's cache serves them all.
TINY_NORMAL = "data { int N; vector[N] y; } parameters { real mu; } model { y ~ normal(mu, 1); }\n"


#: Lines for a test's child-process script (indented 4 spaces, as those scripts are before
#: textwrap.dedent): the stanhier log's messages, DEBUG and up, collect in ``notes``.
LOG_NOTES = """
    import logging
    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("stanhier").addHandler(handler)
    logging.getLogger("stanhier").setLevel(logging.DEBUG)
"""


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(DATA / f"{name}.csv")


@pytest.fixture(scope="session")
def sleep() -> pd.DataFrame:
    return load("sleepstudy")


@pytest.fixture(scope="session")
def fish() -> pd.DataFrame:
    df = load("fish")
    df["weather"] = (df["weather"] == "sunny").astype(int)
    return df


@pytest.fixture(scope="session")
def germination() -> pd.DataFrame:
    return load("germination")


@pytest.fixture(scope="session")
def penicillin() -> pd.DataFrame:
    return load("Penicillin")


@pytest.fixture(scope="session")
def bayes_ref() -> dict:
    return json.loads((REF / "bayes_reference.json").read_text())["cases"]


@pytest.fixture(scope="session")
def ml_ref() -> dict:
    return json.loads((REF / "ml_reference.json").read_text())["cases"]


def quiet_brm(*args, **kwargs):
    import stanhier as sh

    kwargs.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sh.brm(*args, **kwargs)


@pytest.fixture(scope="session")
def sleep_fit(sleep, engine):
    """sleepstudy (Days | Subject), 4 chains x 1000 draws: MCSE of a mean ~ SD/sqrt(ESS>=1000) < 0.04 SD."""
    return quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=4, iter=2000,
                     warmup=1000, seed=1, data_name="sleepstudy")


@pytest.fixture(scope="session")
def fish_fit(fish, engine):
    """The seed model, few draws (it is the diagnostics-heavy case)."""
    return quiet_brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish,
                     family="poisson", chains=2, iter=600, seed=1, data_name="fish")


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
