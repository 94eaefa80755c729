"""Laplace GLMM on the crossed layout: PIRLS with the blocked factorization of ml/crossed.py.

For crossed/nested scalar random-effects terms (random intercepts, or ``(0 + x | g)``)
beyond the stacked layout, with Poisson, binomial or Bernoulli responses (``nAGQ = 1``):
for given (beta, theta) the conditional mode of the spherical random effects u is found by
penalized iteratively reweighted least squares (Newton on
``sum log p(y | eta) - |u|^2 / 2``, eta = X beta + Z Lambda u, with step halving); each
Newton system ``H = Lambda' Z' W Z Lambda + I`` is factored by the same blocks as the
Gaussian case (diagonal block of the largest factor + dense Schur complement). lme4's
Laplace deviance ``-2 sum log p(y | mu) + |u|^2 + log|H|`` is minimized over (beta, theta)
by COBYQA (lme4: bobyqa over the same variables). The Stan program of this model is
``ml_glmm.stan`` (the stacked layout, for sizes where it fits); a test checks that its log
density equals this evaluator at the optimum on a design small enough for it.

Example
-------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(2)
>>> df = pd.DataFrame({"a": rng.integers(0, 30, 600), "b": rng.integers(0, 10, 600)})
>>> df["y"] = rng.poisson(np.exp(0.5 + 0.5 * rng.normal(size=30)[df.a] + 0.3 * rng.normal(size=10)[df.b]))
>>> fit = glmer_crossed("y ~ 1 + (1 | a) + (1 | b)", df, family="poisson")
>>> fit.evaluator.split(":")[0]
'numpy blocked Cholesky (Laplace, PIRLS)'
"""

from __future__ import annotations

import math
import time
import warnings
from functools import cached_property
from typing import Any

import numpy as np
from scipy import optimize as sopt
from scipy import sparse

from ..errors import ArgumentError, DataError, StanhierWarning
from ..families import Family, get_family
from ..model.design import Design, data_label, make_design
from ..model.formula import parse_formula
from .crossed import (CrossedLayout, CrossedLMM, StanProgramText, CrossedModes, ProblemSizes,
                      z_matrix, build_crossed_layout, needs_crossed, single_threaded_blas)
from .problem import MAX_DENSE_CELLS
from .fit import MerFit, MLCall
from .optimizer import OptimumInfo
from .problem import glm_irls, stan_program

__all__ = ["CrossedGLMM", "CrossedGlmerFit", "fit_crossed_glmm", "glmer_crossed", "glmm_needs_crossed",
           "GLMM_FAMILIES", "EVALUATOR_GLMM"]

GLMM_FAMILIES = ("poisson", "binomial", "bernoulli")
EVALUATOR_GLMM = ("numpy blocked Cholesky (Laplace, PIRLS): diagonal block of the largest factor + dense "
                  "Schur complement (stanhier.ml.crossed_glmm); Stan program ml_glmm.stan defines the model")
_PIRLS_TOL = 1e-10
_PIRLS_MAX_ITER = 60


def glmm_needs_crossed(design: Design, family: Family, nAGQ: int) -> bool:
    """True for a Laplace GLMM (Poisson/binomial/Bernoulli, scalar terms, several grouping
    factors) that the stacked layout cannot hold: more than MAX_STACKED_Q random effects or a
    dense N x q design above MAX_DENSE_CELLS."""
    terms = design.terms
    if nAGQ != 1 or family.name not in GLMM_FAMILIES or any(gt.M != 1 for gt in terms):
        return False
    if len({gt.term.group for gt in terms}) < 2:
        return False
    q = sum(gt.n_levels for gt in terms)
    return needs_crossed(design) or design.N * q > MAX_DENSE_CELLS


