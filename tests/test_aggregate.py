"""Exact aggregation of count data for glmer (issue 12): same fit as on the raw rows, and lme4's
numbers on the raw rows (tests/reference/aggregation_reference.json, made by
tests/reference/make_aggregation_reference.R)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.errors import ArgumentError, StanhierWarning

from conftest import DATA, REF


@pytest.fixture(scope="module")
def agg_ref():
    return json.loads((REF / "aggregation_reference.json").read_text())


@pytest.fixture(scope="module")
def cbpp_rows():
    """lme4's cbpp as one 0/1 row per animal (842 rows), as the R script builds it."""
    cbpp = pd.read_csv(DATA / "cbpp.csv")
    rows = [(r.herd, r.period, y) for r in cbpp.itertuples()
            for y in [1] * r.incidence + [0] * (r.size - r.incidence)]
    return pd.DataFrame(rows, columns=["herd", "period", "y"]).astype({"herd": str, "period": str})


@pytest.fixture(scope="module")
def counts():
    return pd.read_csv(DATA / "poisson_counts.csv")


def _check_lme4(fit, ref, rel_fixef=1e-3):
    # lme4's glmer optimizer stops a little short of the optimum (stanhier's logLik is higher by
    # ~3e-4 on cbpp, aggregated or not): the tolerances are lme4's, the aggregation is checked exactly below
    assert fit.nobs() == ref["nobs"]
    assert fit.logLik() == pytest.approx(ref["logLik"], abs=1e-3)
    assert fit.fixef().to_numpy() == pytest.approx(list(ref["fixef"].values()), rel=rel_fixef, abs=1e-5)
    assert list(fit.fixef().index) == list(ref["fixef"])
    assert fit.theta == pytest.approx(np.atleast_1d(ref["theta"]), rel=1e-3)


def test_bernoulli_rows_aggregated_match_lme4(cbpp_rows, agg_ref):
    fit = sh.glmer("y ~ period + (1 | herd)", cbpp_rows, family="bernoulli")
    assert fit.aggregation is not None and fit.aggregation.n_patterns == 56
    assert "842 rows aggregated exactly into 56 patterns" in str(fit)
    _check_lme4(fit, agg_ref["cbpp_bernoulli_rows"])
    # the constants added back are lme4's: (842 Bernoulli rows) - (56 binomial rows) is the same difference
    cbpp = pd.read_csv(DATA / "cbpp.csv").astype({"herd": str, "period": str})
    binom = sh.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    assert binom.aggregation is None  # 56 rows, 56 patterns: no shrink
    assert fit.logLik() - binom.logLik() == pytest.approx(
        agg_ref["cbpp_bernoulli_rows"]["logLik"] - agg_ref["cbpp_binomial"]["logLik"], abs=1e-6)


def test_poisson_aggregated_matches_lme4_and_raw(counts, agg_ref):
    fit = sh.glmer("y ~ a + b + (1 | g)", counts, family="poisson")
    assert fit.aggregation is not None and fit.aggregation.n_patterns == 90
    _check_lme4(fit, agg_ref["poisson_counts"])
    raw = sh.glmer("y ~ a + b + (1 | g)", counts, family="poisson", aggregate=False)
    assert raw.aggregation is None and "Aggregated" not in str(raw)
    assert fit.logLik() == pytest.approx(raw.logLik(), rel=1e-8)
    assert fit.fixef().to_numpy() == pytest.approx(raw.fixef().to_numpy(), rel=1e-5, abs=1e-7)
    assert fit.deviance() == pytest.approx(raw.deviance(), rel=1e-5)
    assert len(fit.residuals()) == len(counts)  # residuals stay per raw row


def test_binomial_trials_aggregated_equal_raw():
    rng = np.random.default_rng(3)
    n = 2000
    g, a = rng.integers(0, 8, n), rng.integers(0, 3, n)
    size = rng.integers(1, 6, n)
    s = rng.binomial(size, 1 / (1 + np.exp(-(-0.4 + 0.5 * a + rng.normal(size=8)[g]))))
    df = pd.DataFrame({"s": s, "f": size - s, "a": np.char.add("a", a.astype(str)), "g": g})
    agg = sh.glmer("cbind(s, f) ~ a + (1 | g)", df, family="binomial", aggregate=True)
    raw = sh.glmer("cbind(s, f) ~ a + (1 | g)", df, family="binomial", aggregate=False)
    assert agg.aggregation.n_patterns <= 24
    assert agg.logLik() == pytest.approx(raw.logLik(), rel=1e-8)
    assert agg.fixef().to_numpy() == pytest.approx(raw.fixef().to_numpy(), rel=1e-5, abs=1e-7)


@pytest.mark.engine_free  # no Stan program runs
def test_no_aggregation_when_it_does_not_shrink(counts):
    rng = np.random.default_rng(0)
    df = counts.assign(x=rng.normal(size=len(counts)))  # a continuous predictor: every row its own pattern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanhierWarning)
        fit = sh.glmer("y ~ x + (1 | g)", df, family="poisson")
    assert fit.aggregation is None
    with pytest.raises(ArgumentError, match="aggregate"):
        sh.glmer("y ~ a + (1 | g)", counts, family="poisson", aggregate="yes")
