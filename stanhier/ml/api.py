"""Maximum likelihood on the marginalized model: ``lmer`` and ``glmer`` (as R's lme4).

The random effects are integrated out of the likelihood and Stan's log density of
the *marginal* model is maximized over the fixed effects ``beta``, the relative
covariance factor's free elements ``theta`` (lme4's parameterization) and
``log(sigma)``:

* Gaussian (``lmer``): exact marginal likelihood (or REML criterion) from per-group
  cross-products computed once in Python (``stan/templates/ml_lmm.stan``); the cost
  of a gradient does not depend on the number of observations.
* Other families (``glmer``): Laplace approximation (``nAGQ=1``) or adaptive
  Gauss-Hermite quadrature (``nAGQ>1``, one scalar random effect) with Newton
  iterations for the random-effect modes inside the Stan program
  (``stan/templates/ml_glmm.stan``).

Two programs serve every model: sizes, the layout of the covariance factor and
the family are data, so a compiled model is reused by every later fit.

Which evaluator runs the optimizer (``fit.evaluator`` and the summary's ``Evaluator:``
line say it): where Stan's fixed cost per call dominates -- ``lmer`` whenever the random
effects outside the largest term number at most
:data:`~stanhier.ml.crossed.MAX_QUICK_Q2` (one grouping factor: always), and Laplace
``glmer`` (any terms, e.g. ``(x | g)``), canonical links and Poisson/binomial/Bernoulli responses under
the same condition -- the numpy blocked evaluator of the same likelihood
(:mod:`stanhier.ml.crossed`, :mod:`stanhier.ml.crossed_glmm`) runs without compiling; the
Stan program above stays the model's definition (``fit.stan_check()``, ``fit.density``,
profile intervals), compiled when first needed. Everything else runs on Stan's log density.

Example
-------
>>> import pandas as pd, stanhier as sh                       # doctest: +SKIP
>>> sleep = pd.read_csv("tests/data/sleepstudy.csv")          # doctest: +SKIP
>>> m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)  # doctest: +SKIP
>>> round(m.logLik(), 2)                                      # doctest: +SKIP
-875.97
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from ..backends import compile_objects, get_backend
from ..backends.base import CompiledModel
from ..errors import ArgumentError, DataError, FamilyError, SamplingError, StanhierWarning, user_stacklevel
from ..families import Family, get_family, glmm_families
from ..model.design import Design, data_label
from ..model.spec import build_frame
from .fit import MerFit, MLCall
from .crossed import MAX_QUICK_Q2, crossed_stan_program, fit_crossed_lmm, needs_crossed, schur_size
from .crossed_glmm import fit_crossed_glmm, glmm_is_quick, glmm_needs_crossed, user_start
from .aggregate import AGGREGATABLE, MIN_SHRINK, Aggregation, aggregate_counts
from .layout import MAX_STACKED_Q, build_layout
from .optimizer import evaluate_at, maximize
from .problem import MLProblem, glmm_problem, lmm_problem, moments_least_squares, stan_program, start_values

__all__ = ["lmer", "glmer", "fit_ml", "ml_programs", "compile_ml_programs"]


# --------------------------------------------------------------------------- entry points
def _check_backend(backend: str) -> None:
    if not isinstance(backend, str):
        raise ArgumentError(f"backend must be 'auto', 'pystan' or 'cmdstanpy', not {backend!r}.")


def ml_programs() -> dict[str, str]:
    """Every Stan program of the maximum-likelihood path, largest first: there are three, fixed
    for an installation (sizes, layout, family and link are data), as lme4's compiled code is.

    >>> list(ml_programs())
    ["glmer's program", "lmer's program", "lmer's program for crossed factors"]
    """
    return {"glmer's program": stan_program("glmm"), "lmer's program": stan_program("lmm"),
            "lmer's program for crossed factors": crossed_stan_program()}


def compile_ml_programs(backend: str = "pystan", *, jobs: int | None = None,
                        on_build: Callable[[str], None] | None = None) -> dict[str, CompiledModel]:
    """Compile :func:`ml_programs` now (``stanhier prepare`` does, at install time, as rstanarm
    compiles its Stan programs when it is installed), so no ``lmer`` or ``glmer`` fit waits for a
    compile: their objects, which both engines link, ``jobs`` at a time, largest first (default:
    as :func:`~stanhier.backends.compile_objects` chooses), then the ``backend``'s module or
    executable of each; what is compiled already is found in the cache. ``on_build(what)`` is
    called before the objects compile (for a display).

    >>> compile_ml_programs()["lmer's program"].cache_hit   # doctest: +SKIP
    True
    """
    programs = ml_programs()
    if on_build is not None:
        on_build("lmer's and glmer's programs")
    compile_objects(list(programs.values()), jobs=jobs)
    engine = get_backend(backend)
    return {name: engine.compile(code, progress=False) for name, code in programs.items()}


def _compile(kind: str, backend: str, progress: bool) -> CompiledModel:
    _check_backend(backend)
    # the display appears only while a program really compiles (quick refits print nothing)
    return get_backend(backend).compile(stan_program(kind), progress=progress, show_cached=False)


def _scale(problem: MLProblem, design: Design) -> np.ndarray:
    """Rough parameter scales for the optimizer (OLS-like SEs for beta, 1 elsewhere)."""
    if problem.kind == "lmm":  # from the cross-products: the same for pandas and Dask data
        XtX = problem.moments["XtX"]
        sd = moments_least_squares(problem.moments)[2]
    else:
        XtX = design.X.T @ design.X
        sd = 1.0
    try:
        se = 10 * np.sqrt(np.diag(np.linalg.pinv(XtX))) * max(sd, 1e-8)
    except np.linalg.LinAlgError:  # pragma: no cover
        se = np.ones(XtX.shape[0])
    se = np.where(np.isfinite(se) & (se > 0), se, 1.0)
    return np.concatenate([np.minimum(se, 1e6), np.ones(problem.n_theta + problem.n_aux)])


def _tolerance(control: dict | None) -> float:
    control = dict(control or {})
    unknown = set(control) - {"tol"}
    if unknown:
        raise ArgumentError(f"control accepts 'tol' only; got {', '.join(sorted(map(repr, unknown)))}.")
    tol = control.get("tol", 1e-8)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not 0 < float(tol) < 1:
        raise ArgumentError(f"control['tol'] must be a number between 0 and 1, got {tol!r}.")
    return float(tol)


def fit_ml(call: MLCall, data: Any, *, start: dict | None = None, progress: bool | None = False,
           optimum: np.ndarray | None = None) -> MerFit:
    """Fit the ML model described by ``call`` to ``data`` (``lmer``, ``glmer`` and
    :func:`stanhier.record.load` all build through here).

    ``optimum``: a known optimum (the unconstrained vector of a run record): the fit is
    built at that point without optimizing, so it reproduces the recorded fit exactly.

    >>> call = MLCall(kind="lmm", formula="Reaction ~ Days + (Days | Subject)", REML=False)  # doctest: +SKIP
    >>> fit_ml(call, sleep).logLik()                                                       # doctest: +SKIP
    """
    kind = call.kind
    tol = _tolerance(call.control)
    frame = build_frame(call.formula, data, call.family_object(), na_action=call.na_action,
                        collinear=call.collinear)
    design, family = frame.design, frame.family
    # crossed/nested models beyond the stacked layout's limit run on the blocked evaluator
    # (ml/crossed.py, ml/crossed_glmm.py; their Stan programs define the same likelihood)
    if design.distributed and kind == "lmm" and needs_crossed(design):
        raise DataError(
            "lmer on Dask data handles one grouping factor, or crossed/nested factors with at most "
            f"{MAX_STACKED_Q} random effects in all (the stacked layout); this model has more. Fit it on "
            "a pandas DataFrame, or aggregate the data first."
        )
    if kind == "lmm" and design.terms and (needs_crossed(design) or schur_size(design) <= MAX_QUICK_Q2):
        # the numpy evaluator also for small models, where Stan's per-call overhead dominates;
        # their Stan program stays the definition (fit.stan_check(), fit.density)
        return fit_crossed_lmm(call, design, tol=min(tol * 100, 1e-6), start=start, optimum=optimum)
    agg = _aggregation(call, design, family) if kind == "glmm" else None
    if agg is None and kind == "glmm" and (glmm_needs_crossed(design, family, call.nAGQ)
                                           or glmm_is_quick(design, family, call.nAGQ)):
        return fit_crossed_glmm(call, design, family, tol=min(tol * 100, 1e-6), start=start, optimum=optimum)
    fit_design, fit_family = (agg.design, agg.family) if agg is not None else (design, family)
    lay = build_layout(fit_design)
    if kind == "glmm" and call.nAGQ > 1 and (len(lay.slots) != 1 or lay.q != 1):
        raise ArgumentError(
            f"nAGQ = {call.nAGQ} > 1 needs a single scalar random-effects term such as '(1 | g)', as in lme4 "
            f"(this model has {len(lay.slots)} term(s) with {sum(s.M for s in lay.slots)} coefficient(s)); "
            "use nAGQ=1 (Laplace approximation)."
        )
    problem = (lmm_problem(design, lay, call.REML) if kind == "lmm"
               else glmm_problem(fit_design, lay, fit_family, call.nAGQ))
    model = _compile(kind, call.backend, bool(progress))
    standata = problem.standata()
    density = model.log_density(standata)
    if density.n_params != problem.n_params:  # pragma: no cover - a programming error
        raise SamplingError(f"Internal error: Stan has {density.n_params} parameters, expected {problem.n_params}.")
    if optimum is not None:
        optimum = np.asarray(optimum, float)
        if optimum.shape != (problem.n_params,):
            raise ArgumentError(f"optimum must have {problem.n_params} values (beta, theta, auxiliary), "
                                f"not {optimum.size}.")
        info = evaluate_at(density, optimum, tol=tol)
    else:
        starts = start_values(problem, fit_design, fit_family)
        if start is not None:
            starts.insert(0, _user_start(start, problem, starts[0]))
        info = maximize(density, starts, _scale(problem, fit_design), tol=tol,
                        native=model.native_optimizer(standata), progress=progress)
    fit = MerFit(call=call, design=design, layout=lay, family=family, problem=problem, model=model,
                 density=density, optimum=info, aggregation=agg)
    if not info.converged:
        warnings.warn(
            f"Model failed to converge: {info.message} (max |gradient| {np.max(np.abs(info.grad)):.2g} "
            f"after {info.n_starts} start(s)); rescale predictors or simplify the random effects.",
            StanhierWarning, stacklevel=3)
    if fit.is_singular():
        warnings.warn("boundary (singular) fit: a variance is ~0 or a correlation ~±1 (fit.is_singular())", StanhierWarning, stacklevel=3)
    return fit


def _aggregation(call: MLCall, design: Design, family: Family) -> Aggregation | None:
    """The exact aggregation of a count GLMM's rows, when it is used (see :mod:`stanhier.ml.aggregate`)."""
    if call.aggregate is False and not design.distributed:
        return None
    if family.name not in AGGREGATABLE:
        if design.distributed:
            raise DataError(
                f"glmer on Dask data aggregates the rows exactly, which needs family poisson, binomial or "
                f"bernoulli; got {family.name!r}. Fit it on a pandas DataFrame."
            )
        if call.aggregate:
            raise ArgumentError(f"aggregate=True needs family poisson, binomial or bernoulli, not {family.name!r}.")
        return None
    agg = aggregate_counts(design, family)
    if glmm_needs_crossed(agg.design, agg.family, call.nAGQ):
        if design.distributed:
            raise DataError("glmer on Dask data: the aggregated patterns still need the crossed-factor evaluator, "
                            "which reads raw rows; fit this model on a pandas DataFrame.")
        return None
    if call.aggregate is None and not design.distributed and agg.shrink < MIN_SHRINK:
        return None
    return agg


