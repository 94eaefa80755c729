"""Non-default links against lme4 1.1-31 and brms (tests/reference/links_reference.json,
written by tests/reference/make_links_reference.R).

glmer: at a non-canonical link lme4's Laplace approximation uses its PIRLS weights
(d mu/d eta)^2 / Var[y] (the Fisher information) at the conditional mode; stanhier does the
same. lme4's printed logLik takes log|H| from the weights of the PIRLS iteration before its
last one and stops PIRLS on the penalized deviance, which at a non-canonical link (Fisher
scoring converges linearly) moves it by up to 3.1e-4 in these cases; the reference
``laplace_at_mode`` (R: the Laplace approximation at lme4's final mu with the weights at that
mu) is the same approximation without that error, and stanhier matches it to 1e-4 (measured:
8e-8 for cbpp probit; 4e-5 for the crossed case, where lme4's mode itself is off by a
gradient of 1.6e-4), and lme4's printed value to 5e-4. Parameters: 1e-3 relative. The
``ml_glmm.stan`` program is the one every glmer test shares (family and link are data), so
these cases compile nothing new.

glmer with a scale (gaussian at the log link, Gamma at the log and inverse links): lme4's
objective with the dispersion profiled out (-2 logLik = log|H| + |u|^2 + R's family()$aic).
lme4's PIRLS tolerance (1e-7) leaves that objective noisy by ~1e-4 here, so the references are
lme4's fits with PIRLS to 1e-10 (``best_fit`` in the R script); stanhier's logLik is at or above
them, by at most 8e-6 (measured), and the estimates, SDs, SEs and sigma agree to 7e-5 relative.

brm: one binomial probit fit (the one new program structure) against brms's posterior
means of the same model and default priors, within 0.2 posterior SD (each side's Monte
Carlo error of a mean is below 0.05 SD at 4000 and 2000 draws).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.errors import ArgumentError, FamilyError
from stanhier.ml.crossed_glmm import glmer_crossed
from conftest import load, quiet_brm

REF = json.loads((Path(__file__).parent / "reference" / "links_reference.json").read_text())
GLMER = REF["glmer"]

CBPP_FORMULA = "cbind(incidence, fail) ~ period + (1 | herd)"
CASES = {
    "cbpp_probit": (CBPP_FORMULA, "cbpp", "binomial(link='probit')"),
    "cbpp_cloglog": (CBPP_FORMULA, "cbpp", "binomial(link='cloglog')"),
    "fish_poisson_sqrt": ("fish_num ~ temperature + (1 | weather)", "fish", "poisson(link='sqrt')"),
}


def dataset(name: str) -> pd.DataFrame:
    df = load(name)
    if name == "cbpp":
        df["fail"] = df["size"] - df["incidence"]
        df["period"] = df["period"].astype(str)  # a factor, as in R
    return df


def glmer_quiet(formula, data, family, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sh.glmer(formula, data, family=family, progress=False, **kwargs)


def check_against_lme4(fit, ref: dict) -> None:
    assert fit.logLik() == pytest.approx(ref["laplace_at_mode"], abs=1e-4)
    assert fit.logLik() == pytest.approx(ref["logLik"], abs=5e-4)
    np.testing.assert_allclose(fit.fixef().to_numpy(), list(ref["fixef"].values()), rtol=1e-3, atol=1e-4)
    sd = np.atleast_1d(ref["sd"])
    np.testing.assert_allclose(fit.VarCorr()["sdcor"].to_numpy()[:len(sd)], sd, rtol=2e-3)
    np.testing.assert_allclose(fit.fitted()[:5], ref["fitted_head"], rtol=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_glmer_link_against_lme4(case, engine):
    formula, data, family = CASES[case]
    fit = glmer_quiet(formula, dataset(data), family)
    assert fit.family.link == sh.families.get_family(family).link
    check_against_lme4(fit, GLMER[case])
    fam = sh.families.get_family(family)
    assert f" Family: {fam.name}  ( {fam.link} )" in fit.summary()


def test_glmer_record_keeps_the_link(tmp_path, engine):
    """save/load restores the link, and the recorded command reproduces it."""
    cbpp = dataset("cbpp").assign(period=lambda d: "p" + d["period"])  # labels that stay strings in CSV
    fit = glmer_quiet(CBPP_FORMULA, cbpp, "binomial(link='probit')")
    sh.save(fit, tmp_path / "run")
    back = sh.load(tmp_path / "run")
    assert back.family == fit.family and back.logLik() == pytest.approx(fit.logLik(), abs=1e-10)
    assert "family=\"binomial(link='probit')\"" in (tmp_path / "run" / "command.txt").read_text()


def test_crossed_evaluator_with_a_link(engine):
    """Crossed factors through the numpy PIRLS evaluator (Fisher weights from the family)
    and through glmer's Stan program: both at lme4's optimum."""
    ref = GLMER["cbpp_probit_crossed"]
    formula = "cbind(incidence, fail) ~ 1 + (1 | herd) + (1 | period)"
    crossed = glmer_crossed(formula, dataset("cbpp"), family="binomial(link='probit')")
    check_against_lme4(crossed, ref)
    check_against_lme4(glmer_quiet(formula, dataset("cbpp"), "binomial(link='probit')"), ref)


def test_bernoulli_rows_aggregate_at_a_link(engine):
    """cbpp as 0/1 rows with the probit link: aggregated exactly to the binomial patterns
    (any link: a sum of Bernoulli trials with one probability), same fit as lme4's binomial."""
    cbpp = dataset("cbpp")
    rows = cbpp.loc[cbpp.index.repeat(cbpp["size"])].copy()
    rows["y"] = np.concatenate([(np.arange(n) < k).astype(int) for n, k in zip(cbpp["size"], cbpp["incidence"])])
    fit = glmer_quiet("y ~ period + (1 | herd)", rows, "bernoulli(link='probit')")
    ref = GLMER["cbpp_probit"]
    assert "aggregated" in fit.summary().lower()
    np.testing.assert_allclose(fit.fixef().to_numpy(), list(ref["fixef"].values()), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.VarCorr()["sdcor"].to_numpy()[:1], [ref["sd"]], rtol=2e-3)


