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
    # the normal's kernel, per position, and its constant (data: -log(sqrt(2 pi) 10))
    assert "lprior -= 0.5 * square((b[Jp_1[i]] - pa_1_1[i]) / pa_1_2[i]);" in sh.make_stancode(f, sleep, prior=p1)
    assert d1["lc_1"] == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(10.0), rel=1e-12)


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


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0, 7.3])
def test_lkj_constant_of_a_2x2_matrix_is_the_beta_density(eta):
    """For a 2 x 2 correlation matrix, LKJ(eta) means (r + 1) / 2 ~ Beta(eta, eta), so the density
    of r at 0 (where the kernel log(1 - r^2) is 0) is the Beta density at 1/2 over 2."""
    from scipy import stats
    from stanhier.model.priors import lkj_constant

    assert lkj_constant(eta, 2) == pytest.approx(stats.beta.logpdf(0.5, eta, eta) - math.log(2), rel=1e-12)


@pytest.mark.parametrize("eta", [1.0, 2.0])
def test_lkj_constant_of_a_3x3_matrix_normalizes_the_density(eta):
    """exp(-constant) = integral of det(R)^(eta - 1) over 3 x 3 correlation matrices (for eta = 1 the
    volume of the elliptope, pi^2 / 2), by Monte Carlo over the cube of (r12, r13, r23): 4e6 points
    give a relative standard error of about 0.1%, so 1% is more than 5 SE."""
    from stanhier.model.priors import lkj_constant

    r = np.random.default_rng(7).uniform(-1, 1, size=(4_000_000, 3))
    det = 1 - (r ** 2).sum(axis=1) + 2 * r[:, 0] * r[:, 1] * r[:, 2]
    inside = det > 0  # (with unit diagonal, positive definite iff this determinant is positive)
    integral = 8 * np.mean(np.where(inside, np.abs(det) ** (eta - 1), 0.0))
    assert math.exp(-lkj_constant(eta, 3)) == pytest.approx(integral, rel=0.01)


@pytest.mark.parametrize("dist, args, closed_form", [
    ("normal", (1.0, 2.0), lambda: -0.5 * math.log(2 * math.pi) - math.log(2.0)),
    ("student_t", (3.0, 1.0, 2.0), lambda: math.lgamma(2.0) - math.lgamma(1.5) - 0.5 * math.log(3 * math.pi) - math.log(2.0)),
    ("cauchy", (1.0, 2.0), lambda: -math.log(math.pi * 2.0)),
    ("exponential", (0.5,), lambda: math.log(0.5)),  # rate 0.5, at 0
    ("gamma", (3.0, 0.5), lambda: 3.0 * math.log(0.5) - math.lgamma(3.0) - 0.5),  # shape, rate, at 1
])
def test_kernel_constant_is_the_density_where_the_kernel_is_zero(dist, args, closed_form):
    """``lc_i``: Stan's parameterization (rates vs scales) against each density written out."""
    from stanhier.model.priors import kernel_constant

    assert kernel_constant(dist, [args]) == pytest.approx(closed_form(), rel=1e-12)
    assert kernel_constant(dist, [args, args]) == pytest.approx(2 * closed_form(), rel=1e-12)