def _user_start(start: dict, problem: MLProblem, default: np.ndarray) -> np.ndarray:
    x = default.copy()
    K, T = problem.K, problem.n_theta
    x[:K + T] = user_start(start, default[:K + T], K, T)
    return x


def lmer(formula: str, data: Any, REML: bool = True, *, backend: str = "auto",
         progress: bool = True, start: dict | None = None, control: dict | None = None,
         na_action: str = "drop", collinear: str = "drop"):
    """Fit a linear mixed model by maximum likelihood or REML, as lme4's ``lmer``.

    The Gaussian marginal likelihood is exact and computed from per-group
    cross-products, so a gradient costs the same for 1,000 or 1,000,000 rows.

    Parameters
    ----------
    formula : lme4 formula, e.g. ``"Reaction ~ Days + (Days | Subject)"``.
    data : pandas DataFrame (or dict of columns).
    REML : ``True`` (lme4's default) for the REML criterion, ``False`` for maximum likelihood.
    backend : ``"auto"``, ``"pystan"`` or ``"cmdstanpy"``.
    progress : show what takes time on stderr: the compile (only when the program is not in the
        cache yet) and a spinner with the number of evaluations when the optimization takes over
        a second. ``False``: print nothing.
    start : optional ``{"theta": [...]}`` starting values (lme4's relative covariance factor).
    na_action : ``"drop"`` rows with missing values (with a warning) or ``"raise"``.
    collinear : ``"drop"`` (lme4's behaviour, with a warning) or ``"error"`` for constant or
        linearly dependent fixed-effect columns.

    Returns
    -------
    MerFit

    Example
    -------
    >>> m = lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)  # doctest: +SKIP
    >>> print(m)                                                        # doctest: +SKIP
    """
    if not isinstance(REML, (bool, np.bool_)):
        raise ArgumentError(f"REML must be True or False, not {REML!r}.")
    call = MLCall(kind="lmm", formula=formula, family="gaussian", REML=bool(REML), nAGQ=0,
                  backend=backend, na_action=na_action, collinear=collinear, control=control,
                  data_name=data_label(data))
    return fit_ml(call, data, start=start, progress=progress)


