"""Laplace GLMM on the crossed layout: PIRLS with the blocked factorization of ml/crossed.py.

For crossed/nested scalar random-effects terms (random intercepts, or ``(0 + x | g)``)
beyond the stacked layout, and for small designs with any terms (``(x | g)``, ``(x || g)``),
with Poisson, binomial or Bernoulli responses (``nAGQ = 1``):
for given (beta, theta) the conditional mode of the spherical random effects u is found by
penalized iteratively reweighted least squares (Newton on
``sum log p(y | eta) - |u|^2 / 2``, eta = X beta + Z Lambda u, with step halving); each
Newton system ``H = Lambda' Z' W Z Lambda + I`` is factored by the same blocks as the
Gaussian case (diagonal block of the largest factor + dense Schur complement; M x M blocks
per level for a largest term with M coefficients, Lambda from ``CrossedLayout.Lambda``). lme4's
Laplace deviance ``-2 sum log p(y | mu) + |u|^2 + log|H|`` is minimized over (beta, theta)
by COBYQA (lme4: bobyqa over the same variables). The Stan program of this model is
``ml_glmm.stan`` (the stacked layout, for sizes where it fits); a test checks that its log
density equals this evaluator at the optimum on a design small enough for it.

Small designs (a Schur complement of at most ``MAX_QUICK_Q2`` effects, e.g. one grouping
factor, or lme4's grouseticks) also run here: Z'WZ's blocks (scalar terms) are summed with ``bincount``
over index patterns fixed at the start, theta is first optimized with beta inside PIRLS
(lme4's ``nAGQ = 0`` stage), then (beta, theta) by L-BFGS-B on central differences with
beta scaled by its curvature (and, for terms with several coefficients, each theta by the root
of its curvature: slopes on wide covariates are steep). Standard errors: the finite-difference
Hessian of the deviance over (beta, theta), as lme4 (at a boundary of scalar terms: over beta).

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
from scipy import linalg as sla
from scipy import sparse

from ..errors import ArgumentError, DataError, StanhierWarning
from ..families import Family, get_family
from ..model.design import Design, data_label, make_design
from ..model.formula import parse_formula
from .crossed import (MAX_QUICK_Q2, CrossedLayout, CrossedLMM, CrossedModes, GramPairs, ProblemSizes,
                      StanDefined, StanProgramText, blocked_is_quick, build_crossed_layout, checked_optimum,
                      evaluator_text, first_block_gram, lower_bounds, minimize_bounded, needs_crossed,
                      single_threaded_blas, within_stacked, z_matrix)
from .fit import MerFit, MLCall
from .optimizer import OptimumInfo
from .problem import MAX_DENSE_CELLS, glm_irls, stan_program

__all__ = ["CrossedGLMM", "CrossedGlmerFit", "fit_crossed_glmm", "glmer_crossed", "glmm_needs_crossed",
           "glmm_is_quick", "user_start",
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


def glmm_is_quick(design: Design, family: Family, nAGQ: int) -> bool:
    """True for a Laplace GLMM (Poisson/binomial/Bernoulli at the canonical link, rows in memory)
    whose blocked factorization is quick (:func:`~stanhier.ml.crossed.blocked_is_quick`): the numpy
    evaluator then beats Stan's per-call overhead (and needs no compile), whatever the number of
    grouping factors; terms with several coefficients (``(x | g)``, ``(x || g)``) included."""
    return (nAGQ == 1 and family.name in GLMM_FAMILIES and family.link == get_family(family.name).link
            and blocked_is_quick(design))


class CrossedGLMM:
    """The Laplace deviance of a crossed GLMM as a function of (beta, theta)."""

    def __init__(self, design: Design, lay: CrossedLayout, family: Family) -> None:
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
        self.beta = np.zeros(design.X.shape[1])  # warm start of the joint PIRLS (nAGQ = 0)
        self.beta_curvature = np.eye(design.X.shape[1])
        self.n_pirls = 0
        self.Zr = self.Z.tocsr()
        self.Zt = self.Z.T.tocsr()
        self.quick = lay.q2 <= MAX_QUICK_Q2
        # scalar terms: Lambda diagonal, Z'WZ summed over fixed index patterns (quick_factor);
        # terms with several coefficients: CrossedLMM.factor's blocks (M1 x M1 per level)
        self._no_schur = (sparse.csr_matrix((lay.q1, 0)), sparse.csr_matrix((0, 0)))
        self.scalar = all(s.M == 1 for s in lay.slots)
        self.patterns = self.quick and self.scalar
        if self.patterns:
            self._index_patterns()

    def _index_patterns(self) -> None:
        """Fixed sparsity of Z1'WZ2 and Z2'WZ2: each call sums w-weighted products into them
        with ``bincount`` over precomputed positions (no sparse matrices built per call)."""
        lay = self.layout
        q2 = lay.q2
        Z2 = self.Z2.tocsr()
        Z2.sort_indices()
        obs = np.repeat(np.arange(Z2.shape[0]), np.diff(Z2.indptr))
        key = self.J1[obs].astype(np.int64) * max(q2, 1) + Z2.indices
        t_keys, self.t_inv = np.unique(key, return_inverse=True)
        self.t_obs, self.t_z = obs, self.z1[obs] * Z2.data
        self.t_row, self.t_col = t_keys // max(q2, 1), t_keys % max(q2, 1)
        T = sparse.csr_matrix((np.ones(len(t_keys)), (self.t_row, self.t_col)), shape=(lay.q1, q2))
        self.gram = GramPairs.build(T, entries=True) if q2 else None
        # Z2'WZ2, dense: every ordered pair of a row's entries
        nnz = np.diff(Z2.indptr)
        rows, flat, zz = [], [], []
        for n in np.unique(nnz[nnz > 0]):
            sel = np.flatnonzero(nnz == n)
            pos = Z2.indptr[sel][:, None] + np.arange(n)[None, :]
            a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            rows.append(np.repeat(sel, n * n))
            flat.append((Z2.indices[pos][:, a.ravel()] * q2 + Z2.indices[pos][:, b.ravel()]).ravel())
            zz.append((Z2.data[pos][:, a.ravel()] * Z2.data[pos][:, b.ravel()]).ravel())
        self.w22_obs = np.concatenate(rows) if rows else np.zeros(0, int)
        self.w22_flat = np.concatenate(flat) if flat else np.zeros(0, int)
        self.w22_z = np.concatenate(zz) if zz else np.zeros(0)

    def quick_factor(self, lam: np.ndarray, w: np.ndarray) -> dict:
        """H = Lambda' Z' W Z Lambda + I (Lambda diagonal, ``lam``) by blocks: diagonal first
        block, dense Schur complement of the others (as ``CrossedLMM.factor``)."""
        lay = self.layout
        q1, q2 = lay.q1, lay.q2
        l1, d2 = lam[:q1], lam[q1:]
        a11 = l1 * l1 * np.bincount(self.J1, w * self.z1 * self.z1, minlength=lay.L1) + 1.0
        logdet = float(np.sum(np.log(a11)))
        if not q2:
            return dict(a11=a11, l1=l1, d2=d2, logdet=logdet, tdata=None, CS=None)
        tdata = np.bincount(self.t_inv, w[self.t_obs] * self.t_z, minlength=len(self.t_row))
        W22 = np.bincount(self.w22_flat, w[self.w22_obs] * self.w22_z, minlength=q2 * q2).reshape(q2, q2)
        S = (W22 - self.gram.weighted_gram(l1 * l1 / a11, q2, tdata)) * d2[:, None] * d2[None, :]
        S[np.diag_indices(q2)] += 1.0
        CS = sla.cholesky(S, lower=True, check_finite=False)
        logdet += 2 * float(np.sum(np.log(np.diag(CS))))
        return dict(a11=a11, l1=l1, d2=d2, logdet=logdet, tdata=tdata, CS=CS)

    def quick_solve(self, f: dict, g: np.ndarray) -> np.ndarray:
        """H^-1 g with H factored by :meth:`quick_factor` (blocked substitution)."""
        q1 = self.layout.q1
        g1, g2 = g[:q1], g[q1:]
        a11, l1, d2 = f["a11"], f["l1"], f["d2"]
        if f["CS"] is None:
            return g1 / a11
        L1, q2, td = self.layout.L1, self.layout.q2, f["tdata"]
        x1 = l1 * g1 / a11
        rhs2 = g2 - d2 * np.bincount(self.t_col, td * x1[self.t_row], minlength=q2)
        u2 = sla.cho_solve((f["CS"], True), rhs2, check_finite=False)
        a12u2 = l1 * np.bincount(self.t_row, td * (d2 * u2)[self.t_col], minlength=L1)
        return np.concatenate([(g1 - a12u2) / a11, u2])

    # ------------------------------------------------------------ family pieces
    def loglik(self, eta: np.ndarray) -> float:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a trial step may overflow
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
        if lay.q2:
            Zw2 = self.Z2.multiply(w[:, None]).tocsc()
            T = (self.Z1.T @ Zw2).tocsr()
            Z22 = (self.Z2.T @ Zw2).tocsr()
        else:  # one grouping factor: H is block-diagonal (B only)
            T, Z22 = self._no_schur
        prob = CrossedLMM(N=2, K=1, REML=False, B=B, T=T, Z22=Z22, V=np.zeros((lay.q, 2)),
                          XtX=np.eye(1), Xty=np.zeros(1), yty=1.0, layout=lay)
        return prob, prob.factor(theta)

    def _b(self, w: np.ndarray) -> np.ndarray:
        """(L1, M1, M1) diagonal blocks of Z1' W Z1."""
        return first_block_gram(self.design, self.layout, w)

    def pirls(self, beta: np.ndarray, theta: np.ndarray, joint: bool = False
              ) -> tuple[float, np.ndarray, np.ndarray]:
        """Conditional mode u at (beta, theta): (Laplace deviance, u, the weights at u).

        ``joint``: beta is optimized with u (lme4's ``nAGQ = 0`` deviance, its first stage);
        the optimum's beta is left in ``self.beta`` and its curvature X'WX minus the part the
        random effects take (Schur complement on beta) in ``self.beta_curvature``."""
        Lam = self.layout.Lambda(theta)
        LamT = Lam.T.tocsr()
        X = self.design.X
        K = X.shape[1]

        def eta_of(b, u):
            return X @ b + self.Zr @ (Lam @ u)

        def factorized(w):
            if self.patterns:
                f = self.quick_factor(Lam.diagonal(), w)
                return f["logdet"], lambda g: self.quick_solve(f, g)
            prob, f = self.factor(theta, w)
            return f["logdet"], lambda g: prob.solve_spherical(f, g)

        def newton(b, u, eta):
            dl, w = self.derivs(eta)
            g_u = LamT @ (self.Zt @ dl) - u
            _, solve = factorized(w)
            d_u = solve(g_u)
            if not joint:
                return np.zeros(K), d_u, float(g_u @ d_u)
            ZWX = LamT @ (self.Zt @ (w[:, None] * X))
            HZ = np.column_stack([solve(ZWX[:, k]) for k in range(K)])
            Sb = (X.T * w) @ X - ZWX.T @ HZ
            self.beta_curvature = (Sb + Sb.T) / 2
            g_b = X.T @ dl
            d_b = np.linalg.solve(self.beta_curvature, g_b - ZWX.T @ d_u)
            d_u = d_u - HZ @ d_b
            return d_b, d_u, float(g_b @ d_b + g_u @ d_u)

        b = np.asarray(self.beta if joint else beta, float).copy()
        u = self.u.copy()
        eta = eta_of(b, u)
        h = self.loglik(eta) - 0.5 * u @ u
        if not np.isfinite(h):
            u = np.zeros_like(u)
            eta = eta_of(b, u)
            h = self.loglik(eta) - 0.5 * u @ u
        for _ in range(_PIRLS_MAX_ITER):
            self.n_pirls += 1
            d_b, d_u, dec = newton(b, u, eta)
            if dec < _PIRLS_TOL:
                # converged for h; one more full Newton step makes u accurate to O(dec) too, so
                # that log|H(u)| (linear in the error of u) is as accurate as h
                b, u = b + d_b, u + d_u
                eta = eta_of(b, u)
                h = self.loglik(eta) - 0.5 * u @ u
                break
            t = 1.0
            while t > 1e-10:
                b_new, u_new = b + t * d_b, u + t * d_u
                eta_new = eta_of(b_new, u_new)
                h_new = self.loglik(eta_new) - 0.5 * u_new @ u_new
                if np.isfinite(h_new) and h_new >= h - 1e-12 * abs(h):
                    break
                t /= 2
            b, u, eta, h = b_new, u_new, eta_new, h_new
        dl, w = self.derivs(eta)
        logdet = factorized(w)[0]
        self.u = u
        if joint:
            self.beta = b
        return -2 * h + logdet, u, w

    def deviance(self, x: np.ndarray) -> float:
        """Laplace deviance at x = (beta, theta)."""
        K = self.design.X.shape[1]
        try:
            return self.pirls(x[:K], x[K:])[0]
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return math.inf

    def deviance0(self, theta: np.ndarray) -> float:
        """lme4's ``nAGQ = 0`` deviance at theta (beta optimized with u, from ``self.beta``)."""
        try:
            return self.pirls(self.beta, theta, joint=True)[0]
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return math.inf


