"""Model checking and comparison: loo, waic, loo_compare, bayes_R2, hypothesis, anova."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import special, stats

import stanhier as sh
from stanhier.ml.anova import anova
from stanhier.bayes.compare import bayes_R2, hypothesis, loo, loo_compare, waic
from conftest import quiet_brm


@pytest.fixture(scope="module")
def sleep_loo(sleep_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loo(sleep_fit)


@pytest.fixture(scope="module")
def sleep_fit_nodays(sleep):
    """An intercept-only population part (``b`` has zero columns), same Stan program as
    sleep_fit (gaussian, intercept, one correlated term): no compile, a few seconds of sampling."""
    return quiet_brm("Reaction ~ 1 + (Days | Subject)", data=sleep, chains=2, iter=1000, warmup=500, seed=2)


@pytest.fixture(scope="module")
def sleep_fit_outlier(sleep):
    """sleepstudy with one gross outlier (row 0 moved up by 40 residual SDs): its Pareto k is
    far above any threshold, whatever the draws. Same program as sleep_fit."""
    df = sleep.copy()
    df.loc[0, "Reaction"] += 1000.0
    return quiet_brm("Reaction ~ Days + (Days | Subject)", data=df, chains=2, iter=1000, warmup=500, seed=4)


def test_loo_agrees_with_pointwise_loglik(sleep_fit, sleep_loo):
    ll = sleep_fit.log_lik().reshape(-1, 180)
    S = ll.shape[0]
    lppd_i = special.logsumexp(ll, axis=0) - np.log(S)
    # PSIS-LOO: elpd = lppd - p_loo, elpd = sum of pointwise loo_i
    np.testing.assert_allclose(sleep_loo.elpd_loo + sleep_loo.p_loo, lppd_i.sum(), rtol=1e-10)
    np.testing.assert_allclose(np.sum(sleep_loo.loo_i), sleep_loo.elpd_loo, rtol=1e-10)
    # plain importance-sampling LOO from the same log-likelihood: agrees within the SE
    is_loo = -(special.logsumexp(-ll, axis=0) - np.log(S))
    assert abs(is_loo.sum() - sleep_loo.elpd_loo) < sleep_loo.se
    # every pointwise loo_i is below the pointwise lppd (leaving a point out never helps it)
    assert np.all(np.asarray(sleep_loo.loo_i) <= lppd_i + 1e-8)
    # effective number of parameters: between the 2 fixed + 2 sd + 1 cor + sigma and all 42
    assert 20 < sleep_loo.p_loo < 42
    # brms reports elpd_loo ~ -861 (SE ~22) for this model
    assert abs(sleep_loo.elpd_loo - (-861)) < 6


def test_waic_close_to_loo(sleep_fit, sleep_loo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = waic(sleep_fit)
    assert abs(w.elpd_waic - sleep_loo.elpd_loo) < 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sleep_fit.waic().elpd_waic == pytest.approx(w.elpd_waic)


def test_intercept_only_population_part(sleep_fit_nodays, sleep):
    """``y ~ 1 + (x | g)``: b has no columns; every method still works and agrees with the draws."""
    fit = sleep_fit_nodays
    assert fit.raw.draws["b"].shape[-1] == 0
    b0 = np.asarray(fit.idata.posterior["b_Intercept"]).ravel()
    np.testing.assert_array_equal(fit.fixed_draws(), b0[:, None])
    assert list(fit.fixef().index) == ["Intercept"]
    r = np.asarray(fit.idata.posterior["r_Subject"]).reshape(b0.size, 18, 2)
    levels = [str(v) for v in fit.idata.posterior["r_Subject"]["Subject"].values]
    j = np.array([levels.index(str(v)) for v in sleep["Subject"]])
    days = sleep["Days"].to_numpy(float)
    np.testing.assert_allclose(fit.posterior_epred(), b0[:, None] + r[:, j, 0] + r[:, j, 1] * days, rtol=1e-10)
    np.testing.assert_allclose(fit.posterior_epred(sleep.iloc[:3], re_formula="NA"), np.repeat(b0[:, None], 3, 1))
    coef = fit.coef()["Subject"]
    np.testing.assert_allclose(coef[("Intercept", "Estimate")], (b0[:, None] + r[:, :, 0]).mean(0))
    assert hypothesis(fit, "Intercept > 200").iloc[0]["Post.Prob"] == pytest.approx(np.mean(b0 > 200))
    assert "Population-Level Effects" in fit.summary() and "Intercept" in fit.summary()


def test_pareto_k_warning_names_the_outlier(sleep_fit_outlier):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = loo(sleep_fit_outlier, name="outlier")
    S = 2 * 500
    threshold = min(1 - 1 / np.log10(S), 0.7)  # Vehtari et al. (2024): 0.67 for 1000 draws
    k = np.asarray(res.pareto_k)
    assert k[0] > 1  # the outlier: importance sampling fails for it
    bad = np.flatnonzero(k > threshold)
    msgs = [str(w.message) for w in caught if issubclass(w.category, sh.StanhierWarning)]
    assert len(msgs) == 1, msgs
    assert f"Found {bad.size} observation(s) with a pareto_k > {threshold:.2g} in model 'outlier'" in msgs[0]
    assert f"(rows {', '.join(map(str, bad[:10]))}" in msgs[0] and "(rows 0" in msgs[0]
    # the warning points at the user's line (here), through loo(fit) and fit.loo() alike
    for call in (lambda: loo(sleep_fit_outlier, name="outlier"), lambda: sleep_fit_outlier.loo(name="outlier")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        where = [w for w in caught if issubclass(w.category, sh.StanhierWarning)]
        assert where and where[0].filename == __file__, where[0].filename


def test_loo_compare(sleep_fit, sleep_fit_nodays, sleep_loo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = loo_compare(sleep_fit_nodays, sleep_fit, names=["nodays", "days"])
        l2 = loo(sleep_fit_nodays)
    # the order and differences follow from the two loo results computed separately
    elpd = {"days": sleep_loo.elpd_loo, "nodays": l2.elpd_loo}
    best, other = sorted(elpd, key=elpd.get, reverse=True)
    assert list(tab.index) == [best, other]
    assert tab.loc[best, "elpd_diff"] == 0 and tab.loc[best, "se_diff"] == 0
    assert tab.loc[other, "elpd_diff"] == pytest.approx(elpd[other] - elpd[best], rel=1e-9)
    pts = {"days": np.asarray(sleep_loo.loo_i), "nodays": np.asarray(l2.loo_i)}
    d = pts[other] - pts[best]
    assert tab.loc[other, "se_diff"] == pytest.approx(np.sqrt(len(d) * np.var(d)))
    assert tab.loc[other, "elpd_diff"] < 0
    for name, res in (("days", sleep_loo), ("nodays", l2)):
        assert tab.loc[name, "elpd_loo"] == pytest.approx(res.elpd_loo)
        assert tab.loc[name, "looic"] == pytest.approx(-2 * res.elpd_loo)
        assert tab.loc[name, "p_loo"] == pytest.approx(res.p_loo)
    with pytest.raises(sh.ArgumentError):
        loo_compare(sleep_fit)


def test_loo_compare_needs_same_observations(sleep_loo, fish_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(sh.DataError, match="different numbers of observations"):
            loo_compare(sleep_loo, loo(fish_fit))


def test_bayes_R2_hand_computation(sleep_fit, sleep):
    ep = sleep_fit.posterior_epred()
    y = sleep["Reaction"].to_numpy(float)
    r2 = ep.var(1, ddof=1) / (ep.var(1, ddof=1) + (y - ep).var(1, ddof=1))
    tab = bayes_R2(sleep_fit)
    assert list(tab.index) == ["R2"] and list(tab.columns) == ["Estimate", "Est.Error", "Q2.5", "Q97.5"]
    assert tab.loc["R2", "Estimate"] == pytest.approx(r2.mean())
    assert tab.loc["R2", "Q2.5"] == pytest.approx(np.quantile(r2, 0.025))
    np.testing.assert_allclose(sleep_fit.bayes_R2(summary=False), r2)
    assert 0.7 < r2.mean() < 0.85  # brms: 0.79


def test_hypothesis(sleep_fit):
    b0 = np.asarray(sleep_fit.idata.posterior["b_Intercept"]).ravel()
    b1 = np.asarray(sleep_fit.idata.posterior["b_Days"]).ravel()
    h = hypothesis(sleep_fit, ["Days > 0", "Days < 10", "Intercept - 25 * Days = 0"])
    assert list(h.columns) == ["Hypothesis", "Estimate", "Est.Error", "CI.Lower", "CI.Upper",
                               "Evid.Ratio", "Post.Prob", "Star"]
    assert list(h["Hypothesis"]) == ["(Days) > 0", "(Days)-(10) < 0", "(Intercept-25*Days) = 0"]
    r = h.iloc[0]
    assert r["Estimate"] == pytest.approx(b1.mean()) and r["Est.Error"] == pytest.approx(b1.std(ddof=1))
    assert r["CI.Lower"] == pytest.approx(np.quantile(b1, 0.05)) and r["CI.Upper"] == np.inf
    assert r["Post.Prob"] == pytest.approx(np.mean(b1 > 0)) and r["Star"] == "*"
    r = h.iloc[1]
    p = np.mean(b1 - 10 < 0)
    assert r["Post.Prob"] == pytest.approx(p) and r["Evid.Ratio"] == pytest.approx(p / (1 - p))
    assert r["CI.Lower"] == -np.inf and r["CI.Upper"] == pytest.approx(np.quantile(b1 - 10, 0.95))
    assert r["Star"] == ""
    v = b0 - 25 * b1
    r = h.iloc[2]
    assert r["Estimate"] == pytest.approx(v.mean())
    assert r["CI.Lower"] == pytest.approx(np.quantile(v, 0.025))
    assert np.isnan(r["Evid.Ratio"]) and np.isnan(r["Post.Prob"])
    assert sleep_fit.hypothesis("b_Days > 0").iloc[0]["Estimate"] == pytest.approx(b1.mean())
    with pytest.raises(sh.ArgumentError, match="'Weeks'.*Intercept, Days"):
        hypothesis(sleep_fit, "Weeks > 0")
    with pytest.raises(sh.ArgumentError, match="exactly one"):
        hypothesis(sleep_fit, "Days")
    with pytest.raises(sh.ArgumentError, match="only"):
        hypothesis(sleep_fit, "__import__('os') > 0")


# --------------------------------------------------------------------------- anova (ML)
def _lmer(formula, data, REML):
    from stanhier.ml.api import lmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmer(formula, data, REML=REML)


@pytest.fixture(scope="module")
def ml_pair(sleep):
    return (_lmer("Reaction ~ Days + (1 | Subject)", sleep, False),
            _lmer("Reaction ~ Days + (Days | Subject)", sleep, False))


@pytest.mark.engine_free  # no Stan program runs
def test_anova_lrt_matches_lme4(ml_pair, ml_ref):
    m_int, m_corr = ml_pair
    ll_int, ll_corr = ml_ref["sleepstudy_int_ML"]["logLik"], ml_ref["sleepstudy_corr_ML"]["logLik"]
    tab = anova(m_corr, m_int, names=["corr", "int"])  # reordered by npar, as lme4
    assert list(tab.index) == ["int", "corr"]
    assert list(tab.columns) == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    assert list(tab["npar"]) == [ml_ref["sleepstudy_int_ML"]["df"], ml_ref["sleepstudy_corr_ML"]["df"]]
    chisq = 2 * (ll_corr - ll_int)  # 42.139
    assert tab.loc["corr", "Chisq"] == pytest.approx(chisq, abs=2e-3)
    assert tab.loc["corr", "Df"] == 2
    assert tab.loc["corr", "Pr(>Chisq)"] == pytest.approx(stats.chi2.sf(chisq, 2), rel=1e-2)
    assert tab.loc["int", "AIC"] == pytest.approx(ml_ref["sleepstudy_int_ML"]["AIC"], abs=2e-3)
    assert tab.loc["corr", "BIC"] == pytest.approx(ml_ref["sleepstudy_corr_ML"]["BIC"], abs=2e-3)
    assert np.isnan(tab.loc["int", "Chisq"])
    assert tab.attrs["refitted"] == []


@pytest.mark.engine_free  # no Stan program runs
def test_anova_refits_reml_with_ml(sleep, ml_ref):
    m_int = _lmer("Reaction ~ Days + (1 | Subject)", sleep, True)
    m_corr = _lmer("Reaction ~ Days + (Days | Subject)", sleep, True)
    with pytest.warns(sh.StanhierWarning, match=r"refitting model\(s\) with ML \(instead of REML\)"):
        tab = anova(m_int, m_corr)
    assert tab.attrs["refitted"] == ["m1", "m2"]
    chisq = 2 * (ml_ref["sleepstudy_corr_ML"]["logLik"] - ml_ref["sleepstudy_int_ML"]["logLik"])
    assert tab.loc["m2", "Chisq"] == pytest.approx(chisq, abs=2e-3)
    assert tab.loc["m1", "logLik"] == pytest.approx(ml_ref["sleepstudy_int_ML"]["logLik"], abs=1e-3)


def test_anova_bad_input(ml_pair, sleep_fit, sleep):
    with pytest.raises(sh.ArgumentError, match="loo_compare"):
        anova(ml_pair[0], sleep_fit)
    with pytest.raises(sh.ArgumentError, match="at least two"):
        anova(ml_pair[0])
    short = _lmer("Reaction ~ Days + (1 | Subject)", sleep.iloc[:150], False)
    with pytest.raises(sh.DataError, match="same number of observations"):
        anova(ml_pair[1], short)