def glmer(formula: str, data: Any, family: str | Family = "gaussian", nAGQ: int = 1, *,
          backend: str = "auto", progress: bool = True, start: dict | None = None,
          control: dict | None = None, na_action: str = "drop", collinear: str = "drop",
          aggregate: bool | None = None):
    """Fit a generalized linear mixed model by (approximate) maximum likelihood, as lme4's ``glmer``.

    ``nAGQ=1``: Laplace approximation; ``nAGQ>1``: adaptive Gauss-Hermite quadrature
    with that many nodes (one scalar random-effects term only, as lme4).
    ``family`` defaults to ``gaussian``, as lme4's: a Gaussian model (identity link) is fitted
    as :func:`lmer` fits it (REML), with a warning. Other families: ``poisson``, ``binomial`` (``cbind(s, f)`` or ``y | trials(n)``),
    ``bernoulli`` (0/1), ``negbinomial`` (shape estimated, as ``glmer.nb``), ``Gamma`` and
    ``gaussian`` at a log or inverse link, each at any of its links (``"binomial(link='probit')"``,
    ``sh.family("poisson", link="sqrt")``): at a non-default link the Laplace approximation uses
    lme4's PIRLS (Fisher) weights, as lme4 does. ``Gamma`` and ``gaussian`` have a scale, which lme4
    profiles out of its Laplace objective (``log|H| + |u|^2 + aic``, R's ``family()$aic`` with the
    dispersion ``deviance / N``); stanhier optimizes the same objective (its ``logLik()`` is lme4's),
    reports lme4's ``sigma()`` and a ``Residual`` row, and takes ``nAGQ=1`` only. Note that
    ``"Gamma"`` is brms's default link, log; lme4's ``Gamma`` is ``"Gamma(link='inverse')"``.
    ``progress`` as in :func:`lmer`.

    ``data`` may be a Dask DataFrame or a Parquet path (Poisson, binomial, Bernoulli).

    ``aggregate``: Poisson, binomial and Bernoulli rows with identical (predictors, groups)
    are summed into one pattern and the model is fitted on the patterns -- exact, same
    optimum and (constants added back) same logLik as on the rows
    (:mod:`stanhier.ml.aggregate`). ``None`` (default): when that shrinks the data at
    least 5x (always for Dask data), stated in the summary; ``True``: always; ``False``: never.

    Example
    -------
    >>> g = glmer("fish_num ~ 1 + temperature + (1 | weather)", fish, family="poisson")  # doctest: +SKIP
    >>> g20 = glmer("fish_num ~ 1 + temperature + (1 | weather)", fish, "poisson", nAGQ=20)  # doctest: +SKIP
    >>> gm = glmer("Reaction ~ Days + (1 | Subject)", sleep, family="Gamma(link='log')")  # doctest: +SKIP
    >>> round(gm.logLik(), 2), round(gm.sigma(), 4)                                    # doctest: +SKIP
    (-870.4, 0.1054)
    """
    fam = get_family(family)
    if fam.name == "gaussian" and fam.link == "identity":
        # lme4: glmer's default family is gaussian, which it fits as lmer() does, with a message
        warnings.warn("calling glmer() with family=gaussian (identity link) fits a linear mixed model, as "
                      "lmer() does (REML, exact likelihood); call lmer() directly.",
                      StanhierWarning, stacklevel=user_stacklevel())
        return lmer(formula, data, backend=backend, progress=progress, start=start, control=control,
                    na_action=na_action, collinear=collinear)
    if not fam.glmm_capable:
        raise FamilyError(f"glmer supports the families {', '.join(f.name for f in glmm_families())}; "
                          f"not {fam.name!r}.")
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, (int, np.integer)) or not (1 <= nAGQ <= 100):
        raise ArgumentError(f"nAGQ must be an integer between 1 and 100 (1 = Laplace), got {nAGQ!r}.")
    if fam.glmm_scale and nAGQ != 1:
        raise ArgumentError(f"nAGQ = {nAGQ} with family {fam.name!r} (a scale parameter, profiled out as lme4 "
                            "does) is not supported; use nAGQ=1 (Laplace approximation).")
    if aggregate not in (None, True, False):
        raise ArgumentError(f"aggregate must be None (automatic), True or False, not {aggregate!r}.")
    call = MLCall(kind="glmm", formula=formula, family=fam.name, link=fam.link, REML=False,
                  nAGQ=int(nAGQ), backend=backend, na_action=na_action, collinear=collinear,
                  control=control, data_name=data_label(data), aggregate=aggregate)
    return fit_ml(call, data, start=start, progress=progress)
