"""The optimization problem of an ML fit: the Stan program, its data and the starting values.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import optimize as sopt
from scipy import sparse

from ..backends import get_backend
from ..backends.base import CompiledModel, LogDensity, fd_hessian
from ..model.design import Design, check_gaussian_groups, data_label, make_design
from ..errors import ArgumentError, DataError, FamilyError, FormulaError, SamplingError, StanhierWarning
from ..families import Family, get_family, glmm_families
from ..model.formula import parse_formula
from ..stan.templating import render
from .layout import RandomLayout

__all__ = ["MLProblem", "stan_program", "lmm_problem", "glmm_problem", "lmm_crossproducts",
           "gauss_hermite", "starts", "MAX_DENSE_CELLS",
           "glmm_template_context"]

#: Largest N * q for a GLMM's dense per-observation random-effects design.
MAX_DENSE_CELLS = 20_000_000

_NEWTON_TOL = 1e-10
_NEWTON_MAX_ITER = 50


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True, eq=False)
class MLProblem:
    """Everything one optimization needs: the program, its data and the parameter layout."""

    kind: str  #: "lmm" or "glmm"
    template: str
    data: dict
    K: int
    n_theta: int
    n_aux: int  #: log_sigma (lmm) or log_shape (negbinomial): 1, else 0
    order: np.ndarray | None  #: GLMM: permutation sorting observations by block

    @property
    def n_params(self) -> int:
        return self.K + self.n_theta + self.n_aux


def stan_program(kind: str) -> str:
    """The Stan code of the ML program (``"lmm"`` or ``"glmm"``); it depends on nothing else.

    >>> "marginal_gaussian_lpdf" in stan_program("lmm")
    True
    """
    if kind == "lmm":
        return render("ml_lmm.stan")
    return render("ml_glmm.stan", **glmm_template_context())


def glmm_template_context() -> dict:
    """What ``ml_glmm.stan`` needs from the families: every glmer family's Stan snippets
    (the family code is data, so one program serves them all)."""
    fams = glmm_families()
    with_aux = [f for f in fams if f.glmm_aux]
    return dict(families=fams,
                phi_condition=" || ".join(f"family == {f.glmm_code}" for f in with_aux) or "0",
                phi_names=", ".join(f"{f.name}'s {f.glmm_aux}" for f in with_aux) or "nothing")


def _lam_data(lay: RandomLayout) -> dict:
    return dict(n_theta=lay.n_theta, n_lam=len(lay.lam_row), lam_row=lay.lam_row.astype(int),
                lam_col=lay.lam_col.astype(int), lam_par=lay.lam_par.astype(int))


def lmm_crossproducts(design: Design, lay: RandomLayout) -> dict[str, np.ndarray]:
    """Per-block cross-products Z'Z, Z'X, Z'y (shape (G, ...)) and the totals X'X, X'y, y'y."""
    X, y = design.X, design.y
    out = {"XtX": X.T @ X, "Xty": X.T @ y, "yty": float(y @ y)}
    if lay.layout == "blocks":
        order = np.argsort(lay.block, kind="stable")
        starts = np.searchsorted(lay.block[order], np.arange(lay.G))
        Z, Xs, ys = lay.Zb[order], X[order], y[order]
        out["ZtZ"] = np.add.reduceat(Z[:, :, None] * Z[:, None, :], starts, axis=0)
        out["ZtX"] = np.add.reduceat(Z[:, :, None] * Xs[:, None, :], starts, axis=0)
        out["Zty"] = np.add.reduceat(Z * ys[:, None], starts, axis=0)
    else:
        Z = lay.Zb
        out["ZtZ"] = np.asarray((Z.T @ Z).todense())[None]
        out["ZtX"] = np.asarray(Z.T @ X)[None]
        out["Zty"] = np.asarray(Z.T @ y)[None]
    out["ZtZ"] = (out["ZtZ"] + np.swapaxes(out["ZtZ"], 1, 2)) / 2
    out["XtX"] = (out["XtX"] + out["XtX"].T) / 2
    return out


def lmm_problem(design: Design, lay: RandomLayout, REML: bool) -> MLProblem:
    cp = lmm_crossproducts(design, lay)
    data = dict(N=design.N, K=design.X.shape[1], REML=int(REML), XtX=cp["XtX"], Xty=cp["Xty"],
                yty=cp["yty"], G=lay.G, q=lay.q, ZtZ=cp["ZtZ"], ZtX=cp["ZtX"], Zty=cp["Zty"],
                lambda_diagonal=int(lay.lambda_diagonal), **_lam_data(lay))
    return MLProblem(kind="lmm", template="ml_lmm.stan", data=data, K=design.X.shape[1],
                     n_theta=lay.n_theta, n_aux=1, order=None)


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and log weights for integrals of f(x) exp(-x^2)."""
    if n == 1:
        return np.zeros(1), np.array([0.5 * np.log(np.pi)])
    x, w = np.polynomial.hermite.hermgauss(n)
    return x, np.log(w)


