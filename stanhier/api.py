"""The public entry points in one place (re-exports only).

Bayesian fits (as brms) live in :mod:`stanhier.bayes`, ML fits (as lme4) in
:mod:`stanhier.ml`; both start from the same model front end (:mod:`stanhier.model`).

Example
-------
>>> import pandas as pd, stanhier as sh
>>> sleep = pd.read_csv("tests/data/sleepstudy.csv")
>>> code = sh.make_stancode("Reaction ~ Days + (Days || Subject)", data=sleep)
>>> "sd_1" in code
True
"""

from __future__ import annotations

from .bayes.brm import brm, get_prior, make_stancode, make_standata
from .ml.api import glmer, lmer

__all__ = ["brm", "make_stancode", "make_standata", "get_prior", "lmer", "glmer"]
