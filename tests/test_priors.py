"""Default priors equal brms's get_prior (tests/reference/bayes_reference.json); user priors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import stanhier as sh

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleep", "gaussian"),
    "fish_slope_corr": ("fish_num ~ 1 + temperature + (temperature | weather)", "fish", "poisson"),
    "fish_slope_uncorr": ("fish_num ~ 1 + temperature + (temperature || weather)", "fish", "poisson"),
}


def parse_r_table(text: str) -> list[dict]:
    """Parse R's printed data frame (right-aligned columns) of get_prior."""
    lines = text.splitlines()
    header = lines[0]
    names, ends, pos = [], [], 0
    for name in header.split():
        start = header.index(name, pos)
        pos = start + len(name)
        names.append(name)
        ends.append(pos)
    rows = []
    for line in lines[1:]:
        if line.strip() == "source":
            break
        cells, prev = {}, 0
        for name, end in zip(names, ends):
            cells[name] = line[prev:end].strip()
            prev = end
        rows.append(cells)
    return rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_priors_match_brms(case, bayes_ref, request):
    formula, data_fixture, family = CASES[case]
    data = request.getfixturevalue(data_fixture)
    ours = sh.get_prior(formula, data=data, family=family)
    ref = parse_r_table(bayes_ref[case]["get_prior_text"])
    assert len(ours) == len(ref)
    for (_, row), r in zip(ours.iterrows(), ref):
        assert (row["prior"], row["class"], row["coef"], row["group"], row["lb"]) == (
            r["prior"], r["class"], r["coef"], r["group"], r["lb"])


def test_user_prior_changes_data_not_code(sleep):
    f = "Reaction ~ Days + (Days | Subject)"
    p1 = [sh.prior("normal(0, 10)", class_="b", coef="Days")]
    p2 = [sh.prior("normal(5, 2)", class_="b")]
    assert sh.make_stancode(f, sleep, prior=p1) == sh.make_stancode(f, sleep, prior=p2)
    d1, d2 = sh.make_standata(f, sleep, prior=p1), sh.make_standata(f, sleep, prior=p2)
    assert d1["pa_1_1"].tolist() == [0.0] and d2["pa_1_1"].tolist() == [5.0]
    assert "normal_lpdf(b[Jp_1] | pa_1_1, pa_1_2)" in sh.make_stancode(f, sleep, prior=p1)


def test_specific_prior_wins(sleep):
    pri = [sh.prior("student_t(3, 0, 10)", class_="sd"),
           sh.prior("exponential(1)", class_="sd", group="Subject", coef="Days")]
    tab = sh.get_prior("Reaction ~ Days + (Days | Subject)", sleep, prior=pri)
    sd_rows = tab[tab["class"] == "sd"].set_index("coef")
    assert sd_rows.loc["Days", "prior"] == "exponential(1)"
    assert sd_rows.loc["Intercept", "prior"] == "student_t(3, 0, 10)"
    data = sh.make_standata("Reaction ~ Days + (Days | Subject)", sleep, prior=pri)
    # the exponential statement covers position 2 (Days) of sd_1, the student_t position 1
    by_len = {k: v for k, v in data.items() if k.startswith("Jp_")}
    assert sorted(np.concatenate(list(by_len.values())).tolist()) == [1, 2]


@pytest.mark.parametrize("bad, match", [
    (dict(dist="normal(0, 1)", class_="bogus"), "Unknown prior class"),
    (dict(dist="nromal(0, 1)", class_="b"), "normal"),
    (dict(dist="normal(0)", class_="b"), "takes 2 argument"),
    (dict(dist="normal(a, 1)", class_="b"), "numbers"),
])
def test_bad_prior_spec(bad, match):
    with pytest.raises(sh.PriorError, match=match):
        sh.prior(bad.pop("dist"), **bad)