class CrossedGLMM:
    """The Laplace deviance of a crossed GLMM as a function of (beta, theta)."""

    def __init__(self, design: Design, lay: CrossedLayout, family: Family) -> None:
        if any(s.M != 1 for s in lay.slots):
            raise DataError(
                "glmer on crossed/nested factors beyond the stacked layout handles scalar random-effects "
                "terms only (such as '(1 | g)' or '(0 + x | g)'); this model has a term with several "
                "coefficients. Use '||' terms split into scalars, fewer levels, or the Bayesian brm().")
        self.design, self.layout, self.family = design, lay, family
        self.Z = z_matrix(design, lay).tocsc()
        self.Z1 = self.Z[:, :lay.q1].tocsr()
        self.Z2 = self.Z[:, lay.q1:].tocsc()
        self.J1 = design.terms[lay.slots[0].index].J
        self.z1 = np.asarray(self.Z1.sum(axis=1)).ravel()
        self.y = np.asarray(design.y, float)
        self.n = (np.asarray(design.trials, float) if family.name == "binomial" and design.trials is not None
                  else np.ones_like(self.y))
        self.trials = self.n if family.uses_trials else None
        self.u = np.zeros(lay.q)  # warm start of PIRLS
        self.n_pirls = 0

    # ------------------------------------------------------------ family pieces
    def loglik(self, eta: np.ndarray) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            ll = float(np.sum(self.family.loglik(self.y, eta, {}, self.trials)))
        return ll if not np.isnan(ll) else -math.inf  # mu outside the family's range (identity link...)

    def derivs(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score and PIRLS weight (Fisher information: lme4's, also at non-canonical links)."""
        score, w = self.family.glm_working(self.y, eta, {}, self.trials)
        return score, np.maximum(w, 1e-300)

    # ------------------------------------------------------------ blocked factorization of H
    def factor(self, theta: np.ndarray, w: np.ndarray) -> tuple[CrossedLMM, dict]:
        """H = Lambda' Z' W Z Lambda + I, factored by ``CrossedLMM.factor`` (dummy fixed part)."""
        lay = self.layout
        B = self._b(w)
        Zw2 = self.Z2.multiply(w[:, None]).tocsc()
        T = (self.Z1.T @ Zw2).tocsr()
        Z22 = (self.Z2.T @ Zw2).tocsr()
        prob = CrossedLMM(N=2, K=1, REML=False, B=B, T=T, Z22=Z22, V=np.zeros((lay.q, 2)),
                          XtX=np.eye(1), Xty=np.zeros(1), yty=1.0, layout=lay)
        return prob, prob.factor(theta)

    def _b(self, w: np.ndarray) -> np.ndarray:
        """Diagonal of Z1' W Z1 (the first term is scalar: one entry per row of Z1)."""
        return np.bincount(self.J1, w * self.z1 * self.z1, minlength=self.layout.L1)[:, None, None]

    def lam(self, theta: np.ndarray) -> np.ndarray:
        out = np.zeros(self.layout.q)
        out[self.layout.lam_row - 1] = np.asarray(theta)[self.layout.lam_par - 1]
        return out

    def pirls(self, beta: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray, CrossedLMM, dict]:
        """Conditional mode u at (beta, theta); returns (Laplace deviance, u, factorization)."""
        lam = self.lam(theta)
        ZL = self.Z @ sparse.diags(lam)
        eta0 = self.design.X @ beta
        u = self.u.copy()
        eta = eta0 + ZL @ u
        h = self.loglik(eta) - 0.5 * u @ u
        if not np.isfinite(h):
            u = np.zeros_like(u)
            eta = eta0.copy()
            h = self.loglik(eta) - 0.5 * u @ u
        for _ in range(_PIRLS_MAX_ITER):
            self.n_pirls += 1
            dl, w = self.derivs(eta)
            grad = ZL.T @ dl - u
            prob, f = self.factor(theta, w)
            step = prob.solve_spherical(f, grad)
            dec = float(grad @ step)
            if dec < _PIRLS_TOL:
                # converged for h; one more full Newton step makes u accurate to O(dec) too, so
                # that log|H(u)| (linear in the error of u) is as accurate as h
                u = u + step
                eta = eta0 + ZL @ u
                h = self.loglik(eta) - 0.5 * u @ u
                break
            t = 1.0
            while t > 1e-10:
                new = u + t * step
                eta_new = eta0 + ZL @ new
                h_new = self.loglik(eta_new) - 0.5 * new @ new
                if np.isfinite(h_new) and h_new >= h - 1e-12 * abs(h):
                    break
                t /= 2
            u, eta, h = new, eta_new, h_new
        dl, w = self.derivs(eta)
        prob, f = self.factor(theta, w)
        self.u = u
        return -2 * h + f["logdet"], u, prob, f

    def deviance(self, x: np.ndarray) -> float:
        K = self.design.X.shape[1]
        try:
            return self.pirls(x[:K], x[K:])[0]
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return math.inf


class CrossedGlmerFit(MerFit):
    """A GLMM fitted on the crossed layout (Laplace); lme4's accessors as :class:`MerFit`."""

    evaluator: str = EVALUATOR_GLMM

    def __init__(self, *, glmm: CrossedGLMM, hessian: np.ndarray | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.glmm = glmm
        self._hess = hessian

    @cached_property
    def _fixed(self):
        return self.glmm.pirls(self.fixef().to_numpy(), self.theta)

    @cached_property
    def _vcov(self) -> np.ndarray:
        K = self.problem.K
        H = self._hess
        try:
            np.linalg.cholesky(H)
            cov = np.linalg.inv(H)[:K, :K]
            self.vcov_method = ("inverse finite-difference Hessian of the Laplace deviance / 2 over "
                                "(beta, theta), as lme4's default")
        except (np.linalg.LinAlgError, TypeError):
            cov = np.full((K, K), np.nan)
            self.vcov_method = "not available: the Hessian over (beta, theta) is not positive definite"
        return (cov + cov.T) / 2

    @cached_property
    def _modes(self):
        with single_threaded_blas():
            _, u, prob, f = self._fixed
            b = self.glmm.lam(self.theta) * u
            cov = prob.mode_covariances(f, 1.0)
        return CrossedModes(b=b[None, :], cov=cov)

    def standata(self) -> dict:
        raise ArgumentError("This fit ran on the blocked evaluator; ml_glmm.stan's data are built by "
                            "stanhier.ml.problem.glmm_problem for designs within the stacked layout.")

    def summary(self, *args: Any, **kwargs: Any) -> str:
        lines = super().summary(*args, **kwargs).split("\n")
        at = next((i for i, s in enumerate(lines) if s.startswith("   Data:")), 1)
        lines.insert(at + 1, f"Evaluator: {self.evaluator.split(';')[0]}")
        return "\n".join(lines)


def _fd_hessian(fun, x: np.ndarray, rel: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference (gradient, Hessian) of ``fun`` at ``x``."""
    n = len(x)
    h = rel * np.maximum(1.0, np.abs(x))
    f0 = fun(x)
    H = np.empty((n, n))
    g = np.empty(n)
    for i in range(n):
        ei = np.zeros(n)
        ei[i] = h[i]
        fp, fm = fun(x + ei), fun(x - ei)
        g[i] = (fp - fm) / (2 * h[i])
        H[i, i] = (fp - 2 * f0 + fm) / h[i] ** 2
        for j in range(i):
            ej = np.zeros(n)
            ej[j] = h[j]
            H[i, j] = H[j, i] = (fun(x + ei + ej) - fun(x + ei - ej) - fun(x - ei + ej)
                                 + fun(x - ei - ej)) / (4 * h[i] * h[j])
    return g, H


def fit_crossed_glmm(call: MLCall, design: Design, family: Family, *,
                     tol: float = 1e-6) -> CrossedGlmerFit:
    """Laplace GLMM on the crossed layout (see the module docstring)."""
    if family.name not in GLMM_FAMILIES:
        raise DataError(f"glmer on crossed/nested factors beyond the stacked layout supports the families "
                        f"{', '.join(GLMM_FAMILIES)} (not {family.name!r}); use fewer levels or brm().")
    t0 = time.perf_counter()
    lay = build_crossed_layout(design)
    glmm = CrossedGLMM(design, lay, family)
    K = design.X.shape[1]
    beta0 = glm_irls(design.X, glmm.y, family, glmm.n)
    x0 = np.concatenate([beta0, np.ones(lay.n_theta)])
    lower = np.concatenate([np.full(K, -np.inf), np.zeros(lay.n_theta)])
    count = {"n": 0}

    def fun(x):
        count["n"] += 1
        return glmm.deviance(x)

    with single_threaded_blas():
        res = sopt.minimize(fun, x0, method="COBYQA", bounds=sopt.Bounds(lower, np.full(len(x0), np.inf)),
                            options={"initial_tr_radius": 0.2, "final_tr_radius": tol, "maxfev": 5000})
        x = np.concatenate([res.x[:K], np.maximum(res.x[K:], 0.0)])
        dev = fun(x)
        grad, H = _fd_hessian(fun, x) if np.all(x[K:] > 1e-4) else (np.full(len(x), np.nan), None)
        H = None if H is None else H / 2  # Hessian of -logLik
        grad = -grad / 2  # gradient of logLik (diagnostics)
        fun(x)  # leave the warm start at the optimum
    ok = bool(np.isfinite(dev) and res.success)
    info = OptimumInfo(theta=x, lp=-0.5 * dev, grad=grad, hessian=None, converged=ok,
                       message="converged" if ok else str(res.message), n_evals=count["n"], n_starts=1,
                       seconds=time.perf_counter() - t0)
    problem = ProblemSizes(kind="glmm", K=K, n_theta=lay.n_theta, n_aux=0)
    fit = CrossedGlmerFit(glmm=glmm, hessian=H, call=call, design=design, layout=lay,
                          family=family, problem=problem,
                          model=StanProgramText(stan_program("glmm")), density=None, optimum=info)
    if not ok:
        warnings.warn(f"Model failed to converge: {res.message}", StanhierWarning, stacklevel=3)
    if fit.is_singular():
        warnings.warn("boundary (singular) fit: a variance is ~0 or a correlation ~±1 (fit.is_singular())", StanhierWarning, stacklevel=3)
    return fit


def glmer_crossed(formula: str, data: Any, family: str | Family = "poisson", *,
                  na_action: str = "drop", collinear: str = "drop") -> CrossedGlmerFit:
    """``glmer`` (Laplace) through the blocked evaluator whatever the number of random effects
    (``glmer`` dispatches here by itself beyond the stacked limit)."""
    fam = get_family(family)
    design = make_design(parse_formula(formula), data, na_action=na_action, collinear=collinear)
    if len({gt.term.group for gt in design.terms}) < 2:
        raise DataError(f"glmer_crossed needs random terms in at least two grouping factors; {formula!r} "
                        "has fewer: use glmer().")
    call = MLCall(kind="glmm", formula=formula, family=fam.name, link=fam.link, nAGQ=1,
                  data_name=data_label(data))
    return fit_crossed_glmm(call, design, fam)
