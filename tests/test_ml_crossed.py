"""Crossed/nested LMMs beyond the stacked layout: the blocked evaluator (stanhier/ml/crossed.py).

References: lme4 1.1-31 (tests/reference/ml_reference.json ``insteval_ML``, ``penicillin_ML``,
``pastes_ML``; the InstEval REML numbers below were computed with Rscript on the development
machine: ``lmer(y ~ service + (1 | s) + (1 | d), InstEval, REML = TRUE)`` with service, s, d as
factors). Tolerances (issue 11): logLik 1e-3 absolute, fixed effects 1e-4 relative, SDs 1e-3
relative; standard errors 1e-3 relative (both use sigma^2 (RX'RX)^-1).

The Stan program ml_lmm_crossed.stan defines the model: its log density at the optimum
(beta, theta, log sigma) must equal the evaluator's log-likelihood (1e-8 relative).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


from stanhier.errors import DataError  # noqa: E402
from stanhier.model.design import make_design  # noqa: E402
from stanhier.model.formula import parse_formula  # noqa: E402
from stanhier.ml import crossed  # noqa: E402
from stanhier.ml.api import lmer  # noqa: E402
from stanhier.ml.crossed import CrossedMerFit, lmer_crossed  # noqa: E402

HERE = Path(__file__).parent
REF = json.loads((HERE / "reference" / "ml_reference.json").read_text())["cases"]

@pytest.fixture(scope="module")
def insteval() -> pd.DataFrame:
    return pd.read_csv(HERE / "data" / "InstEval.csv")


def _check_against(fit, ref: dict, *, ll_tol=1e-3, fe_rel=1e-4, sd_rel=1e-3, se_rel=1e-3) -> None:
    assert abs(fit.logLik() - ref["logLik"]) < ll_tol
    fe = np.asarray(list(ref["fixef"].values()))
    np.testing.assert_allclose(fit.fixef().to_numpy(), fe, rtol=fe_rel, atol=1e-7)
    se = np.asarray(list(ref["fixef_se"].values()))
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov().to_numpy())), se, rtol=se_rel)
    vc = fit.VarCorr()  # same order as lme4 (most levels first); lme4 names batch/cask "cask:batch"
    ref_sd = [row["sdcor"] for row in ref["varcorr"]["table"]]
    np.testing.assert_allclose(vc["sdcor"].to_numpy(), ref_sd, rtol=sd_rel)


# --------------------------------------------------------------------------- InstEval (acceptance)
def test_insteval_ML_matches_lme4(insteval):
    start = time.perf_counter()
    fit = lmer("y ~ service + (1 | s) + (1 | d)", insteval, REML=False)
    seconds = time.perf_counter() - start
    assert isinstance(fit, CrossedMerFit)
    assert fit.evaluator.startswith("numpy blocked Cholesky")
    assert fit.converged
    _check_against(fit, REF["insteval_ML"])
    text = str(fit)
    assert "Evaluator: numpy blocked Cholesky" in text
    assert "groups:  s, 2972; d, 1128" in text
    assert seconds < 60  # lme4: ~20 s on the reference machine; ours ~5-12 s


def test_insteval_REML_matches_lme4(insteval):
    fit = lmer("y ~ service + (1 | s) + (1 | d)", insteval, REML=True)
    ref = INSTEVAL_REML_REF
    assert fit.REMLcrit() == pytest.approx(-2 * ref["logLik"], abs=2e-3)
    np.testing.assert_allclose(fit.fixef().to_numpy(), ref["fixef"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov().to_numpy())), ref["se"], rtol=1e-3)
    np.testing.assert_allclose(fit.VarCorr()["sdcor"].to_numpy(), ref["sd"], rtol=1e-3)


#: lme4 1.1-31: lmer(y ~ service + (1 | s) + (1 | d), InstEval, REML = TRUE); sd = (s, d, Residual).
INSTEVAL_REML_REF = {
    "logLik": -118871.791558058,
    "fixef": [3.28328481252704, -0.0911321694533548],
    "se": [0.0188141974382475, 0.0132711188563271],
    "sd": [0.325045923997443, 0.521040514569416, 1.17754556917037],
}


# --------------------------------------------------------------------------- small cases: lme4 and the dense path
@pytest.mark.parametrize("case, formula, name", [
    ("penicillin_ML", "diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
    ("pastes_ML", "strength ~ 1 + (1 | batch/cask)", "Pastes"),
])
def test_small_crossed_and_nested_match_lme4(case, formula, name):
    """The blocked evaluator on designs the stacked layout also handles (nested: Pastes)."""
    fit = lmer_crossed(formula, pd.read_csv(HERE / "data" / f"{name}.csv"), REML=False)
    _check_against(fit, REF[case], ll_tol=1e-4, fe_rel=1e-5, sd_rel=2e-3, se_rel=2e-3)
    b = fit.ranef()
    for group, frame in b.items():
        assert frame.shape[0] == fit.ngrps()[group]
        assert np.all(frame.attrs["postVar"] > 0)


def test_conditional_modes_solve_the_penalized_least_squares():
    """b = Lambda u with u minimizing |y - X beta - Z Lambda u|^2 + |u|^2 (checked densely),
    and the conditional covariances are sigma^2 diag-blocks of Lambda (Lambda'Z'Z Lambda + I)^-1 Lambda'."""
    rng = np.random.default_rng(3)
    n = 600
    df = pd.DataFrame({"a": rng.integers(0, 50, n), "b": rng.integers(0, 12, n), "x": rng.normal(size=n)})
    df["y"] = (1 + 0.5 * df.x + rng.normal(size=50)[df.a] + rng.normal(size=50)[df.a] * df.x
               + 0.7 * rng.normal(size=12)[df.b] + rng.normal(size=n))
    fit = lmer_crossed("y ~ x + (x | a) + (1 | b)", df, REML=False)
    prob = fit.crossed
    lay = fit.layout
    Z = crossed.z_matrix(fit.design, lay).toarray()
    lam = np.zeros((lay.q, lay.q))
    lam[lay.lam_row - 1, lay.lam_col - 1] = fit.theta[lay.lam_par - 1]
    ZL = Z @ lam
    A = ZL.T @ ZL + np.eye(lay.q)
    r = fit.design.y - fit.design.X @ fit.fixef().to_numpy()
    u = np.linalg.solve(A, ZL.T @ r)
    b_dense = lam @ u
    np.testing.assert_allclose(prob.modes(fit.factorization), b_dense, rtol=1e-8, atol=1e-10)
    cov = fit.sigma() ** 2 * lam @ np.linalg.inv(A) @ lam.T
    post = fit.ranef()["a"].attrs["postVar"]
    np.testing.assert_allclose(post[3], cov[6:8, 6:8], rtol=1e-8, atol=1e-12)
    # the profiled deviance equals the dense formula log|A| + N (1 + log(2 pi r2 / N))
    N = len(df)
    X = fit.design.X
    r2 = np.sum((r - ZL @ u) ** 2) + u @ u
    dev = np.linalg.slogdet(A)[1] + N * (1 + np.log(2 * np.pi * r2 / N))
    assert -2 * fit.logLik() == pytest.approx(dev, rel=1e-10)
    # beta is the GLS estimate
    V = fit.sigma() ** 2 * (ZL @ ZL.T + np.eye(N))
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ fit.design.y)
    np.testing.assert_allclose(fit.fixef().to_numpy(), beta, rtol=1e-8)


