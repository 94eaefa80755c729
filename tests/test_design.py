"""Design matrices, level order, bad data — each error names the column or term."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.model.design import make_design
from stanhier.model.formula import parse_formula

LEVELS = json.loads((Path(__file__).parent / "data" / "factor_levels.json").read_text())


def design(formula, data, **kw):
    return make_design(parse_formula(formula), data, **kw)


def test_levels_in_r_order(sleep, penicillin):
    d = design("Reaction ~ Days + (Days | Subject)", sleep)
    assert list(d.terms[0].level_labels()) == LEVELS["sleepstudy"]["Subject"]
    d = design("diameter ~ 1 + (1 | plate) + (1 | sample)", penicillin)
    assert list(d.terms[0].level_labels()) == LEVELS["Penicillin"]["plate"]


def test_nested_levels_lme4_and_brms_labels():
    pastes = pd.read_csv(Path(__file__).parent / "data" / "Pastes.csv")
    d = design("strength ~ 1 + (1 | batch/cask)", pastes)
    assert [t.term.group_name for t in d.terms] == ["batch", "batch:cask"]
    assert d.terms[1].n_levels == 30
    assert d.terms[1].level_labels(":")[:2] == ("A:a", "A:b")
    assert d.terms[1].level_labels("_")[:2] == ("A_a", "A_b")


def test_categorical_predictors_treatment_coding():
    fish = pd.read_csv(Path(__file__).parent / "data" / "fish.csv")
    d = design("fish_num ~ weather * temperature + (weather | id)", fish)
    assert d.fixed_names == ("Intercept", "weathersunny", "temperature", "weathersunny:temperature")
    assert d.fixed_names_r[0] == "(Intercept)"
    assert d.terms[0].coef_names == ("Intercept", "weathersunny")


def test_new_data_uses_fit_encoding(sleep):
    d = design("Reaction ~ Days + (Days | Subject)", sleep)
    new = d.new_data(pd.DataFrame({"Days": [0.0, 3.0], "Subject": [308, 999]}), allow_new_levels=True)
    assert new.J[0].tolist() == [0, -1] and new.new_levels[0] == ("999",)
    with pytest.raises(sh.DataError, match="999"):
        d.new_data(pd.DataFrame({"Days": [0.0], "Subject": [999]}))


@pytest.mark.parametrize("frame, formula, error, match", [
    ({"y": [1.0, 2.0], "x": [1.0, 2.0]}, "y ~ xx", sh.FormulaError, "'xx'.*Did you mean 'x'"),
    ({"y": [1.0, 2.0], "x": [1.0, np.inf]}, "y ~ x", sh.DataError, "'x' has 1 infinite"),
    ({"y": [], "x": []}, "y ~ x", sh.DataError, "zero rows"),
    ({"y": ["a", "b"], "x": [1.0, 2.0]}, "y ~ x", sh.DataError, "response column 'y' must be numeric"),
    ({"y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0], "g": ["a"] * 3}, "y ~ x + (1 | g)", sh.DataError,
     "'g'.*single level"),
    ({"y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0], "x2": [2.0, 4.0, 6.0]}, "y ~ x + x2", sh.DataError,
     "'x2'.*collinear"),
    ({"y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0], "k": [5.0] * 3}, "y ~ x + k", sh.DataError, "'k'.*constant"),
])
def test_bad_data(frame, formula, error, match):
    with pytest.raises(error, match=match):
        sh.make_stancode(formula, pd.DataFrame(frame))


def test_not_a_dataframe():
    with pytest.raises(sh.DataError, match="DataFrame"):
        sh.make_stancode("y ~ x", [1, 2, 3])
    code = sh.make_stancode("y ~ x", {"y": [1.0, 2.0, 3.0], "x": [0.0, 1.0, 2.0]})  # dicts are fine
    assert "normal_id_glm_lpdf" in code


def test_missing_values_dropped_with_count_or_error():
    df = pd.DataFrame({"y": [1.0, np.nan, 3.0, 4.0, 2.0], "x": [0.0, 1.0, None, 3.0, 1.0]})
    with pytest.warns(sh.StanhierWarning, match="2 of 5 rows"):
        data = sh.make_standata("y ~ x", df)
    assert data["N"] == 3
    with pytest.raises(sh.DataError, match="2 row"):
        design("y ~ x", df, na_action="raise")


def test_collinear_drop_option():
    df = pd.DataFrame({"y": [1.0, 2.0, 3.5, 4.0], "x": [1.0, 2.0, 3.0, 4.0], "x2": [2.0, 4.0, 6.0, 8.0]})
    with pytest.warns(sh.StanhierWarning, match="dropping column"):
        d = design("y ~ x + x2", df, collinear="drop")
    assert d.fixed_names == ("Intercept", "x")


def test_group_warnings():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.normal(size=30), "x": rng.normal(size=30), "id": np.arange(30),
                       "cont": rng.normal(size=30)})
    with pytest.warns(sh.StanhierWarning, match="as many levels as observations"):
        sh.make_stancode("y ~ x + (1 | id)", df)
    with pytest.warns(sh.StanhierWarning, match="'cont'.*looks continuous"):
        design("y ~ x + (1 | cont)", df)


@pytest.mark.parametrize("family, y, match", [
    ("poisson", [0.0, 1.5, 2.0], "not whole numbers"),
    ("poisson", [0.0, -1.0, 2.0], "below zero"),
    ("negbinomial", [0.0, -1.0, 2.0], "below zero"),
    ("bernoulli", [0.0, 1.0, 2.0], r"outside \{0, 1\}"),
    ("Gamma", [0.0, 1.0, 2.0], "not positive"),
    ("lognormal", [-1.0, 1.0, 2.0], "not positive"),
    ("binomial", [0.0, 1.0, 2.0], "number of trials"),
])
def test_family_support(family, y, match):
    df = pd.DataFrame({"y": y, "x": [0.0, 1.0, 2.5]})
    with pytest.raises(sh.FamilyError, match=match) as err:
        sh.make_stancode("y ~ x", df, family=family)
    assert "'y'" in str(err.value) or "trials" in str(err.value)


def test_binomial_trial_errors():
    df = pd.DataFrame({"y": [0.0, 5.0, 2.0], "n": [3.0, 4.0, 2.0], "x": [0.0, 1.0, 2.5]})
    with pytest.raises(sh.FamilyError, match="more successes than trials"):
        sh.make_stancode("y | trials(n) ~ x", df, family="binomial")
    df["n"] = [3.0, -6.0, 2.0]
    with pytest.raises(sh.FamilyError, match="'n'.*non-negative"):
        sh.make_stancode("y | trials(n) ~ x", df, family="binomial")


def test_unknown_family():
    with pytest.raises(sh.FamilyError, match="Did you mean 'poisson'"):
        sh.make_stancode("y ~ x", {"y": [1.0, 2.0, 3.0], "x": [0.0, 1.0, 2.0]}, family="poison")


def test_cbind_with_an_expression_as_lme4():
    df = pd.DataFrame({"y": [1.0, 4.0, 2.0], "n": [5.0, 6.0, 2.0], "x": [0.0, 1.0, 2.0], "g": list("aab")})
    d = design("cbind(y, n - y) ~ x + (1 | g)", df)
    assert d.y.tolist() == [1.0, 4.0, 2.0] and d.trials.tolist() == [5.0, 6.0, 2.0]
    with pytest.raises(sh.FormulaError, match="'m'"):
        design("cbind(y, m - y) ~ x", df)
