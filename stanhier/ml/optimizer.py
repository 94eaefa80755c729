"""Maximizing a Stan log density: L-BFGS (scipy or the backend's own), then Newton polishing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize as sopt

from ..backends.base import LogDensity, fd_hessian
from ..errors import SamplingError
from ..progress import Spinner

__all__ = ["OptimumInfo", "maximize", "evaluate_at"]

# --------------------------------------------------------------------------- optimizer
@dataclass(frozen=True, eq=False)
class OptimumInfo:
    """The optimizer's report."""

    theta: np.ndarray  #: unconstrained parameter vector at the optimum
    lp: float
    grad: np.ndarray
    hessian: np.ndarray | None
    converged: bool
    message: str
    n_evals: int
    n_starts: int
    seconds: float


def maximize(density: LogDensity, starts: list[np.ndarray], scale: np.ndarray, *,
             tol: float = 1e-8,
             native: Callable[[np.ndarray], np.ndarray] | None = None,
             progress: bool = False) -> OptimumInfo:
    """Maximize ``density`` from several starts: scipy L-BFGS on scaled coordinates, then
    Newton steps on a finite-difference Hessian of the Stan gradient.

    Convergence is judged by the Newton decrement ``g' (-H)^-1 g / 2 < tol`` (scale free),
    falling back to a max-abs scaled gradient below 1e-3 where -H is not positive definite
    (singular fits). A failed start is retried from the next one. ``native``: the
    backend's own optimizer (CmdStan's ``optimize(jacobian=False)``) replaces scipy's
    L-BFGS for the first stage. ``progress``: a spinner with the evaluation count on stderr
    once the optimization has taken a second.
    """
    with Spinner("ML optimization", enabled=progress, delay=1.0) as spinner:
        return _maximize(density, starts, scale, tol, native, spinner)


def _maximize(density: LogDensity, starts: list[np.ndarray], scale: np.ndarray, tol: float,
              native: Callable[[np.ndarray], np.ndarray] | None, spinner: Spinner) -> OptimumInfo:
    t0 = time.perf_counter()
    count = {"n": 0}

    def value_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        count["n"] += 1
        spinner.tick()
        try:
            lp, g = density.log_prob_grad(x)
        except (RuntimeError, ValueError):
            return -np.inf, np.full(len(x), np.nan)
        return float(lp), np.asarray(g, float)

    def neg(z: np.ndarray, center: np.ndarray) -> tuple[float, np.ndarray]:
        lp, g = value_grad(center + scale * z)
        if not np.isfinite(lp) or not np.all(np.isfinite(g)):
            return 1e300, np.zeros_like(z)
        return -lp, -g * scale

    best: tuple[float, np.ndarray] | None = None
    n_starts = 0
    for x0 in starts:
        n_starts += 1
        lp0, _ = value_grad(x0)
        if not np.isfinite(lp0):
            continue
        if native is not None:
            try:
                x = native(x0)
            except SamplingError:
                continue
        else:
            res = sopt.minimize(neg, np.zeros_like(x0), args=(x0,), jac=True, method="L-BFGS-B",
                                options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 30})
            x = x0 + scale * res.x
        x, lp, H, ok = _newton_polish(value_grad, x, tol)
        if best is None or lp > best[0] + 1e-9:
            best = (lp, x, H, ok)
        if ok:
            break
    if best is None:
        raise SamplingError(
            "The log-likelihood could not be evaluated at any starting value (every start gave "
            "-inf or an error); check the response for extreme values."
        )
    lp, x, H, ok = best
    _, g = value_grad(x)
    msg = "converged" if ok else "the optimizer did not reach a point with zero gradient"
    return OptimumInfo(theta=x, lp=lp, grad=g, hessian=H, converged=ok, message=msg,
                       n_evals=count["n"], n_starts=n_starts, seconds=time.perf_counter() - t0)


def _newton_polish(value_grad, x: np.ndarray, tol: float, max_iter: int = 20):
    lp, g = value_grad(x)
    H, H_at = None, None
    for _ in range(max_iter):
        H, H_at = fd_hessian(value_grad, x, 1e-4), x.copy()
        negH = -H
        try:
            C = np.linalg.cholesky(negH)
        except np.linalg.LinAlgError:
            # singular fit or saddle: regularized step, convergence on the gradient
            lam = abs(np.min(np.linalg.eigvalsh(negH))) + 1e-6 * (1 + np.max(np.abs(np.diag(negH))))
            step = np.linalg.solve(negH + lam * np.eye(len(x)), g)
            decrement = None
        else:
            step = np.linalg.solve(C.T, np.linalg.solve(C, g))
            decrement = 0.5 * float(g @ step)
            if decrement < tol:
                return x, lp, H, True
        t, improved = 1.0, False
        while t > 1e-8:
            x_new = x + t * step
            lp_new, g_new = value_grad(x_new)
            if np.isfinite(lp_new) and lp_new >= lp - 1e-12 * abs(lp):
                improved = True
                break
            t /= 2
        if not improved:
            break
        if lp_new - lp < 1e-12 * max(1.0, abs(lp)) and decrement is None:
            x, lp, g = x_new, lp_new, g_new
            break
        x, lp, g = x_new, lp_new, g_new
    if H is None or not np.array_equal(H_at, x):  # the Hessian returned is the one at x (reused for SEs)
        H = fd_hessian(value_grad, x, 1e-4)
    return x, lp, H, _is_optimum(x, g, H, tol)


def _is_optimum(x: np.ndarray, g: np.ndarray, H: np.ndarray, tol: float) -> bool:
    """Newton decrement below ``tol`` (1e-6 at most), or a small scaled gradient where -H is
    not positive definite (singular fits)."""
    try:
        np.linalg.cholesky(-H)
        step = np.linalg.solve(-H, g)
        return 0.5 * float(g @ step) < max(tol, 1e-6)
    except np.linalg.LinAlgError:
        return float(np.max(np.abs(g) * np.maximum(1.0, np.abs(x)))) < 1e-3


def evaluate_at(density: LogDensity, x: np.ndarray, *, tol: float = 1e-8) -> OptimumInfo:
    """The optimizer's report at a known optimum ``x`` (a run record's), without moving it:
    the same convergence test as :func:`maximize`."""
    t0 = time.perf_counter()
    x = np.asarray(x, float)
    lp, g = density.log_prob_grad(x)
    if not np.isfinite(lp):
        raise SamplingError("The log-likelihood cannot be evaluated at the recorded optimum.")
    H = fd_hessian(density.log_prob_grad, x, 1e-4)
    ok = _is_optimum(x, np.asarray(g, float), H, tol)
    return OptimumInfo(theta=x, lp=float(lp), grad=np.asarray(g, float), hessian=H, converged=ok,
                       message="converged" if ok else "the optimizer did not reach a point with zero gradient",
                       n_evals=1 + 2 * len(x), n_starts=0, seconds=time.perf_counter() - t0)


