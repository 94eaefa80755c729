"""confint(): lme4's likelihood-profile intervals (its default method) against lme4's own
(``tests/reference/lme4_confint_sleepstudy.json``, from ``tests/reference/lme4_confint.R``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stanhier as sh

REF = json.loads((Path(__file__).parent / "reference" / "lme4_confint_sleepstudy.json").read_text())


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pd.read_csv(Path(__file__).parent / "data" / "sleepstudy.csv")


def _check(ci: pd.DataFrame, ref: dict, rtol: float = 1e-3) -> None:
    assert list(ci.index) == ref["names"]  # lme4's confint(m, oldNames = FALSE) rows, in its order
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    np.testing.assert_allclose(ci["2.5 %"], ref["lower"], rtol=rtol)
    np.testing.assert_allclose(ci["97.5 %"], ref["upper"], rtol=rtol)


def test_profile_intervals_random_intercept(sleep, engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sh.lmer("Reaction ~ Days + (1 | Subject)", sleep, REML=False)
    _check(m.confint(), REF["ML_intercept"])


def test_profile_intervals_correlated_slope(sleep, engine):
    """SDs, the correlation, sigma and the fixed effects; a REML fit is profiled on its ML
    refit, as lme4 does (lme4's REML and ML intervals agree to 1e-5)."""
    if engine == "cmdstanpy":
        pytest.skip("same profile code as the pystan run; CmdStan evaluates each log density in a new "
                    "process (~2,000 here): the random-intercept case covers this engine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    _check(m.confint(), REF["REML"])
    wald = m.confint(method="Wald")
    assert list(wald.index) == ["(Intercept)", "Days"]
    with pytest.raises(sh.ArgumentError, match="'boot'"):
        m.confint(method="bootstrap")
    with pytest.raises(sh.ArgumentError, match="Unknown parameter"):
        m.confint(parm=["nope"])


# --------------------------------------------------------------------------- parametric bootstrap
BOOT = json.loads((Path(__file__).parent / "reference" / "lme4_confint_boot_sleepstudy.json").read_text())


@pytest.mark.engine_free  # no Stan program runs
def test_percentile_interval_is_boot_ci_perc():
    """boot.ci(type = "perc")'s interpolation between order statistics (boot:::norm.inter), on
    values and levels where it interpolates, hits an order statistic exactly, and runs off the
    ends (n = 10)."""
    from stanhier.ml.boot import percentile_interval

    t = np.asarray(BOOT["norm_inter"]["t"])
    for case in BOOT["norm_inter"]["cases"]:
        got = percentile_interval(t[:int(case["n"])], case["level"])
        np.testing.assert_allclose(got, case["interval"], rtol=1e-12)


@pytest.fixture(scope="module")
def sleep_ml(sleep, engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sh.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False, progress=False)


def test_boot_intervals_reproducible_across_cores(sleep_ml, capfd):
    """The same seed gives the same intervals, whether one or two processes refit; another
    seed gives others; one progress bar is shown."""
    one = sleep_ml.confint(method="boot", nsim=16, seed=3, cores=1, progress=False)
    two = sleep_ml.confint(method="boot", nsim=16, seed=3, cores=2)
    err = capfd.readouterr().err
    assert "Parametric bootstrap done: 100%" in err and "16/16 refits" in err
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(one.attrs["boot"], two.attrs["boot"])
    assert list(one.index) == BOOT["ML"]["names"] and one.attrs["seed"] == 3
    other = sleep_ml.confint(method="boot", nsim=16, seed=4, parm=["sigma"], progress=False)
    assert list(other.index) == ["sigma"] and other.iloc[0, 0] != one.loc["sigma"].iloc[0]
    with pytest.raises(sh.ArgumentError, match="nsim"):
        sleep_ml.confint(method="boot", nsim=1)
    with pytest.raises(sh.ArgumentError, match="cores"):
        sleep_ml.confint(method="boot", nsim=4, cores=0)
    with pytest.raises(sh.ArgumentError, match="Unknown parameter"):
        sleep_ml.confint(method="boot", nsim=4, parm=["sd_Weeks|Subject"])


def test_boot_intervals_match_lme4(sleep_ml, engine):
    """nsim = 200 percentile intervals against lme4's with nsim = 4000 (its Monte Carlo error is
    ~4.5x smaller than ours). Tolerance from the order statistics of our 200 refitted values:
    the p-quantile of the bootstrap distribution lies between X_(a) and X_(b), a and b the
    0.05% and 99.95% points of Binomial(200, p), with probability >= 99.9% (distribution free),
    so a correct simulation fails one of the 12 endpoints with probability ~1% for a random
    seed (the seed is fixed, so the test is deterministic). A wrongly scaled simulation (e.g.
    b drawn with Lambda instead of sigma * Lambda) moves the SD endpoints far outside."""
    if engine == "cmdstanpy":
        pytest.skip("the same bootstrap code as the pystan run (only the log density's engine differs, "
                    "checked by the reproducibility test); 200 refits take ~60 s on CmdStan")
    from scipy import stats

    ci = sleep_ml.confint(method="boot", nsim=200, seed=1, cores=2, progress=False)
    boot = ci.attrs["boot"]
    assert np.isfinite(boot.to_numpy()).all()
    ref = BOOT["ML"]
    for name, lo, hi in zip(ref["names"], ref["lower"], ref["upper"]):
        t = np.sort(boot[name].to_numpy())
        for p, ours, theirs in ((0.025, ci.loc[name, "2.5 %"], lo), (0.975, ci.loc[name, "97.5 %"], hi)):
            a = int(stats.binom.ppf(0.0005, 200, p))      # X_(a), 1-based; a = 0: no lower limit
            b = int(stats.binom.ppf(0.9995, 200, p)) + 1
            below = t[a - 1] if a >= 1 else -np.inf
            above = t[b - 1] if b <= 200 else np.inf
            assert below <= theirs <= above, (name, p, ours, theirs, below, above)
            assert below <= ours <= above


def test_boot_glmer_on_aggregated_patterns_equals_rows(engine):
    """A count glmer fitted on its aggregated patterns is refitted on the patterns of each
    simulated response: the same intervals as refitting the rows (aggregation is exact)."""
    fish = pd.read_csv(Path(__file__).parent / "data" / "fish.csv")
    fish["weather"] = (fish["weather"] == "sunny").astype(int)
    out = []
    for aggregate in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = sh.glmer("fish_num ~ temperature + (1 | weather)", fish, family="poisson", aggregate=aggregate,
                         progress=False)
            assert (g.aggregation is not None) == aggregate
            out.append(g.confint(method="boot", nsim=6, seed=2, progress=False))
    assert list(out[0].index) == ["sd_(Intercept)|weather", "(Intercept)", "temperature"]
    np.testing.assert_allclose(out[0].iloc[1:], out[1].iloc[1:], rtol=1e-4)
    np.testing.assert_allclose(out[0].iloc[0], out[1].iloc[0], rtol=1e-4, atol=1e-6)  # SD: may be ~0