@pytest.mark.parametrize("pri, match", [
    (sh.prior("normal(0, 1)", class_="b", coef="Dayz"), "Dayz"),
    (sh.prior("normal(0, 1)", class_="sd", group="Subjekt"), "Subjekt"),
    (sh.prior("normal(0, 1)", class_="cor"), "lkj"),
    (sh.prior("gamma(2, 1)", class_="shape"), "shape"),
    (sh.prior("exponential(1)", class_="b"), "positive support"),
])
def test_prior_not_fitting_model(sleep, pri, match):
    with pytest.raises(sh.PriorError, match=match):
        sh.get_prior("Reaction ~ Days + (Days | Subject)", sleep, prior=[pri])


@pytest.mark.parametrize("dist, lb, args, p_above", [
    # P(X > lb) in closed form, from each distribution's Stan parameterization
    ("student_t", 0.0, (3.0, 0.0, 2.5), lambda: 0.5),  # symmetric about the bound: a half-t
    ("normal", 0.3, (1.0, 2.0), lambda: 0.5 * math.erfc((0.3 - 1.0) / (2.0 * math.sqrt(2)))),
    ("cauchy", -1.0, (0.5, 2.0), lambda: 0.5 - math.atan((-1.0 - 0.5) / 2.0) / math.pi),
    ("double_exponential", 1.0, (0.0, 2.0), lambda: 0.5 * math.exp(-1.0 / 2.0)),
    ("logistic", 1.0, (0.0, 2.0), lambda: 1 / (1 + math.exp(1.0 / 2.0))),
    ("skew_normal", 0.3, (1.0, 2.0, 0.0), lambda: 0.5 * math.erfc((0.3 - 1.0) / (2.0 * math.sqrt(2)))),
    ("exponential", 0.7, (2.0,), lambda: math.exp(-2.0 * 0.7)),  # Stan's argument is a rate
    ("gamma", 0.7, (2.0, 3.0), lambda: math.exp(-3.0 * 0.7) * (1 + 3.0 * 0.7)),  # shape, rate
    ("lognormal", 0.7, (0.2, 1.5), lambda: 0.5 * math.erfc((math.log(0.7) - 0.2) / (1.5 * math.sqrt(2)))),
    ("weibull", 0.7, (1.5, 2.0), lambda: math.exp(-(0.7 / 2.0) ** 1.5)),  # shape, scale
    ("frechet", 0.7, (1.5, 2.0), lambda: 1 - math.exp(-(0.7 / 2.0) ** -1.5)),
    ("inv_gamma", 0.7, (1.0, 3.0), lambda: 1 - math.exp(-3.0 / 0.7)),  # shape, scale
    ("chi_square", 0.7, (2.0,), lambda: math.exp(-0.7 / 2)),
    ("inv_chi_square", 0.7, (2.0,), lambda: 1 - math.exp(-1 / (2 * 0.7))),
    ("uniform", 0.5, (-1.0, 3.0), lambda: 2.5 / 4.0),
    ("beta", 0.5, (2.0, 1.0), lambda: 1 - 0.25),
])
def test_truncation_constant_is_minus_log_tail_probability(dist, lb, args, p_above):
    """``lt_i`` (data) replaces Stan's ``-dist_lccdf(lb | ...)``: the same number, for every prior
    family, with Stan's parameterization (rates vs scales) checked against closed forms."""
    from stanhier.model.priors import DISTRIBUTIONS, truncation_constant

    assert len(args) == DISTRIBUTIONS[dist][0]
    assert truncation_constant(dist, lb, [args]) == pytest.approx(-math.log(p_above()), rel=1e-10)
    # a vector parameter: the sum over its positions, as Stan's lccdf of a vector
    assert truncation_constant(dist, lb, [args, args]) == pytest.approx(-2 * math.log(p_above()), rel=1e-10)


def test_truncated_priors_pass_their_constant_as_data(sleep):
    """brms's half-t priors on SDs and sigma: the constant is data, the same program for any scale."""
    data = sh.make_standata("Reaction ~ Days + (Days | Subject)", sleep)
    code = sh.make_stancode("Reaction ~ Days + (Days | Subject)", sleep)
    assert "lccdf" not in code
    sd_index = next(k.split("_")[1] for k in data if k.startswith("Jp_"))
    assert data[f"lt_{sd_index}"] == pytest.approx(2 * math.log(2))  # two SDs, each a half-t: log 2 each
