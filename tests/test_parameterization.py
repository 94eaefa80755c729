"""parameterization="auto": the rule on data with known answers; the choice printed and recorded.

How the seed model samples with defaults over several seeds is measured in benchmarks/bench_bayes.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import stanhier as sh
from stanhier.bayes.parameterization import term_choices
from stanhier.stan.codegen import build_model



def _poisson(n_groups: int, per: int, sd: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    u = rng.normal(0, sd, n_groups)
    return pd.DataFrame({"y": rng.poisson(np.exp(0.5 + u[g])), "g": g})


@pytest.mark.engine_free  # no Stan program runs
def test_rule_follows_the_information_ratio():
    # the centred / non-centred rule decides where the conditional treatment is unavailable: here the
    # intercept belongs to no group-level term ('one' is a column of ones, a random intercept by another name)
    def fit(n_groups, per, sd):
        return build_model("y ~ 1 + (0 + one | g)", _poisson(n_groups, per, sd).assign(one=1.0), "poisson")
    # 200 levels, 2 counts each, small spread: the prior dominates each level -> non-centred
    weak = fit(200, 2, 0.2)
    assert [c.choice for c in term_choices(weak)] == ["noncentered"]
    # 8 levels, 300 counts each: the data dominate -> centred
    strong = fit(8, 300, 0.5)
    assert [c.choice for c in term_choices(strong)] == ["centered"]
    assert strong.structure.terms == ((False, "centered"),) and "z_1" not in strong.code
    # forced choices are kept, and name themselves as requested
    forced = build_model("y ~ 1 + (1 | g)", _poisson(8, 300, 0.5), "poisson", parameterization="noncentered")
    assert forced.structure.terms == ((False, "noncentered"),) and "requested" in term_choices(forced)[0].reason
    with pytest.raises(sh.ArgumentError, match="parameterization"):
        build_model("y ~ 1 + (1 | g)", _poisson(8, 30, 0.5), "poisson", parameterization="partial")


@pytest.mark.engine_free  # no Stan program runs
def test_conditional_where_the_link_allows_it():
    df = _poisson(8, 30, 0.5)
    df["x"] = np.random.default_rng(3).normal(size=len(df))
    for formula in ("y ~ 1 + (1 | g)", "y ~ x + (x | g)", "y ~ 0 + x + (x || g)"):
        spec = build_model(formula, df, "poisson")
        assert [tr for _, tr in spec.structure.terms] == ["conditional"], formula
    # the intercept in no group-level term: the centred / non-centred rule decides
    spec = build_model("y ~ x + (0 + x | g)", df, "poisson")
    assert spec.structure.terms[0][1] in ("centered", "noncentered")
    assert "intercept belongs to no group-level term" in term_choices(spec)[0].reason
    with pytest.raises(sh.ArgumentError, match="log or logit link"):
        build_model("y ~ 1 + (1 | g)", df, "gaussian", parameterization="conditional", marginalize=False)


@pytest.mark.engine_free  # no Stan program runs
def test_conditional_pilot_is_each_levels_likelihood():
    """The data of the conditional program: for a Poisson intercept term, level j's likelihood in
    its log mean beta_j is approximated by N(s_j / I_j, 1 / I_j): I_j = sum(mu) over its rows at the
    pilot fit (close to the level's total count: the pilot's ridge barely pulls 300 counts) and
    s_j / I_j one Newton step from the pilot towards the level's own estimate, log(mean count)."""
    from stanhier.families import get_family
    from stanhier.model.parameterization import conditional_pilot

    df = _poisson(8, 300, 0.5)
    spec = build_model("y ~ 1 + (1 | g)", df, "poisson")
    pilot = conditional_pilot(spec.design, get_family("poisson"))
    totals = df.groupby("g").y.sum().to_numpy()
    np.testing.assert_allclose(pilot.info[0][:, 0, 0], totals, rtol=0.01)
    np.testing.assert_allclose(pilot.s[0][:, 0] / pilot.info[0][:, 0, 0], np.log(totals / 300), atol=1e-4)
    assert pilot.anchored[0].tolist() == [1] and pilot.free.tolist() == []
    assert spec.standata()["Ka"] == 1


