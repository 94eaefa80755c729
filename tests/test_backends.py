"""Backend selection; the cmdstanpy backend runs only where CmdStan is installed."""

from __future__ import annotations

import numpy as np
import pytest

import stanhier as sh
from conftest import quiet_brm
from stanhier.backends import cmdstan_available, get_backend

CMDSTAN, WHY = cmdstan_available()
needs_cmdstan = pytest.mark.skipif(not CMDSTAN, reason=f"cmdstanpy tests need CmdStan: {WHY}")


def test_auto_picks_an_installed_backend():
    expected = "cmdstanpy" if CMDSTAN else "pystan"
    assert get_backend("auto").name == expected


def test_unknown_backend():
    with pytest.raises(sh.BackendError, match="'stan2'.*auto, pystan, cmdstanpy"):
        get_backend("stan2")


@pytest.mark.skipif(CMDSTAN, reason="CmdStan is installed here, so the missing-CmdStan message cannot be shown")
def test_missing_cmdstan_says_how_to_install():
    with pytest.raises(sh.BackendError, match="install_cmdstan"):
        get_backend("cmdstanpy")


def test_pystan_sampler_settings_respected(sleep_fit):
    s = sleep_fit.raw.settings
    assert sleep_fit.raw.draws["b"].shape == (s.chains, s.draws_per_chain, 1)
    assert sleep_fit.raw.stats["treedepth__"].max() <= s.max_treedepth
    assert sleep_fit.idata.posterior.sizes["draw"] == 1000


def test_thin_and_init(fish, fish_fit):
    fit = quiet_brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish, family="poisson",
                    chains=1, iter=400, warmup=200, thin=4, seed=9, init=0)
    assert fit.raw.draws["b"].shape == (1, 50, 1)


@needs_cmdstan
def test_cmdstanpy_matches_pystan(sleep, sleep_fit):
    fit = quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, backend="cmdstanpy", chains=4,
                    iter=2000, seed=1)
    assert fit.backend == "cmdstanpy"
    a, b = fit.summary_table(), sleep_fit.summary_table()
    for name in ("b_Intercept", "b_Days", "sd_Subject__Intercept", "sigma"):
        assert abs(a.loc[name, "Estimate"] - b.loc[name, "Estimate"]) < 0.15 * b.loc[name, "Est.Error"]
    assert fit.stancode() == sleep_fit.stancode()


@needs_cmdstan
def test_cmdstanpy_lmer_matches_lme4(sleep, ml_ref):
    m = sh.lmer("Reaction ~ Days + (Days | Subject)", data=sleep, REML=False, backend="cmdstanpy")
    ref = ml_ref["sleepstudy_corr_ML"]
    assert m.logLik() == pytest.approx(ref["logLik"], abs=0.01)
    np.testing.assert_allclose(m.fixef().to_numpy(), list(ref["fixef"].values()), rtol=1e-3)
