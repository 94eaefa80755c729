"""brm() end to end: real NUTS runs checked against brms's reference and independent values."""

from __future__ import annotations

import numpy as np
import pytest

import stanhier as sh
from conftest import quiet_brm

SLEEP_NAMES = {  # brms summary label -> our variable
    ("fixed", "Intercept"): "b_Intercept",
    ("fixed", "Days"): "b_Days",
    ("random:Subject", "sd(Intercept)"): "sd_Subject__Intercept",
    ("random:Subject", "sd(Days)"): "sd_Subject__Days",
    ("random:Subject", "cor(Intercept,Days)"): "cor_Subject__Intercept__Days",
    ("family_specific", "sigma"): "sigma",
}


def test_sleepstudy_matches_brms(sleep_fit, bayes_ref):
    """Posterior means within 0.15 posterior SD of brms's (MCSE here ~0.03 SD, brms's ~0.02 SD)."""
    table = sleep_fit.summary_table()
    for row in bayes_ref["sleepstudy"]["summary_table"]:
        name = SLEEP_NAMES[(row["block"], row["name"])]
        ours = table.loc[name]
        assert abs(ours["Estimate"] - row["Estimate"]) < 0.15 * row["Est.Error"], name
        assert ours["Est.Error"] == pytest.approx(row["Est.Error"], rel=0.15), name
        assert ours["Rhat"] < 1.01
    assert sleep_fit.diagnostics()["divergent_transitions"] < 0.01 * 4000  # brms: 0 of 8000


def test_sleepstudy_idata_names(sleep_fit):
    post = sleep_fit.idata.posterior
    for name in SLEEP_NAMES.values():
        assert name in post
    assert post["r_Subject"].dims == ("chain", "draw", "Subject", "Subject__coef")
    assert list(post["r_Subject"].coords["Subject__coef"].values) == ["Intercept", "Days"]
    assert post["r_Subject"].coords["Subject"].values[0] == "308"
    assert sleep_fit.idata.log_likelihood["log_lik"].shape[-1] == 180
    assert "diverging" in sleep_fit.idata.sample_stats
    assert list(sleep_fit.idata.observed_data["y"].values[:2]) == [249.56, 258.7047]


def test_sleepstudy_summary_layout(sleep_fit):
    text = str(sleep_fit)
    for line in [" Family: gaussian ", "  Links: mu = identity; sigma = identity ",
                 "Formula: Reaction ~ Days + (Days | Subject) ",
                 "   Data: sleepstudy (Number of observations: 180) ",
                 "Group-Level Effects: ", "~Subject (Number of levels: 18) ",
                 "Population-Level Effects: ", "Family Specific Parameters: "]:
        assert line in text.splitlines()
    header = [ln for ln in text.splitlines() if ln.strip().startswith("Estimate")][0]
    assert header.split() == ["Estimate", "Est.Error", "l-95%", "CI", "u-95%", "CI", "Rhat", "Bulk_ESS", "Tail_ESS"]
    row = [ln for ln in text.splitlines() if ln.startswith("sd(Days)")][0].split()
    assert float(row[1]) == pytest.approx(sleep_fit.summary_table().loc["sd_Subject__Days", "Estimate"], abs=0.006)


def test_fixef_ranef_coef_varcorr(sleep_fit):
    fe = sleep_fit.fixef()
    assert list(fe.index) == ["Intercept", "Days"]
    assert list(fe.columns) == ["Estimate", "Est.Error", "Q2.5", "Q97.5"]
    re = sleep_fit.ranef()["Subject"]
    assert re.shape == (18, 8)
    co = sleep_fit.coef()["Subject"]
    # coef = fixef + ranef, per draw, so the means add up exactly
    np.testing.assert_allclose(co[("Days", "Estimate")], fe.loc["Days", "Estimate"] + re[("Days", "Estimate")],
                               rtol=1e-10)
    vc = sleep_fit.VarCorr()
    assert list(vc["Subject"].index) == ["sd(Intercept)", "sd(Days)", "cor(Intercept,Days)"]
    assert "residual__" in vc


def test_seed_model_end_to_end(fish_fit):
    text = str(fish_fit)
    assert "~weather (Number of levels: 2)" in text
    assert "cor(Intercept,temperature)" in text
    assert "cor_weather__Intercept__temperature" in fish_fit.idata.posterior
    assert "// group-level term 1" in fish_fit.stancode()
    assert fish_fit.standata()["N_1"] == 2
    # temperature effect: brms reports 0.07 (95% CI -0.05 to 0.18)
    assert 0.0 < fish_fit.fixef().loc["temperature", "Estimate"] < 0.15


def test_uncorrelated_seed_model_and_cache_hit(fish, fish_fit):
    fit = quiet_brm("fish_num ~ 1 + temperature + (temperature || weather)", data=fish, family="poisson",
                    chains=2, iter=600, seed=2)
    assert "cor_weather__Intercept__temperature" not in fit.idata.posterior
    assert "sd_weather__temperature" in fit.idata.posterior
    # the same structure again (another seed, other draws): nothing compiles
    again = quiet_brm("fish_num ~ 1 + temperature + (temperature || weather)", data=fish, family="poisson",
                      chains=2, iter=300, seed=3)
    assert again.cache_hit is True


def test_same_seed_identical_draws(fish, fish_fit):
    a = quiet_brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish, family="poisson",
                  chains=2, iter=600, seed=1)
    assert a.cache_hit
    np.testing.assert_array_equal(a.raw.draws["b"], fish_fit.raw.draws["b"])
    np.testing.assert_array_equal(a.raw.draws["sd_1"], fish_fit.raw.draws["sd_1"])


