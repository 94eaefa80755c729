"""The bad-input cases of docs/bad_input.md: each call and the error it raises.

    .venv/bin/python docs/assets/bad_input_cases.py      # prints the table of the page

tests/test_docs.py runs every case and checks the error class and the page.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import stanhier as sh
from stanhier.ml.api import glmer, lmer

D = pd.DataFrame({"y": [1.0, 2.0, 4.0, 3.0, 5.0, 2.5], "x": [0.0, 1.0, 0.0, 1.0, 2.0, 2.0],
                  "n": [3, 4, 5, 4, 6, 3], "g": list("aabbcc")})
ONE = D.assign(g="a")
NA = D.assign(x=[0.0, np.nan, 0.0, 1.0, 2.0, 2.0])
COUNTS = D.assign(y=[1, 2, 4, 3, 5, 2])
NEG = D.assign(y=[-1, 2, 4, 3, 5, 2])

#: (what, call as shown on the page, function, expected class)
CASES: list[tuple[str, str, object, str]] = [
    ("formula without `~`", 'make_stancode("y x", D)', lambda: sh.make_stancode("y x", D), "FormulaError"),
    ("empty group-level term", 'make_stancode("y ~ x + (1 | )", D)',
     lambda: sh.make_stancode("y ~ x + (1 | )", D), "FormulaError"),
    ("unknown column (fixed part)", 'make_stancode("y ~ z + (1 | g)", D)',
     lambda: sh.make_stancode("y ~ z + (1 | g)", D), "FormulaError"),
    ("unknown grouping column", 'make_stancode("y ~ x + (1 | h)", D)',
     lambda: sh.make_stancode("y ~ x + (1 | h)", D), "FormulaError"),
    ("unknown response column", 'make_stancode("w ~ x + (1 | g)", D)',
     lambda: sh.make_stancode("w ~ x + (1 | g)", D), "FormulaError"),
    ("missing values (rows dropped, as brms)", 'make_stancode("y ~ x + (1 | g)", NA)',
     lambda: sh.make_stancode("y ~ x + (1 | g)", NA), "StanhierWarning"),
    ("grouping factor with one level", 'make_stancode("y ~ x + (1 | g)", ONE)',
     lambda: sh.make_stancode("y ~ x + (1 | g)", ONE), "DataError"),
    ("non-integer counts", 'make_stancode("y ~ x + (1 | g)", D, "poisson")',
     lambda: sh.make_stancode("y ~ x + (1 | g)", D, "poisson"), "FamilyError"),
    ("negative counts", 'make_stancode("y ~ x + (1 | g)", NEG, "poisson")',
     lambda: sh.make_stancode("y ~ x + (1 | g)", NEG, "poisson"), "FamilyError"),
    ("bernoulli response not 0/1", 'make_stancode("y ~ x + (1 | g)", COUNTS, "bernoulli")',
     lambda: sh.make_stancode("y ~ x + (1 | g)", COUNTS, "bernoulli"), "FamilyError"),
    ("binomial without trials", 'make_stancode("y ~ x + (1 | g)", COUNTS, "binomial")',
     lambda: sh.make_stancode("y ~ x + (1 | g)", COUNTS, "binomial"), "FamilyError"),
    ("trials() with another family", 'make_stancode("y | trials(n) ~ x + (1 | g)", COUNTS, "poisson")',
     lambda: sh.make_stancode("y | trials(n) ~ x + (1 | g)", COUNTS, "poisson"), "FamilyError"),
    ("unknown family", 'make_stancode("y ~ x + (1 | g)", D, "poison")',
     lambda: sh.make_stancode("y ~ x + (1 | g)", D, "poison"), "FamilyError"),
    ("link the family does not take", 'make_stancode("y ~ x + (1 | g)", COUNTS, "poisson(link=\'logit\')")',
     lambda: sh.make_stancode("y ~ x + (1 | g)", COUNTS, "poisson(link='logit')"), "FamilyError"),
    ("`glmer` Gamma with a response <= 0", 'glmer("y ~ x + (1 | g)", NEG, family="Gamma")',
     lambda: glmer("y ~ x + (1 | g)", NEG, family="Gamma"), "FamilyError"),
    ("`glmer` with a scale family and `nAGQ > 1`", 'glmer("y ~ x + (1 | g)", D, family="Gamma", nAGQ=5)',
     lambda: glmer("y ~ x + (1 | g)", D, family="Gamma", nAGQ=5), "ArgumentError"),
    ("unknown prior class", 'prior("normal(0, 1)", class_="beta")',
     lambda: sh.prior("normal(0, 1)", class_="beta"), "PriorError"),
    ("unknown prior distribution", 'prior("nromal(0, 1)")', lambda: sh.prior("nromal(0, 1)"), "PriorError"),
    ("prior on a coefficient the model lacks", 'make_stancode("y ~ x + (1 | g)", D, prior=prior("normal(0, 1)", coef="z"))',
     lambda: sh.make_stancode("y ~ x + (1 | g)", D, prior=sh.prior("normal(0, 1)", coef="z")), "PriorError"),
    ("prior on a group the model lacks", 'make_stancode("y ~ x + (1 | g)", D, prior=prior("normal(0, 1)", class_="sd", group="h"))',
     lambda: sh.make_stancode("y ~ x + (1 | g)", D, prior=sh.prior("normal(0, 1)", class_="sd", group="h")), "PriorError"),
    ("positive-only prior on `b`", 'make_stancode("y ~ x + (1 | g)", D, prior=prior("exponential(1)"))',
     lambda: sh.make_stancode("y ~ x + (1 | g)", D, prior=sh.prior("exponential(1)")), "PriorError"),
    ("non-LKJ prior on correlations", 'make_stancode("y ~ x + (x | g)", D, prior=prior("normal(0, 1)", class_="cor"))',
     lambda: sh.make_stancode("y ~ x + (x | g)", D, prior=sh.prior("normal(0, 1)", class_="cor")), "PriorError"),
    ("`iter` not above `warmup`", 'brm("y ~ x + (1 | g)", D, iter=100, warmup=100)',
     lambda: sh.brm("y ~ x + (1 | g)", D, iter=100, warmup=100), "ArgumentError"),
    ("`adapt_delta` out of (0, 1)", 'brm("y ~ x + (1 | g)", D, control={"adapt_delta": 1.2})',
     lambda: sh.brm("y ~ x + (1 | g)", D, control={"adapt_delta": 1.2}), "ArgumentError"),
    ("unknown control setting", 'brm("y ~ x + (1 | g)", D, control={"adapt": 0.9})',
     lambda: sh.brm("y ~ x + (1 | g)", D, control={"adapt": 0.9}), "ArgumentError"),
    ("`chains=0`", 'brm("y ~ x + (1 | g)", D, chains=0)',
     lambda: sh.brm("y ~ x + (1 | g)", D, chains=0), "ArgumentError"),
    ("negative seed", 'brm("y ~ x + (1 | g)", D, seed=-1)',
     lambda: sh.brm("y ~ x + (1 | g)", D, seed=-1), "ArgumentError"),
    ("unknown backend", 'brm("y ~ x + (1 | g)", D, backend="jags")',
     lambda: sh.brm("y ~ x + (1 | g)", D, backend="jags", chains=1, iter=20), "ArgumentError"),
    ("`REML` not a bool", 'lmer("y ~ x + (1 | g)", D, REML="yes")',
     lambda: lmer("y ~ x + (1 | g)", D, REML="yes"), "ArgumentError"),
    ("`glmer` with gaussian (as lme4: fitted by lmer)", 'glmer("y ~ x + (1 | g)", D, family="gaussian")',
     lambda: glmer("y ~ x + (1 | g)", D, family="gaussian"), "StanhierWarning"),
    ("`nAGQ` out of range", 'glmer("y ~ x + (1 | g)", COUNTS, family="poisson", nAGQ=0)',
     lambda: glmer("y ~ x + (1 | g)", COUNTS, family="poisson", nAGQ=0), "ArgumentError"),
    ("loading a folder that is no run record", 'load("some/folder")',
     lambda: __import__("stanhier.record", fromlist=["load"]).load("."), "DataError"),
]


def run_case(fn) -> tuple[str, str]:
    """(class name, message) of what ``fn`` raises or warns; ('', '') if nothing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            return type(exc).__name__, str(exc)
    for w in caught:
        if issubclass(w.category, sh.StanhierWarning):
            return w.category.__name__, str(w.message)
    return "", ""


def table() -> str:
    lines = ["| bad input | call | raises | message |", "| --- | --- | --- | --- |"]
    for what, call, fn, _ in CASES:
        cls, msg = run_case(fn)
        msg = msg.replace("|", "\\|").replace("\n", " ")
        call = call.replace("|", "\\|")
        lines.append(f"| {what} | `{call}` | `{cls}` | {msg} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
