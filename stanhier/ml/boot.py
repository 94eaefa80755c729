"""Parametric-bootstrap confidence intervals, as lme4's ``confint(m, method = "boot")``.

lme4's ``bootMer`` with its defaults (``use.u = FALSE``, ``type = "parametric"``): each
simulation draws new random effects from the fitted covariance, then a new response from
the fitted family given them (:func:`simulate_response`), and refits the model to it --
the same design, layout and compiled program, only the response changes, so nothing is
parsed or compiled again. The interval of each parameter (lme4's ``oldNames = FALSE``
rows: SDs and correlations of the random effects, the residual SD, the fixed effects) is
the percentile interval of its ``nsim`` refitted values, with ``boot.ci``'s
interpolation on the normal-quantile scale (:func:`percentile_interval`, R's
``boot:::norm.inter``; lme4's default ``boot.type = "perc"``).

Simulation ``i`` draws from its own random stream (``numpy.random.SeedSequence(seed)``'s
``i``-th child), so the intervals depend on ``seed`` only, not on how many processes
share the refits (``cores``).

Example
-------
>>> m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep)               # doctest: +SKIP
>>> m.confint(method="boot", nsim=500, seed=1, cores=2)                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..backends.base import fresh_seed
from ..errors import ArgumentError, SamplingError, StanhierWarning, user_stacklevel
from ..progress import TaskProgress
from .aggregate import aggregate_counts
from .layout import build_layout, linear_predictor
from .optimizer import maximize
from .problem import glmm_problem, lmm_problem, start_values
from .profile import Reparam

__all__ = ["boot_confint", "simulate_response", "percentile_interval", "refit_response"]


def simulate_response(fit: Any, rng: np.random.Generator) -> np.ndarray:
    """One response vector simulated from the fitted model, new random effects included
    (lme4's ``simulate(fit, use.u = FALSE)``): ``b ~ N(0, sigma^2 Lambda Lambda')`` per
    level, then ``y ~ family(X beta + Z b)``.

    >>> y_star = simulate_response(m, np.random.default_rng(1))                # doctest: +SKIP
    """
    d = fit.design
    theta, sigma = fit.theta, fit.sigma()
    values: list[np.ndarray] = [np.zeros((0, 0))] * len(fit.layout.slots)
    for slot in fit.layout.slots:
        lam = fit.layout.term_lambda(slot, theta)
        values[slot.index] = sigma * rng.standard_normal((slot.L, slot.M)) @ lam.T
    eta = linear_predictor(d.X, [gt.Z for gt in d.terms], [gt.J for gt in d.terms], fit.fixef().to_numpy(),
                           values)
    aux = {"sigma": sigma} if fit.kind == "lmm" else fit.family_aux()
    return np.asarray(fit.family.rng(eta, aux, rng, d.trials), float)


def refit_response(fit: Any, y: np.ndarray) -> np.ndarray | None:
    """The optimum (``beta, theta, aux``) of ``fit``'s model refitted to the response ``y``:
    the fit's design, layout and compiled program with only ``y`` replaced (lme4's
    ``refit``), started at the fit's optimum. None when no start converges. Fits of the numpy
    evaluators (small and crossed models) refit on their evaluator."""
    if hasattr(fit, "refit_response"):
        return fit.refit_response(y)
    design = dataclasses.replace(fit.design, y=np.asarray(y, float))
    if fit.kind == "lmm":
        problem = lmm_problem(design, fit.layout, fit.REML)
        fit_design, family = design, fit.family
    else:
        if fit.aggregation is not None:
            agg = aggregate_counts(design, fit.family)
            fit_design, family = agg.design, agg.family
            layout = build_layout(fit_design)
        else:
            fit_design, family, layout = design, fit.family, fit.layout
        problem = glmm_problem(fit_design, layout, family, fit.nAGQ)
    standata = problem.standata()
    density = fit.model.log_density(standata)
    native = fit.model.native_optimizer(standata)
    x0 = np.asarray(fit.optimum.theta, float)
    scale = np.maximum(1.0, np.abs(x0))
    control = dict(fit.call.control)
    kwargs = {"tol": float(control["tol"])} if "tol" in control else {}
    try:
        if native is None:
            # Newton steps straight from the fit's optimum, about one standard error away: 3.5x
            # quicker than L-BFGS first on pystan (sleepstudy: 0.10 s vs 0.36 s a refit, same optima)
            info = maximize(density, [x0], scale, native=lambda x: x, **kwargs)
            if info.converged:
                return np.asarray(info.theta, float)
        info = maximize(density, [x0] + start_values(problem, fit_design, family), scale, native=native,
                        **kwargs)
        return np.asarray(info.theta, float) if info.converged else None
    finally:  # CmdStan's scratch files of this refit go now, also in a worker process
        for owner in (density, getattr(native, "workspace", None)):
            close = getattr(owner, "close", None)
            if callable(close):
                close()


def percentile_interval(t: np.ndarray, level: float) -> tuple[float, float]:
    """``boot.ci(type = "perc")``'s interval of the bootstrap values ``t`` (R's
    ``boot:::norm.inter``): order statistic ``(R + 1) alpha``, interpolated on the
    normal-quantile scale between its neighbours; non-finite values are dropped.

    >>> tuple(round(v, 6) for v in percentile_interval(np.arange(1.0, 40.0), 0.95))   # (39 + 1) * 0.025 = 1
    (1.0, 39.0)
    >>> tuple(round(v, 4) for v in percentile_interval(np.arange(1.0, 21.0), 0.8))   # between order statistics
    (2.1143, 18.8857)
    """
    t = np.sort(np.asarray(t, float)[np.isfinite(t)])
    R = len(t)
    if R == 0:
        return math.nan, math.nan
    out = []
    for alpha in ((1 - level) / 2, (1 + level) / 2):
        rk = (R + 1) * alpha
        k = int(math.trunc(rk))
        if k == rk:
            out.append(float(t[k - 1]))
        elif k <= 0:
            out.append(float(t[0]))
        elif k >= R:
            out.append(float(t[-1]))
        else:
            from scipy import stats  # on first use: slow to import
            q, qk, qk1 = stats.norm.ppf([alpha, k / (R + 1), (k + 1) / (R + 1)])
            out.append(float(t[k - 1] + (q - qk) / (qk1 - qk) * (t[k] - t[k - 1])))
    return out[0], out[1]


# --------------------------------------------------------------------------- the runs
_JOB: dict[str, Any] = {}  # the fit and the seeds, read by the forked workers


def _one(i: int) -> np.ndarray:
    """Simulation ``i``: its response, the refit, the parameters on lme4's scale (NaN: failed)."""
    fit, rp, seeds = _JOB["fit"], _JOB["reparam"], _JOB["seeds"]
    nan = np.full(len(rp.names), np.nan)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = refit_response(fit, simulate_response(fit, np.random.default_rng(seeds[i])))
    except Exception:  # a refit that fails counts as failed, as in lme4's bootMer
        return nan
    if x is None:
        return nan
    u = rp.from_x(x)
    return np.array([rp.natural(j, v) for j, v in enumerate(u)])


