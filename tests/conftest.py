"""Shared fixtures: data sets, references and session-scoped fits.

Compiled programs are cached by stanhier (``STANHIER_CACHE_DIR`` or the user cache),
so each model structure compiles at most once per machine; the fits below are made
once per test session and shared by every test that needs them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"
REF = Path(__file__).parent / "reference"


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
def sleep_fit(sleep):
    """sleepstudy (Days | Subject), 4 chains x 1000 draws: MCSE of a mean ~ SD/sqrt(ESS>=1000) < 0.04 SD."""
    return quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=4, iter=2000,
                     warmup=1000, seed=1, data_name="sleepstudy")


@pytest.fixture(scope="session")
def fish_fit(fish):
    """The seed model, few draws (it is the diagnostics-heavy case)."""
    return quiet_brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish,
                     family="poisson", chains=2, iter=600, seed=1, data_name="fish")


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
