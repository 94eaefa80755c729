"""Predictions of Bayesian fits: posterior_epred / linpred / predict, fitted / predict, new levels.

Numbers are checked against hand computations from the draws (exact up to float error)
and against the brms reference (within Monte Carlo error).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stanhier as sh


def _draws(fit, name):
    return np.asarray(fit.idata.posterior[name]).reshape((-1,) + fit.idata.posterior[name].shape[2:])


@pytest.fixture(scope="module")
def hand(sleep_fit, sleep):
    """(S, N) linear predictor of the sleepstudy data computed by hand from brms-named draws."""
    b0, b1 = _draws(sleep_fit, "b_Intercept"), _draws(sleep_fit, "b_Days")
    r = sleep_fit.idata.posterior["r_Subject"]
    levels = [str(v) for v in r["Subject"].values]
    r = np.asarray(r).reshape((-1, len(levels), 2))
    j = np.array([levels.index(str(s)) for s in sleep["Subject"]])
    days = sleep["Days"].to_numpy(float)
    pop = b0[:, None] + b1[:, None] * days[None, :]
    return {"pop": pop, "full": pop + r[:, j, 0] + r[:, j, 1] * days[None, :],
            "int_only": pop + r[:, j, 0], "b0": b0, "b1": b1, "r": r, "levels": levels}


def test_epred_equals_hand_computation(sleep_fit, hand):
    ep = sleep_fit.posterior_epred()
    assert ep.shape == (4000, 180)
    np.testing.assert_allclose(ep, hand["full"], rtol=1e-10)
    f = sleep_fit.fitted()
    assert list(f.columns) == ["Estimate", "Est.Error", "Q2.5", "Q97.5"]
    np.testing.assert_allclose(f["Estimate"], hand["full"].mean(0), rtol=1e-10)
    np.testing.assert_allclose(f["Est.Error"], hand["full"].std(0, ddof=1), rtol=1e-8)
    np.testing.assert_allclose(f["Q97.5"], np.quantile(hand["full"], 0.975, axis=0), rtol=1e-10)
    # gaussian identity link: linpred == epred; transform is the identity
    np.testing.assert_allclose(sleep_fit.posterior_linpred(transform=True), ep)


def test_population_level_predictions(sleep_fit, hand, bayes_ref):
    nd = pd.DataFrame({"Days": np.arange(10)})  # no Subject column needed for re_formula=NA
    for re in ("NA", "~0", float("nan")):
        pe = sleep_fit.posterior_epred(nd, re_formula=re)
        np.testing.assert_allclose(pe, hand["b0"][:, None] + hand["b1"][:, None] * np.arange(10), rtol=1e-10)
    f = sleep_fit.fitted(nd, re_formula="NA")
    # against brms's posterior of the intercept and slope (MC error of two independent runs)
    ref = {row["name"]: row for row in bayes_ref["sleepstudy"]["summary_table"]}
    assert abs(f["Estimate"][0] - ref["Intercept"]["Estimate"]) < 0.15 * ref["Intercept"]["Est.Error"]
    slope = f["Estimate"][9] - f["Estimate"][0]
    assert abs(slope / 9 - ref["Days"]["Estimate"]) < 0.15 * ref["Days"]["Est.Error"]


def test_re_formula_subset_keeps_named_coefficients(sleep_fit, hand, sleep):
    pe = sleep_fit.posterior_epred(sleep, re_formula="~ (1 | Subject)")
    np.testing.assert_allclose(pe, hand["int_only"], rtol=1e-10)
    with pytest.raises(sh.ArgumentError, match="Plant"):
        sleep_fit.posterior_epred(sleep, re_formula="~ (1 | Plant)")


def test_summary_options_and_ndraws(sleep_fit, sleep):
    nd = sleep.iloc[:7]
    f = sleep_fit.fitted(nd, probs=(0.05, 0.5, 0.95))
    assert list(f.columns) == ["Estimate", "Est.Error", "Q5", "Q50", "Q95"]
    assert f.shape == (7, 5)
    assert sleep_fit.posterior_epred(nd, ndraws=100, seed=3).shape == (100, 7)
    assert sleep_fit.posterior_predict(nd, ndraws=50, seed=3).shape == (50, 7)
    with pytest.raises(sh.ArgumentError, match="ndraws"):
        sleep_fit.posterior_epred(nd, ndraws=5000)
    rob = sleep_fit.fitted(nd, robust=True)
    np.testing.assert_allclose(rob["Estimate"], np.median(sleep_fit.posterior_epred(nd), axis=0))
    # chunking changes nothing
    np.testing.assert_allclose(sleep_fit.fitted(nd, chunk_size=3).to_numpy(), sleep_fit.fitted(nd).to_numpy())
    chunks = list(sleep_fit.iter_draws("epred", nd, chunk_size=2))
    assert [c[0].start for c in chunks] == [0, 2, 4, 6]
    np.testing.assert_allclose(np.hstack([c[1] for c in chunks]), sleep_fit.posterior_epred(nd))


def test_posterior_predict_adds_residual_noise(sleep_fit, hand):
    pp = sleep_fit.posterior_predict(seed=7)
    sigma = _draws(sleep_fit, "sigma")
    assert pp.shape == (4000, 180)
    # E[yrep] = E[epred]; Var[yrep] = Var[epred] + E[sigma^2]; MC error with 4000 draws
    se = np.sqrt(hand["full"].var(0) + np.mean(sigma ** 2))
    z = (pp.mean(0) - hand["full"].mean(0)) / (se / np.sqrt(4000))
    assert np.abs(z).max() < 5
    np.testing.assert_allclose(pp.std(0), se, rtol=0.08)
    p = sleep_fit.predict(seed=7)
    np.testing.assert_allclose(p["Estimate"], pp.mean(0), rtol=1e-12)


def test_new_levels(sleep_fit, hand):
    nd = pd.DataFrame({"Days": [0, 0, 0], "Subject": [308, 9001, 9002]})
    with pytest.raises(sh.DataError, match=r"'Subject'.*9001.*allow_new_levels"):
        sleep_fit.fitted(nd)
    pop_sd = hand["b0"].std(ddof=1)
    unc = sleep_fit.posterior_epred(nd, allow_new_levels=True, seed=2)
    # old level unchanged
    j308 = hand["levels"].index("308")
    np.testing.assert_allclose(unc[:, 0], hand["b0"] + hand["r"][:, j308, 0])
    # "uncertainty": each draw takes the effect of a random existing level -> variance of
    # the pooled level effects added to the population-level variance
    expected = np.sqrt(hand["b0"].var() + hand["r"][:, :, 0].var())
    assert unc[:, 1].std() > 2.5 * pop_sd
    np.testing.assert_allclose(unc[:, 1].std(), expected, rtol=0.1)
    np.testing.assert_allclose(unc[:, 2].std(), expected, rtol=0.1)
    # "gaussian": N(0, sd^2) with the draw's sd
    gau = sleep_fit.posterior_epred(nd, allow_new_levels=True, sample_new_levels="gaussian", seed=2)
    sd0 = _draws(sleep_fit, "sd_Subject__Intercept")
    np.testing.assert_allclose(gau[:, 1].std(), np.sqrt(hand["b0"].var() + np.mean(sd0 ** 2)), rtol=0.1)
    # "old_levels": one existing level's draws for each new level
    old = sleep_fit.posterior_epred(nd, allow_new_levels=True, sample_new_levels="old_levels", seed=2)
    per_level = hand["b0"][:, None] + hand["r"][:, :, 0]
    assert any(np.allclose(old[:, 1], per_level[:, j]) for j in range(per_level.shape[1]))
    with pytest.raises(sh.ArgumentError, match="sample_new_levels"):
        sleep_fit.posterior_epred(nd, allow_new_levels=True, sample_new_levels="random")


def test_bad_newdata(sleep_fit):
    with pytest.raises(sh.DataError, match="'Days'.*missing"):
        sleep_fit.fitted(pd.DataFrame({"Days": [1.0, np.nan], "Subject": [308, 308]}))
    with pytest.raises(sh.FormulaError, match="Days"):
        sleep_fit.fitted(pd.DataFrame({"Subject": [308]}))
    with pytest.raises(sh.ArgumentError, match="scale"):
        sleep_fit.fitted(scale="log")


def test_poisson_predictions(fish_fit, fish):
    eta = fish_fit.posterior_linpred()
    np.testing.assert_allclose(fish_fit.posterior_epred(), np.exp(eta), rtol=1e-12)
    np.testing.assert_allclose(fish_fit.posterior_linpred(transform=True), np.exp(eta), rtol=1e-12)
    pp = fish_fit.posterior_predict(seed=1, ndraws=200)
    assert np.all(pp >= 0) and np.all(pp == np.round(pp))