def test_binomial_trials_against_known_truth():
    """Simulated binomial data with known coefficients and group SD."""
    rng = np.random.default_rng(7)
    n_groups, per = 30, 20
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    u = rng.normal(0, 0.8, n_groups)
    eta = -0.5 + 1.0 * x + u[g]
    n = rng.integers(5, 30, g.size)
    y = rng.binomial(n, 1 / (1 + np.exp(-eta)))
    import pandas as pd

    df = pd.DataFrame({"y": y, "n": n, "x": x, "g": g, "fail": n - y})
    fit = quiet_brm("y | trials(n) ~ x + (1 | g)", data=df, family="binomial", chains=2, iter=1000, seed=4)
    t = fit.summary_table()
    for name, truth in [("b_Intercept", -0.5), ("b_x", 1.0), ("sd_g__Intercept", 0.8)]:
        lo, hi = t.loc[name, "l-95% CI"], t.loc[name, "u-95% CI"]
        assert lo < truth < hi, (name, lo, hi)
    # cbind(successes, failures) is the same model: same program, same data, same draws
    fit2 = quiet_brm("cbind(y, fail) ~ x + (1 | g)", data=df, family="binomial", chains=2, iter=1000, seed=4)
    assert fit2.cache_hit
    np.testing.assert_array_equal(fit.raw.draws["b"], fit2.raw.draws["b"])


def test_crossed_terms_against_lme4(penicillin, ml_ref):
    """Penicillin (1 | plate) + (1 | sample): lme4's ML estimates lie inside the 95% intervals."""
    fit = quiet_brm("diameter ~ 1 + (1 | plate) + (1 | sample)", data=penicillin, chains=2, iter=1000,
                    seed=5, control={"adapt_delta": 0.95})
    ref = ml_ref["penicillin_ML"]
    t = fit.summary_table()
    assert t.loc["b_Intercept", "l-95% CI"] < ref["fixef"]["(Intercept)"] < t.loc["b_Intercept", "u-95% CI"]
    sds = {r["grp"]: r["sdcor"] for r in ref["varcorr"]["table"]}
    for grp in ("plate", "sample"):
        name = f"sd_{grp}__Intercept"
        assert t.loc[name, "l-95% CI"] < sds[grp] < t.loc[name, "u-95% CI"], name
    # 24 plates: the posterior mean of the plate SD is close to the ML estimate
    assert t.loc["sd_plate__Intercept", "Estimate"] == pytest.approx(sds["plate"], rel=0.15)
    assert t.loc["sigma", "Estimate"] == pytest.approx(sds["Residual"], rel=0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(chains=0), "chains"),
    (dict(iter=100, warmup=200), "warmup"),
    (dict(control={"adapt_delta": 1.5}), "adapt_delta"),
    (dict(control={"adapt_deltaa": 0.9}), "adapt_deltaa"),
    (dict(backend="stanx"), "stanx"),
])
@pytest.mark.engine_free  # no Stan program runs
def test_bad_arguments_fail_before_compiling(sleep, kwargs, match):
    with pytest.raises(sh.StanhierError, match=match):
        sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, progress=False, **kwargs)


@pytest.mark.engine_free  # no Stan program runs
def test_sufficient_statistics_only_where_exact(fish):
    with pytest.raises(sh.ArgumentError, match="sufficient_stats"):
        sh.brm("fish_num ~ temperature + (1 | weather)", data=fish, family="poisson",
               sufficient_stats=True, progress=False)


def test_lprior_is_the_sum_of_the_prior_densities(sleep):
    """The program writes the priors as a data constant plus a kernel (templates/prior_kernels.stan);
    its ``lprior`` must equal, draw by draw, the log densities from scipy: normal, Cauchy,
    exponential, gamma, the default half-Student-t, and the LKJ(2) of a 2 x 2 correlation
    matrix, whose correlation r has (r + 1) / 2 ~ Beta(eta, eta)."""
    from scipy import stats

    priors = [sh.prior("normal(0, 10)", class_="b"), sh.prior("cauchy(300, 50)", class_="Intercept"),
              sh.prior("exponential(0.05)", class_="sd"), sh.prior("gamma(2, 0.1)", class_="sigma"),
              sh.prior("lkj(2)", class_="cor")]
    fit = quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, prior=priors, chains=1, iter=200,
                    warmup=100, seed=3)
    d = {k: np.asarray(v).reshape(100, -1) for k, v in fit.raw.draws.items()}
    r = d["cor_1"][:, 0]
    expected = (stats.norm.logpdf(d["b"][:, 0], 0, 10) + stats.cauchy.logpdf(d["Intercept"][:, 0], 300, 50)
                + stats.expon.logpdf(d["sd_1"], scale=20).sum(axis=1)
                + stats.gamma.logpdf(d["sigma"][:, 0], 2, scale=10)
                + stats.beta.logpdf((r + 1) / 2, 2, 2) - np.log(2))
    np.testing.assert_allclose(d["lprior"][:, 0], expected, rtol=1e-9)
    # the default priors: Student-t on the intercept, half-t on SDs and sigma, LKJ(1)
    default = quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=1, iter=200,
                        warmup=100, seed=3)
    d = {k: np.asarray(v).reshape(100, -1) for k, v in default.raw.draws.items()}
    expected = (stats.t.logpdf(d["Intercept"][:, 0], 3, 288.7, 59.3)
                + (stats.t.logpdf(d["sd_1"], 3, 0, 59.3) + np.log(2)).sum(axis=1)
                + stats.t.logpdf(d["sigma"][:, 0], 3, 0, 59.3) + np.log(2)
                + stats.beta.logpdf(0.5, 1, 1) - np.log(2))  # LKJ(1): r uniform on (-1, 1)
    np.testing.assert_allclose(d["lprior"][:, 0], expected, rtol=1e-9)