def glmm_problem(design: Design, lay: RandomLayout, family: Family, nAGQ: int) -> MLProblem:
    N = design.N
    if lay.layout == "stacked" and N * lay.q > MAX_DENSE_CELLS:
        raise DataError(
            f"The GLMM's random-effects design would be a dense {N} x {lay.q} matrix "
            f"({N * lay.q:,} cells, limit {MAX_DENSE_CELLS:,}) because its grouping factors are "
            "crossed or nested; use fewer levels or a single grouping factor."
        )
    order = np.argsort(lay.block, kind="stable")
    blocks = lay.block[order]
    starts = np.searchsorted(blocks, np.arange(lay.G))
    sizes = np.diff(np.append(starts, N))
    Zb = lay.Zb.toarray() if sparse.issparse(lay.Zb) else lay.Zb
    trials = design.trials if design.trials is not None else np.ones(N)
    x, logw = gauss_hermite(nAGQ)
    data = dict(N=N, K=design.X.shape[1], family=family.glmm_code,
                y=np.round(design.y[order]).astype(int), trials=np.round(trials[order]).astype(int),
                X=design.X[order], G=lay.G, q=lay.q, Zb=Zb[order],
                block_start=(starts + 1).astype(int), block_size=sizes.astype(int),
                n_agq=int(nAGQ), gh_x=x, gh_logw=logw, newton_tol=_NEWTON_TOL,
                newton_max_iter=_NEWTON_MAX_ITER, **_lam_data(lay))
    return MLProblem(kind="glmm", template="ml_glmm.stan", data=data, K=design.X.shape[1],
                     n_theta=lay.n_theta, n_aux=int(family.glmm_aux is not None), order=order)


# --------------------------------------------------------------------------- starts
def _irls(X: np.ndarray, y: np.ndarray, family: Family, trials: np.ndarray | None) -> np.ndarray:
    """Fixed-effects GLM by IRLS (starting values for glmer)."""
    n = trials if (family.uses_trials and trials is not None) else np.ones_like(y)
    eta = family.irls_start(y, n)
    beta = np.zeros(X.shape[1])
    for _ in range(50):
        w, z = family.irls_working(y, eta, n)
        XtW = X.T * w
        try:
            new = np.linalg.solve(XtW @ X + 1e-10 * np.eye(X.shape[1]), XtW @ z)
        except np.linalg.LinAlgError:
            break
        eta = np.clip(X @ new, -30, 30)
        if np.max(np.abs(new - beta)) < 1e-10:
            beta = new
            break
        beta = new
    return beta


def _starts(problem: MLProblem, design: Design, lay: RandomLayout, family: Family) -> list[np.ndarray]:
    X, y = design.X, design.y
    diag = np.zeros(lay.n_theta)
    for slot in lay.slots:
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            diag[k] = 1.0 if i == j else 0.0
    if problem.kind == "lmm":
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ beta
        log_sigma = np.log(max(np.std(resid), 1e-8 * max(np.std(y), 1.0), 1e-300))
        return [np.concatenate([beta, diag * s, [log_sigma]]) for s in (1.0, 0.3, 3.0)]
    beta = _irls(X, y, family, design.trials)
    aux = family.glmm_aux_start(y, family.inverse_link(X @ beta))
    return [np.concatenate([beta, diag * s, aux]) for s in (1.0, 0.3, 2.0)]


