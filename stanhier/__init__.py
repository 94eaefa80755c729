"""stanhier: hierarchical regression with brms/lme4 formulas on Stan.

One formula, two ways to estimate: ``brm`` (Bayesian, NUTS, brms's defaults and
names) and ``lmer``/``glmer`` (maximum likelihood on the marginalized model, lme4's
output).

Example
-------
>>> import pandas as pd, stanhier as sh
>>> sleep = pd.read_csv("tests/data/sleepstudy.csv")
>>> sh.get_prior("Reaction ~ Days + (Days | Subject)", data=sleep).iloc[4]["prior"]
'student_t(3, 288.7, 59.3)'
"""

from __future__ import annotations

import warnings as _warnings

# ArviZ (imported when a fit is made) announces its coming refactor with a FutureWarning once
# a day; it is addressed to library authors, not to stanhier's users
_warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)

with _warnings.catch_warnings():
    # third-party FutureWarnings on import (ArviZ announces its refactor once a day) are
    # for library authors, not for stanhier's users; stanhier's own warnings still show
    _warnings.filterwarnings("ignore", category=FutureWarning, module=r"(?!stanhier)")
    from . import families
    from .families import family
    from .api import brm, get_prior, make_standata, make_stancode
    from .errors import (ArgumentError, BackendError, DataError, FamilyError, FormulaError, PriorError,
                         SamplingError, StanCompileError, StanhierError, StanhierWarning)
    from .bayes.compare import bayes_R2, hypothesis, loo, loo_compare, waic
    from .bayes.fit import BrmsFit
    from .ml.anova import anova
    from .ml.api import glmer, lmer
    from .ml.fit import MerFit
    from .bayes.plots import conditional_effects, plot_ranef, plot_trace, pp_check
    from .model.priors import Prior, prior
    from .record import load, save

__version__ = "0.1.0"

__all__ = [
    "brm", "make_stancode", "make_standata", "get_prior", "prior", "Prior", "families", "family", "BrmsFit",
    "lmer", "glmer", "MerFit", "loo", "waic", "loo_compare", "bayes_R2", "hypothesis", "anova",
    "save", "load", "plot_trace", "pp_check", "conditional_effects", "plot_ranef",
    "StanhierError", "FormulaError", "DataError", "FamilyError", "PriorError", "ArgumentError",
    "BackendError", "StanCompileError", "SamplingError", "StanhierWarning", "__version__",
]