class CrossedGlmerFit(StanDefined, MerFit):
    """A Laplace GLMM fitted by the numpy evaluator; lme4's accessors as :class:`MerFit`."""

    evaluator: str = EVALUATOR_GLMM

    def __init__(self, *, glmm: CrossedGLMM, hessian: np.ndarray | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.glmm = glmm
        self._hess = hessian

    def refit_response(self, y: np.ndarray) -> np.ndarray | None:
        """The optimum (beta, theta) of this model refitted to the response ``y`` on this
        evaluator, started at this fit's optimum (parametric bootstrap); None if it fails."""
        import dataclasses

        design = dataclasses.replace(self.design, y=np.asarray(y, float))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = fit_crossed_glmm(self.call, design, self.family, hessian=False,
                                   start={"beta": self.fixef().to_numpy(), "theta": self.theta})
        return np.asarray(new.optimum.theta, float) if new.converged else None

    @cached_property
    def _fixed(self):
        return self.glmm.pirls(self.fixef().to_numpy(), self.theta)

    @cached_property
    def _vcov(self) -> np.ndarray:
        K = self.problem.K
        H = self._hess
        try:
            if H is None or H.shape != (K + self.problem.n_theta,) * 2:
                raise np.linalg.LinAlgError("no Hessian over theta")
            np.linalg.cholesky(H)
            cov = np.linalg.inv(H)[:K, :K]
            self.vcov_method = ("inverse finite-difference Hessian of the Laplace deviance / 2 over "
                                "(beta, theta), as lme4's default")
        except (np.linalg.LinAlgError, TypeError):
            try:  # singular fit: conditional on theta, as MerFit does
                np.linalg.cholesky(H[:K, :K])
                cov = np.linalg.inv(H[:K, :K])
                self.vcov_method = ("inverse Hessian over beta only (conditional on theta): the full "
                                    "Hessian is not positive definite (singular fit)")
            except (np.linalg.LinAlgError, TypeError):
                cov = np.full((K, K), np.nan)
                self.vcov_method = "not available: the Hessian over (beta, theta) is not positive definite"
        return (cov + cov.T) / 2

    @cached_property
    def _modes(self):
        with single_threaded_blas():
            _, u, w = self._fixed
            prob, f = self.glmm.factor(self.theta, w)
            b = self.glmm.layout.Lambda(self.theta) @ u
            cov = prob.mode_covariances(f, 1.0)
        return CrossedModes(b=b[None, :], cov=cov)

    def _blocked_standata(self) -> dict:
        raise ArgumentError("This fit ran on the blocked evaluator beyond the stacked layout; ml_glmm.stan's "
                            "data are built by stanhier.ml.problem.glmm_problem for designs within it.")

    def summary(self, *args: Any, **kwargs: Any) -> str:
        return "\n".join(self.evaluator_line(super().summary(*args, **kwargs).split("\n")))


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


def fit_crossed_glmm(call: MLCall, design: Design, family: Family, *, tol: float = 1e-6,
                     start: dict | None = None, optimum: np.ndarray | None = None,
                     hessian: bool = True) -> CrossedGlmerFit:
    """Laplace GLMM by the numpy evaluator (see the module docstring). Quick designs (Schur
    complement of at most ``MAX_QUICK_Q2`` effects): as lme4, theta is first optimized with beta
    inside PIRLS (its ``nAGQ = 0`` stage), then (beta, theta) by L-BFGS-B on central differences;
    larger ones by COBYQA over (beta, theta). ``start``: ``{"beta": .., "theta": ..}``;
    ``optimum``: a recorded (beta, theta), evaluated without optimizing; ``hessian=False``: no
    standard errors (refits that need the optimum only)."""
    if family.name not in GLMM_FAMILIES:
        raise DataError(f"glmer on crossed/nested factors beyond the stacked layout supports the families "
                        f"{', '.join(GLMM_FAMILIES)} (not {family.name!r}); use fewer levels or brm().")
    t0 = time.perf_counter()
    lay = build_crossed_layout(design)
    glmm = CrossedGLMM(design, lay, family)
    K = design.X.shape[1]
    lower = np.concatenate([np.full(K, -np.inf), lower_bounds(lay)])
    count = {"n": 0}

    def fun(x):
        count["n"] += 1
        return glmm.deviance(x)

    with single_threaded_blas():
        if optimum is not None:
            x = checked_optimum(optimum, K + lay.n_theta)
            ok, message = True, "converged"
        else:
            x0 = np.concatenate([glm_irls(design.X, glmm.y, family, design.trials), np.ones(lay.n_theta)])
            glmm.beta = x0[:K].copy()
            if start:
                x0 = user_start(start, x0, K, lay.n_theta)
            elif glmm.quick:  # lme4's first stage: theta with beta inside PIRLS (nAGQ = 0)
                x0[K:], _, _, _, _ = minimize_bounded(glmm.deviance0, x0[K:], lower[K:], tol=tol, quick=True,
                                                      max_evals=2000)
                glmm.deviance0(x0[K:])
                x0[:K] = glmm.beta
            # beta in the coordinates z = R (beta - beta0), R' R = its curvature at the start: unit
            # curvature in every direction of beta (L-BFGS-B then needs few steps)
            R = _curvature_root(glmm, x0) if glmm.quick else np.eye(K)
            b0 = x0[:K].copy()
            # theta of slopes on wide covariates is steep: z = s theta, s = its curvature's root (bounds kept)
            s = _theta_scale(fun, x0, K) if glmm.quick and not glmm.scalar else np.ones(lay.n_theta)

            def to_x(z):
                return np.concatenate([b0 + sla.solve_triangular(R, z[:K], check_finite=False), z[K:] / s])

            def fun_z(z):
                return fun(to_x(z))

            z0 = np.concatenate([np.zeros(K), x0[K:] * s])
            z, _, ok, message, _ = minimize_bounded(fun_z, z0, lower, tol=tol, quick=glmm.quick, max_evals=5000)
            x = to_x(z)
        glmm.u = np.zeros(lay.q)  # PIRLS from u = 0 at x: the Hessian does not depend on the path here
        dev = fun(x)
        if not hessian:
            grad, H = np.full(len(x), np.nan), None
        elif np.all(x[K:] > 1e-4) or not glmm.scalar:
            # terms with several coefficients: over (beta, theta) also at the boundary, as lme4 (the
            # deviance is smooth in theta across 0; _vcov falls back to beta if not positive definite)
            grad, H = _fd_hessian(fun, x)
        else:  # at the boundary (singular fit): over beta only, theta held at the optimum
            grad, H = _fd_hessian(lambda b: fun(np.concatenate([b, x[K:]])), x[:K])
            grad = np.concatenate([grad, np.full(lay.n_theta, np.nan)])
        H = None if H is None else H / 2  # Hessian of -logLik
        grad = -grad / 2  # gradient of logLik (diagnostics)
        fun(x)  # leave the warm start at the optimum
    ok = bool(np.isfinite(dev) and ok)
    info = OptimumInfo(theta=x, lp=-0.5 * dev, grad=grad, hessian=None, converged=ok,
                       message="converged" if ok else message, n_evals=count["n"], n_starts=1,
                       seconds=time.perf_counter() - t0)
    problem = ProblemSizes(kind="glmm", K=K, n_theta=lay.n_theta, n_aux=0)
    fit = CrossedGlmerFit(glmm=glmm, hessian=H, call=call, design=design, layout=lay,
                          family=family, problem=problem,
                          model=StanProgramText(stan_program("glmm")), density=None, optimum=info)
    fit.stacked_args = ("glmm", False, family, 1) if within_stacked(design, "glmm") else None
    fit.evaluator = evaluator_text(lay, "stanhier.ml.crossed_glmm", "ml_glmm.stan",
                                   "numpy blocked Cholesky (Laplace, PIRLS)")
    if not ok:
        warnings.warn(f"Model failed to converge: {message}", StanhierWarning, stacklevel=3)
    if fit.is_singular():
        warnings.warn("boundary (singular) fit: a variance is ~0 or a correlation ~±1 (fit.is_singular())", StanhierWarning, stacklevel=3)
    return fit


def _theta_scale(fun, x: np.ndarray, K: int) -> np.ndarray:
    """Per theta, the root of the curvature of deviance / 2 at x (forward second differences,
    valid at the bound 0), at least 1: only the steep directions are rescaled."""
    f0 = fun(x)
    s = np.ones(len(x) - K)
    for k in range(len(s)):
        e = np.zeros(len(x))
        e[K + k] = 1e-3 * max(1.0, abs(x[K + k]))
        c = (fun(x + 2 * e) - 2 * fun(x + e) + f0) / e[K + k] ** 2 / 2
        s[k] = math.sqrt(c) if np.isfinite(c) and c > 1 else 1.0
    return s


def _curvature_root(glmm: CrossedGLMM, x: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of beta's curvature at x = (beta, theta) (the Schur complement of
    the joint PIRLS system; identity where it is not positive definite)."""
    K = glmm.design.X.shape[1]
    try:
        glmm.beta = x[:K].copy()
        glmm.pirls(x[:K], x[K:], joint=True)
        return np.linalg.cholesky(glmm.beta_curvature).T
    except (np.linalg.LinAlgError, ValueError, AttributeError):
        return np.eye(K)


def user_start(start: dict, x0: np.ndarray, K: int, n_theta: int) -> np.ndarray:
    """``start={"beta": [...], "theta": [...]}`` written into the default start ``x0`` = (beta, theta)."""
    x = x0.copy()
    for key, value in start.items():
        value = np.atleast_1d(np.asarray(value, float))
        if key == "theta" and len(value) == n_theta:
            x[K:] = value
        elif key in ("beta", "fixef") and len(value) == K:
            x[:K] = value
        else:
            raise ArgumentError(f"start[{key!r}] must be 'theta' (length {n_theta}) or 'beta' (length {K}).")
    return x


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
