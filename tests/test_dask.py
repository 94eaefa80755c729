"""Dask input (issue 12): designs built on the cluster, statistics reduced there.

One ``distributed.LocalCluster`` of 2 worker processes serves the module. Every fit on a
Dask DataFrame is compared with the same fit on the equivalent pandas DataFrame.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.errors import DataError, FormulaError, StanhierWarning

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import dask

    # the cluster's scratch space (dask-scratch-space) in the test's folder, not left behind in
    # the system's temporary folder
    with dask.config.set({"temporary-directory": str(tmp_path_factory.mktemp("dask"))}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, memory_limit="1.5GiB")
        cl = distributed.Client(cluster)
        yield cl
        cl.close()
        cluster.close()


def simulate(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x1 = rng.normal(size=n) + 2.0
    x2 = rng.normal(size=n)
    b = rng.normal(size=(groups, 2)) * [1.0, 0.5]
    y = 1 + b[g, 0] + (0.5 + b[g, 1]) * x1 - 0.3 * x2 + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": np.char.add("s", g.astype(str))})


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))


@pytest.fixture(scope="module")
def big(client):
    """The acceptance data: 2,000,000 rows in 20 partitions (and the same rows in pandas)."""
    df = simulate(2_000_000, 500)
    return df, dd.from_pandas(df, npartitions=20)


# --------------------------------------------------------------------------- acceptance
@pytest.mark.slow
@pytest.mark.engine_free  # no Stan program runs
def test_lmer_two_million_rows_matches_pandas(big):
    df, ddf = big
    formula = "y ~ x1 + x2 + (x1 | g)"
    m_pd = sh.lmer(formula, df)
    m_dk = sh.lmer(formula, ddf)
    assert ddf.npartitions == 20 and m_dk.nobs() == 2_000_000
    assert m_dk.design.X.shape[0] == 0 and m_dk.design.distributed  # the client holds no rows
    assert rel(m_pd.fixef(), m_dk.fixef()) < 1e-8
    assert rel(m_pd.theta, m_dk.theta) < 1e-8
    assert rel(m_pd.sigma(), m_dk.sigma()) < 1e-8
    assert rel(m_pd.logLik(), m_dk.logLik()) < 1e-8
    assert rel(np.sqrt(np.diag(m_pd.vcov())), np.sqrt(np.diag(m_dk.vcov()))) < 1e-8
    assert list(m_pd.ranef()["g"].index) == list(m_dk.ranef()["g"].index)
    assert np.allclose(m_pd.ranef()["g"].to_numpy(), m_dk.ranef()["g"].to_numpy(), rtol=1e-7, atol=1e-9)


@pytest.mark.slow
@pytest.mark.engine_free  # brm's data dict only: no program runs
def test_brm_data_identical_to_pandas(big):
    df, ddf = big
    formula = "y ~ x1 + x2 + (x1 | g)"
    d_pd = sh.make_standata(formula, df)
    d_dk = sh.make_standata(formula, ddf)
    assert d_pd.keys() == d_dk.keys()
    for key in d_pd:
        a, b = np.asarray(d_pd[key], float), np.asarray(d_dk[key], float)
        assert a.shape == b.shape, key
        assert np.allclose(a, b, rtol=1e-10, atol=0), key
        # exact sums: identical bit for bit, however the rows are partitioned
        assert np.array_equal(a, b), key


def test_brm_same_draws_for_same_seed(client):
    df = simulate(3000, 12, seed=4)
    ddf = dd.from_pandas(df, npartitions=5)
    kw = dict(chains=1, iter=300, seed=11, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanhierWarning)
        # the structure of the sleepstudy fits (one correlated two-coefficient term): no compile of its own
        f_pd = sh.brm("y ~ x1 + (x1 | g)", df, **kw)
        f_dk = sh.brm("y ~ x1 + (x1 | g)", ddf, **kw)
    for var in ("b_Intercept", "b_x1", "sd_g__Intercept", "sd_g__x1", "cor_g__Intercept__x1", "sigma", "r_g"):
        assert np.array_equal(f_pd.idata.posterior[var].values, f_dk.idata.posterior[var].values), var
    assert "Number of observations: 3000" in str(f_dk)


# --------------------------------------------------------------------------- inputs
@pytest.mark.engine_free  # no Stan program runs
def test_parquet_path_and_glob(client, tmp_path):
    df = simulate(4000, 20, seed=2)
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[rows].to_parquet(tmp_path / f"part{i}.parquet")
    m_pd = sh.lmer("y ~ x1 + (1 | g)", df, REML=False)
    for data in (str(tmp_path / "*.parquet"), str(tmp_path)):
        m = sh.lmer("y ~ x1 + (1 | g)", data, REML=False)
        assert rel(m_pd.fixef(), m.fixef()) < 1e-8 and rel(m_pd.logLik(), m.logLik()) < 1e-8


@pytest.mark.engine_free  # no Stan program runs
def test_level_in_one_partition_and_factor_predictor(client):
    df = simulate(3000, 10, seed=3)
    df["h"] = np.where(np.arange(len(df)) % 3 == 0, "p", "q")
    df.loc[len(df) - 40:, "g"] = "zz_last"  # a group present only in the last partition
    df.loc[len(df) - 20:, "h"] = "r"  # a factor level present only there
    ddf = dd.from_pandas(df, npartitions=6)
    assert (ddf.partitions[0]["g"] == "zz_last").sum().compute() == 0
    m_pd = sh.lmer("y ~ x1 + h + (1 | g)", df)
    m_dk = sh.lmer("y ~ x1 + h + (1 | g)", ddf)
    assert list(m_pd.fixef().index) == list(m_dk.fixef().index) == ["(Intercept)", "x1", "hq", "hr"]
    assert rel(m_pd.fixef(), m_dk.fixef()) < 1e-8
    assert list(m_pd.ranef()["g"].index) == list(m_dk.ranef()["g"].index)
    assert "zz_last" in m_dk.ranef()["g"].index
    # the whole summary, scaled residual quantiles included (Data: names each caller's variable)
    assert str(m_pd).replace("Data: df", "Data: ddf") == str(m_dk)


@pytest.mark.engine_free  # no Stan program runs
def test_interaction_groups_and_crossed_terms(client):
    df = simulate(2000, 6, seed=5)
    rng = np.random.default_rng(0)
    df["a"] = rng.integers(0, 4, len(df))
    df["b"] = np.char.add("b", rng.integers(0, 3, len(df)).astype(str))
    ddf = dd.from_pandas(df, npartitions=4)
    for formula in ("y ~ x1 + (1 | a:b)", "y ~ x1 + (1 | g) + (1 | b)"):
        m_pd, m_dk = sh.lmer(formula, df), sh.lmer(formula, ddf)
        assert m_pd.ngrps().to_dict() == m_dk.ngrps().to_dict()
        assert rel(m_pd.fixef(), m_dk.fixef()) < 1e-8 and rel(m_pd.logLik(), m_dk.logLik()) < 1e-8


@pytest.mark.engine_free  # no Stan program runs
def test_predictions_are_lazy_dask_series(client):
    df = simulate(2000, 8, seed=6)
    ddf = dd.from_pandas(df, npartitions=3)
    m_pd, m_dk = sh.lmer("y ~ x1 + (1 | g)", df), sh.lmer("y ~ x1 + (1 | g)", ddf)
    r = m_dk.residuals()
    assert hasattr(r, "compute")
    assert np.allclose(r.compute().to_numpy(), m_pd.residuals(), atol=1e-9)
    assert np.allclose(m_dk.fitted().compute().to_numpy(), m_pd.fitted(), atol=1e-9)


# --------------------------------------------------------------------------- bad input
def _error(exc_type, fit, data):
    with pytest.raises(exc_type) as info:
        fit(data)
    return str(info.value)


@pytest.mark.engine_free  # no Stan program runs
def test_same_errors_as_pandas(client):
    df = simulate(600, 6, seed=7)
    ddf = dd.from_pandas(df, npartitions=3)
    fit = lambda formula: (lambda data: sh.lmer(formula, data))  # noqa: E731
    # missing column
    assert _error(FormulaError, fit("y ~ x3 + (1 | g)"), df) == _error(FormulaError, fit("y ~ x3 + (1 | g)"), ddf)
    # string response: same message up to the dtype's name (object in pandas, string in Dask)
    bad = df.assign(y=df["y"].astype(str))
    msg_pd = _error(DataError, fit("y ~ x1 + (1 | g)"), bad)
    msg_dk = _error(DataError, fit("y ~ x1 + (1 | g)"), dd.from_pandas(bad, npartitions=3))
    assert msg_pd.split(" but has dtype")[0] == msg_dk.split(" but has dtype")[0]
    assert "must be numeric" in msg_dk
    # infinite values: same count and first row
    inf = df.copy()
    inf.loc[[250, 400], "x1"] = np.inf
    assert _error(DataError, fit("y ~ x1 + (1 | g)"), inf) == \
        _error(DataError, fit("y ~ x1 + (1 | g)"), dd.from_pandas(inf, npartitions=3))


@pytest.mark.engine_free  # no Stan program runs
def test_missing_values_counted_as_in_pandas(client):
    df = simulate(600, 6, seed=8)
    df.loc[[3, 250, 251, 590], "x1"] = np.nan
    df.loc[[250, 500], "g"] = None
    ddf = dd.from_pandas(df, npartitions=3)
    messages = []
    for data in (df, ddf):
        with pytest.warns(StanhierWarning, match="Rows containing NAs") as rec:
            m = sh.lmer("y ~ x1 + (1 | g)", data)
        messages.append([str(w.message) for w in rec if "NAs" in str(w.message)])
        assert m.nobs() == 600 - 5
    assert messages[0] == messages[1] and "5 of 600 rows dropped" in messages[0][0]
    assert _error(DataError, lambda d: sh.lmer("y ~ x1 + (1 | g)", d, na_action="raise"), df) == \
        _error(DataError, lambda d: sh.lmer("y ~ x1 + (1 | g)", d, na_action="raise"), ddf)


@pytest.mark.engine_free  # no Stan program runs
def test_unsupported_cases_are_clear(client):
    df = simulate(500, 5, seed=9)
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(DataError, match="stateful transform"):
        sh.lmer("y ~ center(x1) + (1 | g)", ddf)
    with pytest.raises(sh.errors.ArgumentError, match="Dask data"):
        sh.make_standata("y ~ x1 + (1 | g)", ddf, marginalize=False)


# --------------------------------------------------------------------------- count models
def test_glmer_on_dask_aggregates_on_the_cluster(client):
    from conftest import DATA

    counts = pd.read_csv(DATA / "poisson_counts.csv")
    ddf = dd.from_pandas(counts, npartitions=4)
    m_pd = sh.glmer("y ~ a + b + (1 | g)", counts, family="poisson")
    m_dk = sh.glmer("y ~ a + b + (1 | g)", ddf, family="poisson")
    assert m_dk.aggregation.n_patterns == m_pd.aggregation.n_patterns == 90
    assert m_dk.nobs() == len(counts)
    assert rel(m_pd.logLik(), m_dk.logLik()) < 1e-8
    assert rel(m_pd.fixef(), m_dk.fixef()) < 1e-8
    assert "3,000 rows aggregated exactly into 90 patterns" in str(m_dk)
    with pytest.raises(DataError, match="aggregates the rows exactly"):
        sh.glmer("y ~ a + (1 | g)", ddf, family="negbinomial")