def test_conditional_program_samples_the_same_posterior(engine):
    """The conditional program is a change of variables of brms's: its posterior (population-level
    effects, SDs, correlation and each level's effects) agrees with the centred program's within
    Monte Carlo error, on data where the centred program samples well (12 levels, 40 counts each)."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(12), 40)
    x = rng.normal(size=g.size)
    u = rng.multivariate_normal([0, 0], [[0.25, 0.05], [0.05, 0.09]], 12)
    df = pd.DataFrame({"y": rng.poisson(np.exp(0.7 + u[g, 0] + (0.3 + u[g, 1]) * x)), "x": x, "g": g})
    fits = [sh.brm("y ~ x + (x | g)", df, "poisson", parameterization=p, chains=4, iter=1500, seed=7,
                   progress=False) for p in ("conditional", "centered")]
    a, b = (f.summary_table() for f in fits)
    for name in a.index:
        mcse = np.hypot(*(t.loc[name, "Est.Error"] / np.sqrt(t.loc[name, "Bulk_ESS"]) for t in (a, b)))
        assert abs(a.loc[name, "Estimate"] - b.loc[name, "Estimate"]) < 4.5 * mcse, name
    ra, rb = (f.ranef()["g"] for f in fits)
    for coef in ("Intercept", "x"):  # each level's mean within 0.15 posterior SD (~4 MC-SE at ESS ~ 1000)
        diff = np.abs(ra[(coef, "Estimate")] - rb[(coef, "Estimate")])
        assert np.all(diff < 0.15 * rb[(coef, "Est.Error")]), (coef, diff.max())


def _conditional_log_density(spec, p: dict) -> tuple[float, list[np.ndarray]]:
    """brms's log density of (y, b, r) plus the log Jacobian of the conditional change of variables,
    recomputed with numpy from the sampled coordinates (b_f, eps_k, z_k, sd_k, L_k) in the general form
    of stanhier.model.parameterization (a Cholesky factor and solves per level); also the r_k."""
    d, data = spec.design, spec.standata()
    b_all = np.zeros(d.X.shape[1])
    b_all[data["Jf"] - 1] = np.atleast_1d(p["b_f"])
    log_jac, rs, lp_r = 0.0, [], 0.0
    for k, gt in enumerate(d.terms, start=1):
        sd = np.atleast_1d(p[f"sd_{k}"])
        Lsd = sd[:, None] * (np.atleast_2d(p[f"L_{k}"]) if gt.correlated else np.eye(gt.M))
        Sigma = Lsd @ Lsd.T
        s, info, Jb, Ma = data[f"s_{k}"], data[f"I_{k}"], data[f"Jb_{k}"], data[f"Ma_{k}"] - 1
        Lc = [np.linalg.cholesky(np.linalg.inv(Sigma) + Ij) for Ij in info]
        V = [np.linalg.inv(L @ L.T) for L in Lc]
        bm = np.where(Jb > 0, b_all[Jb - 1], 0.0)
        if len(Ma):
            bm[Ma] = 0.0
            W = [Ij - Ij @ Vj @ Ij for Ij, Vj in zip(info, V)]
            P = sum(Wj[np.ix_(Ma, Ma)] for Wj in W)
            Pb = sum((sj - Ij @ Vj @ sj - Wj @ bm)[Ma] for sj, Ij, Vj, Wj in zip(s, info, V, W))
            Lp = np.linalg.cholesky(P)
            bm[Ma] = np.linalg.solve(P, Pb) + np.linalg.solve(Lp.T, np.atleast_1d(p[f"eps_{k}"]))
            b_all[Jb[Ma] - 1] = bm[Ma]
            log_jac -= np.log(np.diag(Lp)).sum()
        z = np.atleast_2d(p[f"z_{k}"]).reshape(gt.M, gt.n_levels)
        r = np.array([Vj @ (sj - Ij @ bm) + np.linalg.solve(L.T, z[:, j])
                      for j, (sj, Ij, Vj, L) in enumerate(zip(s, info, V, Lc))])
        log_jac -= sum(np.log(np.diag(L)).sum() for L in Lc)
        lp_r += stats.multivariate_normal(np.zeros(gt.M), Sigma).logpdf(r).sum()
        rs.append(r)
    eta = d.X @ b_all + sum(np.sum(gt.Z * r[gt.J], axis=1) for gt, r in zip(d.terms, rs))
    loglik = stats.poisson(np.exp(eta)).logpmf(d.y).sum()
    return loglik + lp_r + float(p["lprior"]) + log_jac, rs


@pytest.mark.parametrize("formula", [
    # M = 1 anchoring the intercept, M = 2 uncorrelated anchoring one slope, M = 3 (the general
    # loops) anchoring the other two, M = 1 anchoring nothing
    "y ~ x + x2 + x3 + (1 | g1) + (x || g2) + (x2 + x3 | g3) + (1 | g4)",
    "fish_num ~ 1 + temperature + (temperature | weather)"])  # M = 2 correlated anchoring both
@pytest.mark.pystan  # names pystan: runs once
def test_conditional_log_density_is_the_general_change_of_variables(formula, fish):
    """The program writes terms of 1 or 2 coefficients per level as scalar arithmetic; its log density
    and r equal numpy's general-form change of variables at random unconstrained points. The program's
    values do not depend on the engine; pystan evaluates them (CmdStan's constrain() does not read
    Cholesky factors of correlation matrices), once compiled for both halves of the session."""
    if formula.startswith("y"):
        rng = np.random.default_rng(3)
        df = pd.DataFrame({"x": rng.normal(size=120), "x2": rng.normal(size=120), "x3": rng.normal(size=120),
                           **{f"g{i}": rng.integers(0, n, 120) for i, n in enumerate((6, 5, 4, 3), start=1)}})
        df["y"] = rng.poisson(np.exp(0.5 + 0.3 * df.x - 0.2 * df.x2 + 0.4 * rng.normal(size=6)[df.g1]))
    else:
        df = fish
    spec = build_model(formula, df, "poisson", parameterization="conditional")
    closed = [m for m in spec.structure.closed_m]
    assert closed == ([1, 2, 0, 1] if formula.startswith("y") else [2])
    assert [len(a) for a in (spec.standata()[f"Ma_{k}"] for k in range(1, len(closed) + 1))] == \
        ([1, 1, 2, 0] if formula.startswith("y") else [2])
    dens = sh.backends.get_backend("pystan").compile(spec.code, progress=False).log_density(spec.standata())
    rng = np.random.default_rng(11)
    for _ in range(3):
        theta = rng.normal(0, 0.5, dens.n_params)
        p = dens.constrain(theta)
        lp, rs = _conditional_log_density(spec, p)
        assert dens.log_prob(theta, jacobian=False) == pytest.approx(lp, rel=1e-10, abs=1e-8)
        for k, r in enumerate(rs, start=1):
            np.testing.assert_allclose(np.asarray(p[f"r_{k}"]).reshape(r.shape), r, rtol=1e-9, atol=1e-12)


def test_choice_printed_and_recorded(fish_fit, tmp_path):
    assert "Group-level effects: (Intercept + temperature | weather) conditional" in str(fish_fit)
    fish_fit.save(tmp_path / "run")
    import json

    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["parameterization"] == "auto" and rec["group_effects"][0]["choice"] == "conditional"
    assert sh.load(tmp_path / "run").summary() == fish_fit.summary()
    # no adapt_delta given: a conditional program samples at 0.9 (CONDITIONAL_ADAPT_DELTA), recorded
    assert rec["settings"]["adapt_delta"] == 0.9 == fish_fit.raw.settings.adapt_delta
