"""The lme4-style printout compared with lme4's own, line by line.

The references are lme4's ``print(summary(m))`` (``tests/reference/lme4_printout_*.txt``,
written by ``tests/reference/lme4_printout.R``). Every line must have lme4's layout: the
same words, the same width, and each number printed with lme4's precision (the same
decimals per column, R's ``format`` rules); numbers agree with lme4's within a tolerance
(the two optimizers stop at slightly different points of a flat likelihood).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

import stanhier as sh
from stanhier.ml.printing import abbreviate, format_pvals, r_format

REF = Path(__file__).parent / "reference"
DATA = Path(__file__).parent / "data"
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]\d+)?$")


def _reference(name: str) -> list[str]:
    lines = (REF / f"lme4_printout_{name}.txt").read_text().splitlines()
    return [ln.rstrip() for ln in lines if not ln.startswith("# R version")]


def _shape(token: str) -> tuple:
    """How a number is printed: decimals and notation (not its value)."""
    mant, _, exp = token.partition("e")
    return ("." in mant, len(mant.split(".")[1]) if "." in mant else 0, bool(exp))


def compare_printout(ours: str, name: str, rtol: float, loose: tuple[str, ...] = ()) -> None:
    """Line by line: same line widths and words; numbers printed alike and within ``rtol``
    (or 2 units of the last printed digit). Lines starting with a ``loose`` prefix compare
    the layout and number formats only."""
    ref = _reference(name)
    got = [ln.rstrip() for ln in ours.rstrip("\n").splitlines()]
    got = [ln for ln in got if not ln.startswith(("Warning: ", "Evaluator: "))]  # stanhier's own lines
    assert len(got) == len(ref), "\n".join(got)
    for a, b in zip(got, ref):
        assert len(a) == len(b), f"width differs:\nours: {a!r}\nlme4: {b!r}"
        ta, tb = a.split(), b.split()
        assert len(ta) == len(tb), f"\nours: {a!r}\nlme4: {b!r}"
        for x, y in zip(ta, tb):
            if NUMBER.match(y.lstrip("<")) and NUMBER.match(x.lstrip("<")):
                assert _shape(x) == _shape(y), f"number printed differently: {x} vs lme4 {y}\n{a}\n{b}"
                if any(b.lstrip().startswith(p) for p in loose):
                    continue
                vx, vy = float(x.lstrip("<")), float(y.lstrip("<"))
                last = 10.0 ** -_shape(y)[1] if not _shape(y)[2] else abs(vy) * 10.0 ** -(len(y.split("e")[0]) - 2)
                assert abs(vx - vy) <= max(2 * last, rtol * abs(vy)), f"{x} vs lme4 {y}\n{a}\n{b}"
            else:
                assert x == y, f"\nours: {a!r}\nlme4: {b!r}"


@pytest.fixture(scope="module")
def sleepstudy() -> pd.DataFrame:
    return pd.read_csv(DATA / "sleepstudy.csv")


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.engine_free  # no Stan program runs
def test_sleepstudy_reml_printout_is_lme4s(sleepstudy, engine):
    m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert m.data_name == "sleepstudy"  # the caller's name for the data frame, as R's Data: line
    compare_printout(str(m), "sleepstudy_REML", rtol=1e-4)


@pytest.mark.engine_free  # no Stan program runs
def test_sleepstudy_ml_printout_is_lme4s(sleepstudy, engine):
    m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, REML=False)
    compare_printout(str(m), "sleepstudy_ML", rtol=2e-4)


@pytest.mark.engine_free  # no Stan program runs
def test_uncorrelated_printout_is_lme4s(sleepstudy, engine):
    """`||`: lme4 prints the expanded formula and one group per coefficient (Subject.1)."""
    m = sh.lmer("Reaction ~ Days + (Days || Subject)", sleepstudy)
    compare_printout(str(m), "sleepstudy_uncorrelated", rtol=1e-4)


@pytest.mark.engine_free  # no Stan program runs
def test_glmer_printout_is_lme4s(engine):
    """p-values, significance stars and the wrapped title. Standard errors come from another
    Hessian approximation than lme4's (0.05% apart here), so the z and p columns are compared
    by their format only."""
    fish = pd.read_csv(DATA / "fish.csv")
    m = sh.glmer("fish_num ~ 1 + temperature + (1 | weather)", fish, family="poisson")
    assert m.data_name == "fish"
    compare_printout(str(m), "fish", rtol=2e-3, loose=("(Intercept)", "temperature"))


def test_glmer_scale_family_printout_is_lme4s(engine):
    """A family with a scale (gaussian, log link): lme4's Residual row (sigma from the Pearson
    residuals) and its "t value" column next to Pr(>|z|). The reference is lme4's fit with PIRLS
    to 1e-10 (see lme4_printout.R); stanhier's optimum agrees to 7e-5 relative."""
    fish = pd.read_csv(DATA / "fish.csv").assign(y=lambda d: d["fish_num"] + 1)
    m = sh.glmer("y ~ temperature + (1 | weather)", fish, family="gaussian(link='log')")
    compare_printout(str(m), "fish_gaussian_log", rtol=2e-4)


@pytest.mark.engine_free  # no Stan program runs
def test_r_format_rules():
    """R's format(): decimals from the entry needing most, common width, scientific when narrower."""
    assert r_format([251.405, 10.467, 6.825, 1.546], 4) == ["251.405", " 10.467", "  6.825", "  1.546"]
    assert r_format([0.1250, 0.3536], 4) == ["0.1250", "0.3536"]
    assert r_format([123456789.0], 4) == ["123456789"]
    assert r_format([0.00001234], 4) == ["1.234e-05"]
    assert format_pvals([0.866, 2.86e-14]) == ["0.866", "2.86e-14"]
    assert abbreviate(["(Intercept)", "cHEIGHT", "YEAR96", "YEAR97"], 6) == ["(Intr)", "cHEIGH", "YEAR96", "YEAR97"]