# --------------------------------------------------------------------------- the Stan program defines the model
@pytest.mark.parametrize("formula, REML", [
    ("y ~ x + (1 | a) + (1 | b)", False),
    ("y ~ x + (x | a) + (1 | b)", True),
    ("y ~ x + (1 | a) + (x | b)", False),
])
def test_stan_program_equals_evaluator_small(formula, REML):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"a": rng.integers(0, 40, 800), "b": rng.integers(0, 15, 800), "x": rng.normal(size=800)})
    df["y"] = rng.normal(size=40)[df.a] + 0.5 * rng.normal(size=15)[df.b] + rng.normal(size=800)
    fit = lmer_crossed(formula, df, REML=REML)
    stan_lp, ours = fit.stan_check("pystan")
    assert stan_lp == pytest.approx(ours, rel=1e-8)


def test_stan_program_equals_evaluator_insteval(insteval):
    fit = lmer("y ~ service + (1 | s) + (1 | d)", insteval, REML=False)
    stan_lp, ours = fit.stan_check("pystan")
    assert stan_lp == pytest.approx(ours, rel=1e-8)
    assert "blocked_gaussian_lpdf" in fit.stancode()


# --------------------------------------------------------------------------- limits
def test_schur_limit_names_the_limit_and_the_alternatives(monkeypatch):
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.integers(0, 300, 3000), "b": rng.integers(0, 200, 3000)})
    df["y"] = rng.normal(size=3000)
    monkeypatch.setattr(crossed, "MAX_SCHUR_Q", 100)
    with pytest.raises(DataError, match=r"dense 200 x 200 Schur complement.*limited to 100.*brm\(\).*lme4"):
        lmer_crossed("y ~ 1 + (1 | a) + (1 | b)", df, REML=False)


