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
@pytest.mark.engine_free  # no Stan program runs
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


@pytest.mark.engine_free  # no Stan program runs
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
@pytest.mark.engine_free  # no Stan program runs
def test_small_crossed_and_nested_match_lme4(case, formula, name):
    """The blocked evaluator on designs the stacked layout also handles (nested: Pastes)."""
    fit = lmer_crossed(formula, pd.read_csv(HERE / "data" / f"{name}.csv"), REML=False)
    _check_against(fit, REF[case], ll_tol=1e-4, fe_rel=1e-5, sd_rel=2e-3, se_rel=2e-3)
    b = fit.ranef()
    for group, frame in b.items():
        assert frame.shape[0] == fit.ngrps()[group]
        assert np.all(frame.attrs["postVar"] > 0)


@pytest.mark.engine_free  # no Stan program runs
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
@pytest.mark.pystan  # names pystan: runs once
def test_stan_program_equals_evaluator_small(formula, REML):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"a": rng.integers(0, 40, 800), "b": rng.integers(0, 15, 800), "x": rng.normal(size=800)})
    df["y"] = rng.normal(size=40)[df.a] + 0.5 * rng.normal(size=15)[df.b] + rng.normal(size=800)
    fit = lmer_crossed(formula, df, REML=REML)
    stan_lp, ours = fit.stan_check("pystan")
    assert stan_lp == pytest.approx(ours, rel=1e-8)


@pytest.mark.pystan  # names pystan: runs once
def test_stan_program_equals_evaluator_insteval(insteval):
    fit = lmer("y ~ service + (1 | s) + (1 | d)", insteval, REML=False)
    stan_lp, ours = fit.stan_check("pystan")
    assert stan_lp == pytest.approx(ours, rel=1e-8)
    assert "blocked_gaussian_lpdf" in fit.stancode()


# --------------------------------------------------------------------------- limits
@pytest.mark.engine_free  # no Stan program runs
def test_schur_limit_names_the_limit_and_the_alternatives(monkeypatch):
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.integers(0, 300, 3000), "b": rng.integers(0, 200, 3000)})
    df["y"] = rng.normal(size=3000)
    monkeypatch.setattr(crossed, "MAX_SCHUR_Q", 100)
    with pytest.raises(DataError, match=r"dense 200 x 200 Schur complement.*limited to 100.*brm\(\).*lme4"):
        lmer_crossed("y ~ 1 + (1 | a) + (1 | b)", df, REML=False)


@pytest.mark.engine_free  # no Stan program runs
def test_needs_crossed_is_the_stacked_limit():
    """needs_crossed: beyond the stacked limit (the Stan program ml_lmm.stan defines models below it)."""
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


@pytest.mark.engine_free  # no Stan program runs
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


@pytest.mark.engine_free  # no Stan program runs
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


# --------------------------------------------------------------------------- small models on the numpy evaluator
#: lme4 1.1-31 (R 4.2.2, Rscript on this machine): glmer(TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD)
#: + (1 | LOCATION), grouseticks, family = poisson) with YEAR, INDEX, BROOD, LOCATION as factors.
GROUSE_REF = {"logLik": -890.2713535, "theta": [0.5415084635, 0.7500279665, 0.5287214553],
              "fixef": [0.3727763679, 1.180416892, -0.9786847196, -0.02376062735],
              "se": [0.1963658906, 0.2381218595, 0.2627749843, 0.003438325577]}

#: lme4 1.1-31 (Rscript on the development machine): glmer(TICKS ~ YEAR + cHEIGHT + (cHEIGHT || LOCATION),
#: grouseticks, family = poisson) with INDEX, BROOD, YEAR, LOCATION read as character
GROUSE_UNCORR_REF = {"logLik": -1133.52103490492, "theta": [0.95887919575886871, 0.00399856510943724],
                     "fixef": [0.6981685959515027, 0.9391772601212378, -1.4180542018206066, -0.0242792143397561],
                     "se": [0.14822026110375014, 0.08424240545341223, 0.12156285594489911, 0.00428362820222278]}


