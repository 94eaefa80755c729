"""Gaussian brm with the group-level effects integrated out (the default) against brms and brms's program.

Independent checks: the program's log density against a dense multivariate normal
computed with scipy; the conditional draws of r against the textbook posterior of a
Gaussian linear model; the posterior against brms's reference run and against
stanhier's non-marginalized (brms's) program.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, stats

import stanhier as sh
from conftest import quiet_brm
from stanhier.bayes.marginal import draw_group_effects
from stanhier.stan.codegen import build_model
from stanhier.stan.marginal import marginal_layout

SLEEP_F = "Reaction ~ Days + (Days | Subject)"
PEN_F = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def _dense_marginal_loglik(spec, p: dict) -> float:
    """log N(y | X beta, sigma^2 I + Z Sigma Z') with dense matrices (N x N), from the constrained values."""
    d = spec.design
    X = d.X
    beta = np.concatenate([[float(p["b_Intercept"])], np.atleast_1d(p["b"])]) if d.has_intercept else p["b"]
    V = float(p["sigma"]) ** 2 * np.eye(d.N)
    for k, gt in enumerate(d.terms, start=1):
        sd = np.atleast_1d(p[f"sd_{k}"])
        L = np.atleast_2d(p[f"L_{k}"]) if gt.correlated else np.eye(gt.M)
        Sk = (sd[:, None] * L) @ (sd[:, None] * L).T
        same = gt.J[:, None] == gt.J[None, :]
        V += same * (gt.Z @ Sk @ gt.Z.T)
    return float(stats.multivariate_normal(X @ beta, V).logpdf(d.y))


@pytest.mark.parametrize("formula, fixture, function", [
    (SLEEP_F, "sleep", "marginal_gaussian_q2_lpdf"),  # 2 x 2 blocks, full Lambda: closed form
    ("Reaction ~ Days + (1 | Subject)", "sleep", "marginal_gaussian_q1_lpdf"),  # 1 x 1 blocks: closed form
    ("Reaction ~ Days + (Days + D2 | Subject)", "sleep", "marginal_gaussian_lpdf"),  # 3 x 3 blocks: the loop
    (PEN_F, "penicillin", "marginal_gaussian_lpdf")])  # dense layout, diagonal Lambda: the loop
@pytest.mark.pystan  # names pystan: runs once
def test_log_density_is_the_exact_marginal(formula, fixture, function, request):
    data = request.getfixturevalue(fixture)
    if "D2" in formula:
        data = data.assign(D2=(data["Days"] - 4.5) ** 2)
    spec = build_model(formula, data)
    assert spec.structure.marginal and f"target += {function}(" in spec.code
    dens = sh.backends.get_backend("pystan").compile(spec.code, progress=False).log_density(spec.standata())
    rng = np.random.default_rng(5)
    for _ in range(3):
        theta = rng.normal(0, 1, dens.n_params)
        theta[0] += 1.0
        p = dens.constrain(theta)
        lp = dens.log_prob(theta, jacobian=False)
        # lp holds the log Jacobian of sigma = exp(log_sigma) (the program's, not Stan's own)
        assert lp - float(p["lprior"]) - np.log(float(p["sigma"])) == pytest.approx(_dense_marginal_loglik(spec, p), rel=1e-9, abs=1e-6)


@pytest.mark.engine_free  # no Stan program runs
def test_conditional_draws_match_the_gaussian_posterior(sleep):
    """One parameter value repeated 20,000 times: sample moments of r vs (Z'Z/s^2 + Sigma^-1)^-1."""
    spec = build_model(SLEEP_F, sleep)
    d, gt = spec.design, spec.design.terms[0]
    S = 20_000
    b, icpt, sigma, sd, rho = 10.0, 280.0, 25.0, np.array([25.0, 6.0]), 0.3
    L = np.array([[1.0, 0.0], [rho, np.sqrt(1 - rho ** 2)]])
    draws = {"b": np.full((2, S // 2, 1), b), "Intercept": np.full((2, S // 2), icpt),
             "sigma": np.full((2, S // 2), sigma), "sd_1": np.broadcast_to(sd, (2, S // 2, 2)),
             "L_1": np.broadcast_to(L, (2, S // 2, 2, 2))}
    r = draw_group_effects(spec, draws, seed=3)["r_1"].reshape(S, gt.n_levels * 2)
    # textbook posterior with the full (N x 36) Z
    Zfull = np.zeros((d.N, gt.n_levels * 2))
    for m in range(2):
        Zfull[np.arange(d.N), gt.J * 2 + m] = gt.Z[:, m]
    Sigma = np.kron(np.eye(gt.n_levels), (sd[:, None] * L) @ (sd[:, None] * L).T)
    mean_x = d.X[:, 1].mean()
    resid = d.y - (icpt - b * mean_x) - b * d.X[:, 1]
    prec = Zfull.T @ Zfull / sigma ** 2 + linalg.inv(Sigma)
    cov = linalg.inv(prec)
    mean = cov @ Zfull.T @ resid / sigma ** 2
    se = np.sqrt(np.diag(cov) / S)
    assert np.max(np.abs(r.mean(0) - mean) / se) < 4.5
    np.testing.assert_allclose(np.cov(r.T), cov, atol=0.05 * np.sqrt(np.outer(np.diag(cov), np.diag(cov))).max())
    # reproducible from the seed, different for another seed
    again = draw_group_effects(spec, draws, seed=3)["r_1"].reshape(S, -1)
    np.testing.assert_array_equal(again, r)
    assert not np.array_equal(draw_group_effects(spec, draws, seed=4)["r_1"].reshape(S, -1), r)


@pytest.mark.engine_free  # no Stan program runs
def test_program_choice(sleep, penicillin, fish):
    assert build_model(SLEEP_F, sleep).structure.marginal == "blocks"
    assert build_model(PEN_F, penicillin).structure.marginal == "dense"
    # the closed form is chosen by the block size (structure), never by the data
    assert build_model(SLEEP_F, sleep).structure.block_size == 2
    assert build_model(SLEEP_F, sleep.head(30)).code == build_model(SLEEP_F, sleep).code
    assert build_model(PEN_F, penicillin).structure.block_size == 0
    assert not build_model(SLEEP_F, sleep, marginalize=False).structure.marginal
    assert build_model(SLEEP_F, sleep, sufficient_stats=True).code == build_model(SLEEP_F, sleep).code
    assert not build_model("fish_num ~ temperature + (1 | weather)", fish, "poisson").structure.marginal
    with pytest.raises(sh.ArgumentError, match="marginalize=True"):
        build_model("fish_num ~ temperature + (1 | weather)", fish, "poisson", marginalize=True)
    # crossed factors with too many effects in the stacked block: brms's program
    rng = np.random.default_rng(1)
    big = pd.DataFrame({"y": rng.normal(size=2000), "a": rng.integers(0, 150, 2000),
                        "c": rng.integers(0, 100, 2000)})
    assert marginal_layout(build_model("y ~ 1 + (1 | a) + (1 | c)", big, marginalize=False).design) is None
    assert not build_model("y ~ 1 + (1 | a) + (1 | c)", big).structure.marginal
    assert "marginalize=False" not in sh.make_stancode(SLEEP_F, sleep)


def test_sleepstudy_matches_brms(sleep_fit, bayes_ref):
    """Every parameter brms prints within 0.1 posterior SD of brms's reference run (4 x 2000 draws)."""
    assert sleep_fit.spec.structure.marginal == "blocks"
    t = sleep_fit.summary_table()
    for row in bayes_ref["sleepstudy"]["parameters"]:
        name = row["variable"]
        assert abs(t.loc[name, "Estimate"] - row["mean"]) < 0.1 * row["sd"], name
        assert abs(t.loc[name, "Est.Error"] - row["sd"]) < 0.1 * row["sd"], name
    d = sleep_fit.diagnostics()
    assert d["divergent_transitions"] == 0 and d["max_rhat"] < 1.01 and d["min_bulk_ess"] > 1000
    assert "integrated out" in str(sleep_fit)


def _r_compare(a, b, tol=0.15):
    ra, rb = a.ranef(), b.ranef()
    for g in rb:
        for coef in rb[g].columns.get_level_values(0).unique():
            ea, eb = ra[g][(coef, "Estimate")], rb[g][(coef, "Estimate")]
            sa, sb = ra[g][(coef, "Est.Error")], rb[g][(coef, "Est.Error")]
            assert np.max(np.abs(ea - eb) / sb) < tol, (g, coef, np.max(np.abs(ea - eb) / sb))
            assert np.max(np.abs(sa - sb) / sb) < tol, (g, coef, np.max(np.abs(sa - sb) / sb))


def test_sleepstudy_group_effects_match_brms_program(sleep, sleep_fit):
    """r_Subject per-level means and SDs within 0.15 posterior SD of brms's (non-marginalized) program."""
    full = quiet_brm(SLEEP_F, data=sleep, chains=4, iter=3000, warmup=1000, seed=2, marginalize=False)
    assert not full.spec.structure.marginal and full.diagnostics()["divergent_transitions"] < 10
    _r_compare(sleep_fit, full)
    # downstream: coef, predictions and the conditional log_lik work on the marginalized fit
    assert sleep_fit.idata.posterior["r_Subject"].shape[-2:] == (18, 2)
    assert sleep_fit.idata.log_likelihood["log_lik"].shape[-1] == 180
    np.testing.assert_allclose(sleep_fit.coef()["Subject"][("Days", "Estimate")],
                               full.coef()["Subject"][("Days", "Estimate")],
                               atol=0.15 * full.ranef()["Subject"][("Days", "Est.Error")].min())


def test_penicillin_crossed_matches_brms_program(penicillin):
    marg = quiet_brm(PEN_F, data=penicillin, chains=4, iter=2000, seed=1)
    full = quiet_brm(PEN_F, data=penicillin, chains=4, iter=3000, warmup=1000, seed=1, marginalize=False)
    assert marg.spec.structure.marginal == "dense"
    a, b = marg.summary_table(), full.summary_table()
    for name in b.index:
        assert abs(a.loc[name, "Estimate"] - b.loc[name, "Estimate"]) < 0.1 * b.loc[name, "Est.Error"], name
    assert marg.diagnostics()["min_bulk_ess"] > 1000
    _r_compare(marg, full)