def _chunk(indices: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    return [(i, _one(i)) for i in indices]


def _resolve_cores(cores: int | None) -> int:
    if cores is None:
        return 1
    if isinstance(cores, bool) or not isinstance(cores, (int, np.integer)) or (cores < 1 and cores != -1):
        raise ArgumentError(f"cores must be a positive integer (or -1 for every CPU), not {cores!r}.")
    return (os.cpu_count() or 1) if cores == -1 else int(cores)


def boot_confint(fit: Any, level: float = 0.95, parm: Sequence[str] | None = None, *, nsim: int = 500,
                 seed: int | None = None, cores: int | None = 1, progress: bool = True) -> pd.DataFrame:
    """lme4's ``confint(m, method = "boot")``: parametric-bootstrap percentile intervals.

    ``nsim`` simulations (lme4's default 500) from ``seed`` (drawn when None; the seed used
    is in ``result.attrs["seed"]``); ``cores`` processes share the refits (``-1``: every
    CPU), with the same result for any number of them; ``progress`` shows one bar of the
    refits done on stderr. Refits that fail are left out with a warning naming how many,
    as lme4 does. A REML fit is refitted by REML (lme4's ``refit``). Rows and columns as
    :func:`stanhier.ml.profile.profile_confint`; ``result.attrs["boot"]`` holds the
    ``nsim`` x parameters table of refitted values (NaN rows: failed refits).
    """
    if not 0 < level < 1:
        raise ArgumentError(f"level must be between 0 and 1, got {level!r}.")
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim < 2:
        raise ArgumentError(f"nsim must be an integer of at least 2 (lme4's default is 500), not {nsim!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ArgumentError(f"seed must be a non-negative integer, not {seed!r}.")
    n_cores = min(_resolve_cores(cores), int(nsim))
    rp = Reparam(fit)
    wanted = list(range(len(rp.names))) if parm is None else [rp.names.index(p) if p in rp.names else -1
                                                               for p in parm]
    if -1 in wanted:
        bad = [p for p, w in zip(parm or [], wanted) if w == -1]
        raise ArgumentError(f"Unknown parameter(s) {bad}; bootstrap intervals are for {rp.names}.")
    seed = fresh_seed() if seed is None else int(seed)
    _JOB.update(fit=fit, reparam=rp, seeds=np.random.SeedSequence(seed).spawn(int(nsim)))
    values = np.full((int(nsim), len(rp.names)), np.nan)
    bar = TaskProgress(int(nsim), "Parametric bootstrap", unit="refits", enabled=progress)
    ok = False
    try:
        if n_cores == 1:
            for i in range(int(nsim)):
                values[i] = _one(i)
                bar.update(1)
        else:
            import multiprocessing as mp

            # forked workers share the fit, its compiled program and its data with this process
            n_chunks = min(int(nsim), 25 * n_cores)  # small chunks: the bar moves, the cores stay busy
            chunks = [list(range(int(nsim)))[k::n_chunks] for k in range(n_chunks)]
            with ProcessPoolExecutor(max_workers=n_cores, mp_context=mp.get_context("fork")) as pool:
                for future in as_completed([pool.submit(_chunk, c) for c in chunks if c]):
                    done = future.result()
                    for i, row in done:
                        values[i] = row
                    bar.update(len(done))
        ok = True
    finally:
        bar.close(ok)
        _JOB.clear()
    failed = int(np.sum(~np.all(np.isfinite(values), axis=1)))
    if failed == nsim:
        raise SamplingError(f"Every one of the {nsim} bootstrap refits failed; the model cannot be refitted to "
                            "data simulated from it (check fit.converged and fit.is_singular()).")
    if failed:
        warnings.warn(f"{failed} of {nsim} bootstrap refits failed to converge and are left out of the "
                      "intervals.", StanhierWarning, stacklevel=user_stacklevel())
    lo_name, hi_name = f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"
    rows = [percentile_interval(values[:, j], level) for j in wanted]
    out = pd.DataFrame(rows, index=[rp.names[j] for j in wanted], columns=[lo_name, hi_name])
    out.attrs["seed"] = seed
    out.attrs["nsim"] = int(nsim)
    out.attrs["boot"] = pd.DataFrame(values, columns=rp.names)
    return out