def _quiet(fun, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fun(*args, **kwargs)


@pytest.mark.parametrize("formula, REML", [
    ("Reaction ~ Days + (Days | Subject)", False),
    ("Reaction ~ Days + (Days | Subject)", True),
    ("Reaction ~ Days + (Days || Subject)", True),
])
def test_small_lmer_runs_on_numpy_and_its_stan_program_agrees(formula, REML):
    """One grouping factor: lmer runs the blocked evaluator (A block-diagonal, no Schur part);
    ml_lmm.stan (per-subject blocks) at that optimum gives the same log-likelihood."""
    fit = lmer(formula, pd.read_csv(HERE / "data" / "sleepstudy.csv"), REML=REML)
    assert fit.evaluator.startswith("numpy blocked Cholesky") and "Evaluator: numpy" in str(fit)
    assert fit.compile_seconds == 0.0
    stan_lp, ours = fit.stan_check()
    assert stan_lp == pytest.approx(ours, rel=1e-10)


def _reordered(n: int = 600, seed: int = 3) -> pd.DataFrame:
    """Two crossed factors written fewest levels first: the blocked layout reverses the formula's
    term order, so reading the Stan program needs the parameter permutation."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.integers(0, 30, n), "b": rng.integers(0, 8, n), "x": rng.normal(size=n)})
    eta = 0.2 + 0.3 * df.x + 0.5 * rng.normal(size=30)[df.a] + 0.4 * rng.normal(size=8)[df.b]
    df["y"] = rng.poisson(np.exp(eta))
    df["yn"] = eta + rng.normal(size=n)
    return df


@pytest.mark.parametrize("kind", ["lmm", "glmm"])
def test_stan_program_read_in_the_blocked_order(kind):
    """theta in the blocked order (a, b) against the program's formula order (b, a): the density
    at the optimum equals ours and its gradient vanishes there (both read through the permutation)."""
    from stanhier.ml.api import glmer

    df = _reordered()
    fit = (lmer("yn ~ x + (1 | b) + (1 | a)", df, REML=False) if kind == "lmm"
           else _quiet(glmer, "y ~ x + (1 | b) + (1 | a)", df, family="poisson"))
    assert fit.evaluator.startswith("numpy")
    assert [s.group for s in fit.layout.slots] == ["a", "b"]
    stan_lp, ours = fit.stan_check()
    assert stan_lp == pytest.approx(ours, rel=1e-9)
    _, grad = fit.density.log_prob_grad(fit.optimum.theta)
    # profiled beta and sigma are exact; theta stops within the optimizer's tolerance
    assert np.max(np.abs(grad)) < 1e-2


@pytest.mark.engine_free  # no Stan program runs
def test_grouseticks_glmer_on_numpy_matches_lme4():
    """Three nested/crossed intercepts (403 + 118 + 63 levels): PIRLS on the blocked factorization,
    lme4's two stages; SEs from the finite-difference Hessian of the deviance, as lme4."""
    from stanhier.ml.api import glmer

    df = pd.read_csv(HERE / "data" / "grouseticks.csv", dtype={"INDEX": str, "BROOD": str, "YEAR": str,
                                                               "LOCATION": str})
    fit = glmer("TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)", df, family="poisson")
    assert fit.evaluator.startswith("numpy blocked Cholesky (Laplace, PIRLS)")
    assert fit.logLik() >= GROUSE_REF["logLik"] - 1e-4 and fit.logLik() - GROUSE_REF["logLik"] < 1e-3
    np.testing.assert_allclose(fit.theta, GROUSE_REF["theta"], rtol=2e-4)
    np.testing.assert_allclose(fit.fixef().to_numpy(), GROUSE_REF["fixef"], atol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov())), GROUSE_REF["se"], rtol=1e-3)


def test_numpy_glmer_record_reloads_exactly(tmp_path):
    """A run record of a glmer fit on the numpy evaluator reloads at its optimum with the same
    logLik and standard errors, and its Stan program is still at hand (density)."""
    from stanhier.ml.api import glmer
    from stanhier.record import load, save

    fish = pd.read_csv(HERE / "data" / "fish.csv")
    fit = glmer("fish_num ~ temperature + (1 | id)", fish, family="poisson")
    again = load(save(fit, tmp_path / "rec"))
    assert type(again) is type(fit) and again.evaluator == fit.evaluator
    assert again.logLik() == fit.logLik()
    np.testing.assert_array_equal(again.vcov().to_numpy(), fit.vcov().to_numpy())
    assert again.density.log_prob(again.optimum.theta) == pytest.approx(again.logLik(), rel=1e-9)


def _grouseticks() -> pd.DataFrame:
    return pd.read_csv(HERE / "data" / "grouseticks.csv", dtype={"INDEX": str, "BROOD": str, "YEAR": str,
                                                                 "LOCATION": str})


@pytest.mark.parametrize("formula, name", [
    ("fish_num ~ 1 + temperature + (temperature | weather)", "fish"),
    ("TICKS ~ YEAR + cHEIGHT + (cHEIGHT || LOCATION)", "grouseticks"),
])
def test_vector_term_glmer_runs_on_numpy_and_its_stan_program_agrees(formula, name):
    """Terms with several coefficients ((x | g), (x || g)): PIRLS on CrossedLMM.factor's per-level
    M x M blocks, no compile; ml_glmm.stan (the program that defines the fit) at that optimum gives
    the same Laplace log-likelihood."""
    from stanhier.ml.api import glmer
    from stanhier.ml.problem import stan_program

    df = _grouseticks() if name == "grouseticks" else pd.read_csv(HERE / "data" / "fish.csv")
    fit = _quiet(glmer, formula, df, family="poisson")
    assert fit.evaluator.startswith("numpy blocked Cholesky (Laplace, PIRLS)") and "Evaluator: numpy" in str(fit)
    assert fit.compile_seconds == 0.0
    assert fit.stancode() == stan_program("glmm") and fit.standata()["N"] == len(df)
    stan_lp, ours = fit.stan_check()
    assert stan_lp == pytest.approx(ours, rel=1e-10)


@pytest.mark.engine_free  # no Stan program runs
def test_uncorrelated_slope_glmer_on_numpy_matches_lme4():
    """(cHEIGHT || LOCATION), Poisson: lme4's numbers. The likelihood is flat along the slope's SD;
    lme4 stops 6e-5 below our optimum (its logLik also carries its PIRLS tolerance: its deviance
    function at its own estimates is 0.0022 below the exact Laplace value there, which ml_glmm.stan
    and this evaluator agree on), hence fixed effects to 2e-3 and the slope SD to 3%."""
    from stanhier.ml.api import glmer

    fit = glmer("TICKS ~ YEAR + cHEIGHT + (cHEIGHT || LOCATION)", _grouseticks(), family="poisson")
    ref = GROUSE_UNCORR_REF
    assert fit.converged and not fit.is_singular()
    assert ref["logLik"] - 1e-4 <= fit.logLik() < ref["logLik"] + 5e-3
    x_lme4 = np.concatenate([ref["fixef"], ref["theta"]])
    assert fit.logLik() >= -fit.glmm.deviance(x_lme4) / 2  # at least lme4's optimum, on the same function
    np.testing.assert_allclose(fit.fixef().to_numpy(), ref["fixef"], atol=2e-3)
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=3e-2)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov().to_numpy())), ref["se"], rtol=2e-2)
    assert fit.ranef()["LOCATION"].shape == (63, 2)
