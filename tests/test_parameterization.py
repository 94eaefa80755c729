"""parameterization="auto": the rule on data with known answers; the choice printed and recorded.

How the seed model samples with defaults over several seeds is measured in benchmarks/bench_bayes.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.bayes.parameterization import term_choices
from stanhier.stan.codegen import build_model



def _poisson(n_groups: int, per: int, sd: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    u = rng.normal(0, sd, n_groups)
    return pd.DataFrame({"y": rng.poisson(np.exp(0.5 + u[g])), "g": g})


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


def test_choice_printed_and_recorded(fish_fit, tmp_path):
    assert "Group-level effects: (Intercept + temperature | weather) conditional" in str(fish_fit)
    fish_fit.save(tmp_path / "run")
    import json

    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["parameterization"] == "auto" and rec["group_effects"][0]["choice"] == "conditional"
    assert sh.load(tmp_path / "run").summary() == fish_fit.summary()
    # no adapt_delta given: a conditional program samples at 0.9 (CONDITIONAL_ADAPT_DELTA), recorded
    assert rec["settings"]["adapt_delta"] == 0.9 == fish_fit.raw.settings.adapt_delta
