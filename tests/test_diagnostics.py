"""Diagnostics are reported, never hidden; Stan's own failure messages reach the user."""

from __future__ import annotations

import numpy as np
import pytest

import stanhier as sh
from conftest import quiet_brm


def test_seed_model_diagnostics_reported(fish_fit):
    """The counts come from the sampler's own statistics and ArviZ, computed here independently;
    the printed summary ends with the warnings those numbers call for."""
    import arviz as az

    st = fish_fit.raw.stats
    d = fish_fit.diagnostics()
    assert d["divergent_transitions"] == int(st["divergent__"].sum())
    assert d["max_treedepth_hits"] == int((st["treedepth__"] >= 10).sum())
    np.testing.assert_allclose(d["min_ebfmi"], np.min(az.bfmi(st["energy__"])), rtol=1e-10)
    post = fish_fit.idata.posterior
    variables = [e.name for e in fish_fit.names.entries]
    assert set(variables) == {"b_Intercept", "b_temperature", "sd_weather__Intercept",
                              "sd_weather__temperature", "cor_weather__Intercept__temperature"}
    rhat = max(float(az.rhat(post[v].values, method="rank")) for v in variables)
    bulk = min(float(az.ess(post[v].values, method="bulk")) for v in variables)
    tail = min(float(az.ess(post[v].values, method="tail")) for v in variables)
    assert d["max_rhat"] == pytest.approx(rhat) and d["min_bulk_ess"] == pytest.approx(bulk)
    assert d["min_tail_ess"] == pytest.approx(tail)
    text = str(fish_fit)
    assert (f"Warning: Bulk effective sample size is low (min {bulk:.0f} < 200)" in text) == (bulk < 200)
    assert (f"Warning: Parts of the model have not converged (some Rhats are > 1.01, max {rhat:.2f})" in text) \
        == (rhat > 1.01)
    div = int(st["divergent__"].sum())
    assert (f"Warning: There were {div} divergent transitions after warmup" in text) == (div > 0)
    if div:  # few levels with much data each: the advice fits the program that ran
        # parameterization="auto" chose the conditional program for these data: no advice to centre
        assert [tr for _, tr in fish_fit.spec.structure.terms] == ["conditional"]
        assert "adapt_delta" in text and "'weather'" in text and "parameterization='centered'" not in text


def test_warnings_at_end_of_sampling(fish, fish_fit):
    with pytest.warns(sh.StanhierWarning, match="effective sample size"):
        sh.brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish, family="poisson",
               chains=2, iter=200, seed=3, progress=False)


def test_clean_fit_has_no_messages(sleep_fit):
    assert sleep_fit.diagnostics()["max_rhat"] < 1.01
    assert not [m for m in sleep_fit.diagnostic_messages() if "Rhat" in m or "E-BFMI" in m]


def test_initialisation_failure_shows_stans_message_and_code_line(sleep, sleep_fit):
    # brms's program (marginalize=False) declares sigma as a parameter: Stan rejects the init
    with pytest.raises(sh.SamplingError) as err:
        quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=1, iter=20, seed=1,
                  init={"sigma": -1.0}, marginalize=False)
    text = str(err.value)
    assert "Lower bounded variable is -1" in text
    assert "Generated code, line" in text and "sigma" in text
    # the integrated-out program derives sigma from log_sigma: stanhier checks the init itself
    with pytest.raises(sh.ArgumentError, match="sigma must be one positive number"):
        quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=1, iter=20, seed=1,
                  init={"sigma": -1.0})


@pytest.mark.engine_free  # no Stan program runs
def test_ml_diagnostics_report(fish, sleep):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = sh.glmer("fish_num ~ 1 + temperature + (temperature | weather)", data=fish, family="poisson")
    d = g.diagnostics()
    assert d["converged"] and d["singular"]
    assert any("singular" in m for m in g.diagnostic_messages())
    assert "Warning: boundary (singular) fit" in str(g)
    m = sh.lmer("Reaction ~ Days + (Days | Subject)", data=sleep, REML=False)
    assert m.diagnostics()["standard_errors"] and m.diagnostic_messages() == []
    assert m.diagnostics()["max_abs_gradient"] < 1e-3


@pytest.mark.engine_free  # no Stan program runs
def test_ml_collinear_dropped_as_lme4(sleep):
    df = sleep.assign(Days2=2 * sleep["Days"])
    with pytest.warns(sh.StanhierWarning, match="'Days2'"):
        m = sh.lmer("Reaction ~ Days + Days2 + (1 | Subject)", data=df, REML=False)
    assert list(m.fixef().index) == ["(Intercept)", "Days"]