@pytest.mark.engine_free  # no Stan program runs
def test_brm_default_priors_at_links():
    """brms 2.18's get_prior (Rscript on the development machine): at the identity, log, inverse
    and sqrt links the Intercept's student_t is centred at the median of link(y)."""
    fish = dataset("fish")
    cases = [("fish_num ~ temperature + (1 | weather)", fish, "poisson(link='sqrt')", "student_t(3, 1, 2.5)"),
             ("y ~ temperature + (1 | weather)", fish.assign(y=fish.fish_num + 1), "Gamma(link='inverse')",
              "student_t(3, 0.5, 2.5)"),
             ("y ~ temperature + (1 | weather)", fish.assign(y=fish.fish_num + 1), "gaussian(link='log')",
              "student_t(3, 0.7, 2.5)")]
    for formula, df, family, prior in cases:
        table = sh.get_prior(formula, df, family=family)
        assert table.loc[table["class"] == "Intercept", "prior"].iloc[0] == prior, family


SCALE_CASES = {
    "fish_gaussian_log_tight": ("y ~ temperature + (1 | weather)", "fish", "gaussian(link='log')"),
    "sleepstudy_gamma_log": ("Reaction ~ Days + (1 | Subject)", "sleepstudy", "Gamma(link='log')"),
    "sleepstudy_gamma_inverse": ("seconds ~ Days + (1 | Subject)", "sleepstudy", "Gamma(link='inverse')"),
    "sleepstudy_gamma_log_slope": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "Gamma(link='log')"),
}


def scale_dataset(name: str) -> pd.DataFrame:
    df = load(name)
    return df.assign(y=df["fish_num"] + 1) if name == "fish" else df.assign(seconds=df["Reaction"] / 1000)


@pytest.mark.parametrize("case", SCALE_CASES)
def test_glmer_scale_family_against_lme4(case, engine):
    formula, data, family = SCALE_CASES[case]
    ref = GLMER[case]
    fit = glmer_quiet(formula, scale_dataset(data), family)
    assert ref["logLik"] - 1e-6 <= fit.logLik() <= ref["logLik"] + 2e-5
    np.testing.assert_allclose(fit.fixef().to_numpy(), list(ref["fixef"].values()), rtol=2e-4)
    vc = fit.VarCorr()
    sd = vc.loc[vc["var2"].isna() & (vc["grp"] != "Residual"), "sdcor"].to_numpy()
    np.testing.assert_allclose(sd, np.atleast_1d(ref["sd"]), rtol=2e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov())), ref["se"], rtol=2e-4)
    assert fit.sigma() == pytest.approx(ref["sigma"], rel=1e-5)
    assert vc["sdcor"].iloc[-1] == fit.sigma() and fit.df() == len(ref["fixef"]) + len(np.atleast_1d(ref["theta"])) + 1
    np.testing.assert_allclose(fit.fitted()[:5], ref["fitted_head"], rtol=1e-4)


@pytest.mark.engine_free  # no Stan program runs
def test_glmer_unsupported_links_and_families():
    df = dataset("fish")
    with pytest.raises(ValueError, match="supported links: log, identity, sqrt"):
        sh.glmer("fish_num ~ temperature + (1 | weather)", df, family="poisson(link='logit')")
    with pytest.raises(FamilyError, match=r"Family 'Gamma': column 'fish_num' has \d+ value\(s\) that are not positive"):
        sh.glmer("fish_num ~ temperature + (1 | weather)", df, family="Gamma")
    with pytest.raises(ArgumentError, match="nAGQ = 5 with family 'Gamma'.*use nAGQ=1"):
        sh.glmer("fish_num ~ temperature + (1 | weather)", df.assign(fish_num=df["fish_num"] + 1), family="Gamma",
                 nAGQ=5)


@pytest.fixture(scope="module")
def brm_probit(engine):
    return quiet_brm("incidence | trials(size) ~ period + (1 | herd)", data=dataset("cbpp"),
                     family="binomial(link='probit')", chains=2, iter=2000, seed=13)


def test_brm_probit_against_brms(brm_probit):
    ref = REF["brms"]["cbpp_probit"]
    table = brm_probit.summary_table()
    for name, mean in ref["mean"].items():
        sd = ref["sd"][name]
        assert abs(table.loc[name, "Estimate"] - mean) < 0.2 * sd, (name, table.loc[name, "Estimate"], mean, sd)
        assert table.loc[name, "Est.Error"] == pytest.approx(sd, rel=0.15), name
    assert "  Links: mu = probit " in brm_probit.summary()
    assert "mu = Phi(mu + Xc * b);" in brm_probit.spec.code


def test_brm_probit_post_estimation(brm_probit):
    """epred = trials * Phi(linpred) draw by draw; log_lik sums to the binomial probit density."""
    from scipy import stats

    lin = brm_probit.posterior_linpred()
    epred = brm_probit.posterior_epred()
    trials = dataset("cbpp")["size"].to_numpy()
    np.testing.assert_allclose(epred, stats.norm.cdf(lin) * trials, rtol=1e-10)
    ll = brm_probit.log_lik().reshape(-1, len(trials))
    y = dataset("cbpp")["incidence"].to_numpy()
    np.testing.assert_allclose(ll[:5], stats.binom.logpmf(y, trials, stats.norm.cdf(lin[:5])), rtol=1e-9)
