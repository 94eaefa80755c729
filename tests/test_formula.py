"""Formula parsing: random terms, responses, and errors that quote the term."""

from __future__ import annotations

import pytest

from stanhier.errors import FormulaError
from stanhier.model.formula import parse_formula


def test_seed_formula():
    f = parse_formula("fish_num ~ 1 + temperature + (temperature | weather)")
    assert f.response.column == "fish_num"
    assert f.fixed == "1 + temperature"
    (t,) = f.random
    assert (t.expr, t.group, t.correlated) == ("temperature", ("weather",), True)


def test_uncorrelated_nested_and_interaction():
    f = parse_formula("y ~ x + (x || g) + (1 | a/b) + (0 + x | c:d)")
    assert [t.group_name for t in f.random] == ["g", "a", "a:b", "c:d"]
    assert [t.correlated for t in f.random] == [False, True, True, True]
    assert f.random[3].expr == "0 + x"
    assert f.fixed == "x"


def test_responses():
    assert parse_formula("cbind(s, f) ~ x").response.columns == ("s", "f")
    r = parse_formula("y | trials(n) ~ x + (1 | g)").response
    assert (r.kind, r.column, r.column2) == ("trials", "y", "n")
    assert parse_formula("`my y` ~ `a b` + (1 | `g h`)").random[0].group == ("g h",)


def test_random_only_gets_intercept():
    assert parse_formula("y ~ (1 | g)").fixed == "1"


@pytest.mark.parametrize("formula, quoted", [
    ("y ~ x + ( | g)", "( | g)"),
    ("y ~ x + (x | )", "(x | )"),
    ("y ~ x + (1 | g", "(1 | g"),
    ("y ~ x | g", "x | g"),
    ("y ~ (1 | g) + (1 | g)", "(1 | g)"),
    ("y ~ x + (x ||| g)", "(x ||| g)"),
    ("y ~ x +", "y ~ x +"),
    ("y x", "y x"),
    ("~ x", "~ x"),
    ("y ~ x + (1 | a//b)", "a//b"),
    ("y ~ x + $$", "$$"),
])
def test_bad_formula_quotes_term(formula, quoted):
    with pytest.raises(FormulaError) as err:
        parse_formula(formula)
    assert quoted in str(err.value)