def test_small_stacked_models_keep_the_stan_path():
    """Below the stacked limit lmer keeps ml_lmm.stan (it is faster there)."""
    pen = pd.read_csv(HERE / "data" / "Penicillin.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        design = make_design(parse_formula("diameter ~ 1 + (1 | plate) + (1 | sample)"), pen)
    assert not crossed.needs_crossed(design)
    assert crossed.needs_crossed(design, max_stacked_q=20)  # 30 random effects


# --------------------------------------------------------------------------- Laplace GLMM on the crossed layout
#: lme4 1.1-31: glmer(y ~ x + (1 | a) + (1 | b), family = poisson) on ``poisson_crossed()`` (Rscript,
#: development machine); theta = SDs (no sigma in a Poisson GLMM).
POISSON_REF = {"logLik": -4747.65267346, "fixef": [0.3265830976, 0.3899037249],
               "theta": [0.6198669587, 0.4203842255], "se": [0.085388898, 0.013249041]}


def poisson_crossed() -> pd.DataFrame:
    """Poisson, 150 x 40 crossed levels, 3,000 rows (truth: 0.3, 0.4; SDs 0.6, 0.4)."""
    rng = np.random.default_rng(5)
    n = 3000
    df = pd.DataFrame({"a": rng.integers(0, 150, n), "b": rng.integers(0, 40, n), "x": rng.normal(size=n)})
    df["y"] = rng.poisson(np.exp(0.3 + 0.4 * df.x + 0.6 * rng.normal(size=150)[df.a]
                                 + 0.4 * rng.normal(size=40)[df.b]))
    return df


@pytest.fixture(scope="module")
def poisson_fit():
    from stanhier.ml.crossed_glmm import glmer_crossed

    return glmer_crossed("y ~ x + (1 | a) + (1 | b)", poisson_crossed(), family="poisson")


def test_crossed_poisson_laplace_matches_lme4(poisson_fit):
    fit = poisson_fit
    assert fit.converged
    assert fit.logLik() == pytest.approx(POISSON_REF["logLik"], abs=1e-3)
    assert fit.logLik() >= POISSON_REF["logLik"] - 1e-6  # not worse than lme4's optimum
    np.testing.assert_allclose(fit.fixef().to_numpy(), POISSON_REF["fixef"], rtol=1e-4)
    np.testing.assert_allclose(fit.theta, POISSON_REF["theta"], rtol=1e-3)
    # lme4's SEs come from its own finite-difference Hessian: agreement to 2%
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov().to_numpy())), POISSON_REF["se"], rtol=2e-2)
    assert "Evaluator: numpy blocked Cholesky (Laplace, PIRLS)" in str(fit)
    assert fit.ranef()["a"].shape == (150, 1)


def test_crossed_poisson_equals_stan_glmm_program(poisson_fit):
    """ml_glmm.stan (stacked layout, Newton modes inside Stan) at our optimum gives our value."""
    from stanhier.backends import get_backend
    from stanhier.ml.layout import build_layout
    from stanhier.ml.problem import glmm_problem, stan_program

    fit = poisson_fit
    lay = build_layout(fit.design)
    problem = glmm_problem(fit.design, lay, fit.family, 1)
    theta = np.empty(lay.n_theta)
    for slot in fit.layout.slots:  # crossed order (most levels first) -> stacked order (formula order)
        stacked = next(s for s in lay.slots if s.index == slot.index)
        theta[list(stacked.theta_index)] = fit.theta[list(slot.theta_index)]
    model = get_backend("auto").compile(stan_program("glmm"))
    lp = model.log_density(problem.standata()).log_prob(np.concatenate([fit.fixef().to_numpy(), theta]))
    assert lp == pytest.approx(fit.logLik(), rel=1e-8)


def test_glmer_dispatches_large_crossed_poisson():
    from stanhier.ml.api import glmer
    from stanhier.ml.crossed_glmm import CrossedGlmerFit

    rng = np.random.default_rng(8)
    n = 6000
    df = pd.DataFrame({"a": rng.integers(0, 850, n), "b": rng.integers(0, 200, n)})
    df["y"] = rng.poisson(np.exp(0.5 + 0.5 * rng.normal(size=850)[df.a] + 0.3 * rng.normal(size=200)[df.b]))
    fit = glmer("y ~ 1 + (1 | a) + (1 | b)", df, family="poisson")
    assert isinstance(fit, CrossedGlmerFit)
    sd = fit.VarCorr().set_index("grp")["sdcor"]
    assert sd["a"] == pytest.approx(0.5, abs=0.1) and sd["b"] == pytest.approx(0.3, abs=0.1)
