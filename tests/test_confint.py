"""confint(): lme4's likelihood-profile intervals (its default method) against lme4's own
(``tests/reference/lme4_confint_sleepstudy.json``, from ``tests/reference/lme4_confint.R``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stanhier as sh

REF = json.loads((Path(__file__).parent / "reference" / "lme4_confint_sleepstudy.json").read_text())


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pd.read_csv(Path(__file__).parent / "data" / "sleepstudy.csv")


def _check(ci: pd.DataFrame, ref: dict, rtol: float = 1e-3) -> None:
    assert list(ci.index) == ref["names"]  # lme4's confint(m, oldNames = FALSE) rows, in its order
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    np.testing.assert_allclose(ci["2.5 %"], ref["lower"], rtol=rtol)
    np.testing.assert_allclose(ci["97.5 %"], ref["upper"], rtol=rtol)


def test_profile_intervals_random_intercept(sleep, engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sh.lmer("Reaction ~ Days + (1 | Subject)", sleep, REML=False)
    _check(m.confint(), REF["ML_intercept"])


def test_profile_intervals_correlated_slope(sleep, engine):
    """SDs, the correlation, sigma and the fixed effects; a REML fit is profiled on its ML
    refit, as lme4 does (lme4's REML and ML intervals agree to 1e-5)."""
    if engine == "cmdstanpy":
        pytest.skip("same profile code as the pystan run; CmdStan evaluates each log density in a new "
                    "process (~2,000 here): the random-intercept case covers this engine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    _check(m.confint(), REF["REML"])
    wald = m.confint(method="Wald")
    assert list(wald.index) == ["(Intercept)", "Days"]
    with pytest.raises(sh.ArgumentError, match="profile"):
        m.confint(method="boot")
    with pytest.raises(sh.ArgumentError, match="Unknown parameter"):
        m.confint(parm=["nope"])
