"""Diagnostics are reported, never hidden; Stan's own failure messages reach the user."""

from __future__ import annotations

import pytest

import stanhier as sh
from conftest import quiet_brm


def test_seed_model_diagnostics_reported(fish_fit):
    d = fish_fit.diagnostics()
    assert set(d) >= {"divergent_transitions", "max_treedepth_hits", "min_ebfmi", "max_rhat",
                      "min_bulk_ess", "min_tail_ess"}
    msgs = fish_fit.diagnostic_messages()
    # 2 chains x 300 draws of a 2-group model: ESS is below 100 per chain whatever happens
    assert any("effective sample size" in m for m in msgs)
    if d["divergent_transitions"]:
        assert any("adapt_delta" in m and "centered" in m for m in msgs)
    text = str(fish_fit)
    for m in msgs:
        assert f"Warning: {m}" in text


def test_warnings_at_end_of_sampling(fish, fish_fit):
    with pytest.warns(sh.StanhierWarning, match="effective sample size"):
        sh.brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish, family="poisson",
               chains=2, iter=200, seed=3, progress=False)


def test_clean_fit_has_no_messages(sleep_fit):
    assert sleep_fit.diagnostics()["max_rhat"] < 1.01
    assert not [m for m in sleep_fit.diagnostic_messages() if "Rhat" in m or "E-BFMI" in m]


def test_initialisation_failure_shows_stans_message_and_code_line(sleep, sleep_fit):
    with pytest.raises(sh.SamplingError) as err:
        quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=1, iter=20, seed=1,
                  init={"sigma": -1.0})
    text = str(err.value)
    assert "Lower bounded variable is -1" in text
    assert "Generated code, line" in text and "sigma" in text


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


def test_ml_collinear_dropped_as_lme4(sleep):
    df = sleep.assign(Days2=2 * sleep["Days"])
    with pytest.warns(sh.StanhierWarning, match="'Days2'"):
        m = sh.lmer("Reaction ~ Days + Days2 + (1 | Subject)", data=df, REML=False)
    assert list(m.fixef().index) == ["(Intercept)", "Days"]
