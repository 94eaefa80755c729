"""Likelihood-ratio tests of nested ML fits: ``anova`` (as lme4).

>>> sh.anova(m1, m2)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError, StanhierWarning
from .api import fit_ml
from .fit import MerFit

__all__ = ["anova"]


def _ml_version(fit: "MerFit", refit: bool) -> tuple["MerFit", bool]:
    """The ML (not REML) version of ``fit``: itself, or a refit with ``REML=False``."""
    if not getattr(fit, "REML", False):
        return fit, False
    if not refit:
        return fit, False
    # the same build arguments (backend that ran, na_action, collinear, control), REML off
    call = dataclasses.replace(fit.call, REML=False, backend=fit.model.backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanhierWarning)
        d = fit.design  # Dask fits refit on their (lazy) data, never on rows held here
        new = fit_ml(call, d.source.ddf if d.distributed else d.data)
    return new, True


def anova(*fits: "MerFit", names: Sequence[str] | None = None, refit: bool = True) -> pd.DataFrame:
    """Likelihood-ratio tests of nested ML fits (lme4's ``anova(m1, m2, ...)``).

    Models are ordered by number of parameters (``npar``); each row after the first
    tests it against the previous one: ``Chisq = 2 * (logLik - previous logLik)`` on
    ``Df = npar - previous npar`` degrees of freedom, ``Pr(>Chisq)`` from the chi-square
    distribution. As lme4, REML fits are first refitted by maximum likelihood
    (``REML=False``; a :class:`~stanhier.errors.StanhierWarning` says
    "refitting model(s) with ML (instead of REML)"); ``refit=False`` keeps the REML
    criteria (only meaningful for models with the same fixed effects). The result's
    ``attrs["refitted"]`` lists the refitted models.

    Columns: npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq).

    >>> sh.anova(sh.lmer("Reaction ~ Days + (1 | Subject)", sleep),
    ...          sh.lmer("Reaction ~ Days + (Days | Subject)", sleep))     # doctest: +SKIP
    """
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if len(fits) < 2:
        raise ArgumentError("anova needs at least two ML fits (lmer/glmer) to compare.")
    for i, f in enumerate(fits):
        if not (hasattr(f, "logLik") and hasattr(f, "df") and hasattr(f, "nobs")):
            raise ArgumentError(
                f"anova compares ML fits from lmer/glmer; argument {i + 1} is a {type(f).__name__}. "
                "For Bayesian fits use loo_compare()."
            )
    if names is None:
        names = [getattr(f, "name", None) or f"m{i + 1}" for i, f in enumerate(fits)]
    names = list(names)
    if len(names) != len(fits):
        raise ArgumentError(f"names must give one name per fit ({len(fits)}), got {len(names)}.")
    nobs = [f.nobs() for f in fits]
    if len(set(nobs)) != 1:
        raise DataError(
            "anova: models were not all fitted to the same number of observations "
            f"({', '.join(f'{n}: {k}' for n, k in zip(names, nobs))}); refit them on the same rows."
        )
    refitted: list[str] = []
    ml = []
    for f, n in zip(fits, names):
        g, did = _ml_version(f, refit)
        if did:
            refitted.append(n)
        ml.append(g)
    if refitted:
        warnings.warn("refitting model(s) with ML (instead of REML): " + ", ".join(refitted),
                      StanhierWarning, stacklevel=2)
    npar = np.array([g.df() for g in ml])
    ll = np.array([g.logLik() for g in ml])
    n = nobs[0]
    order = np.argsort(npar, kind="stable")
    rows = []
    prev = None
    for i in order:
        row = {"npar": int(npar[i]), "AIC": -2 * ll[i] + 2 * npar[i],
               "BIC": -2 * ll[i] + np.log(n) * npar[i], "logLik": ll[i], "deviance": -2 * ll[i],
               "Chisq": np.nan, "Df": np.nan, "Pr(>Chisq)": np.nan}
        if prev is not None:
            chisq = 2 * (ll[i] - ll[prev])
            df = int(npar[i] - npar[prev])
            row["Chisq"] = max(float(chisq), 0.0)
            row["Df"] = df
            row["Pr(>Chisq)"] = float(_chi2_sf(row["Chisq"], df)) if df > 0 else np.nan
        rows.append(row)
        prev = i
    out = pd.DataFrame(rows, index=[names[i] for i in order])
    out.attrs["refitted"] = refitted
    return out


def _chi2_sf(x: float, df: int) -> float:
    from scipy import stats  # on first use: slow to import

    return stats.chi2.sf(x, df)
