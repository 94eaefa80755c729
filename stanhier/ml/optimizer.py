"""Maximizing a Stan log density: L-BFGS (scipy or the backend's own), then Newton polishing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

import numpy as np
from scipy import optimize as sopt

from ..backends.base import LogDensity, fd_hessian
from ..errors import SamplingError

__all__ = ["OptimumInfo", "maximize", "evaluate_at", "Heartbeat", "QUIET_SECONDS", "EVERY_SECONDS"]

#: a fit running longer than this (seconds) starts saying what it is doing (progress=None)
QUIET_SECONDS = 10.0
#: seconds between its status lines
EVERY_SECONDS = 30.0


class Heartbeat:
    """Says what a long fit is doing: a status line on standard error once the fit has run
    ``after`` seconds, then every ``every`` seconds, and a closing line; silent for quick fits.

    ``progress``: None (default) reports only fits that take long; True reports from the
    start; False never. A watcher thread writes the lines, so a long step that makes no
    evaluation here (CmdStan's own optimizer) is reported too.

    >>> import io
    >>> out = io.StringIO()
    >>> hb = Heartbeat("glmer", "maximizing the log-likelihood", progress=True, stream=out)
    >>> hb.tick(-10.5); hb.done()
    >>> print(out.getvalue().replace(" 0 s", " t s"), end="")   # doctest: +ELLIPSIS
    glmer: maximizing the log-likelihood
    glmer: t s, 1 evaluations (... s each), best logLik so far -10.5000
    glmer: done in t s (1 evaluations).
    """

    def __init__(self, who: str, what: str, *, progress: bool | None = None, after: float | None = None,
                 every: float | None = None, stream: TextIO | None = None, value: str = "logLik") -> None:
        import threading

        self.who, self.what, self.value = who, what, value
        self.progress = progress
        after = QUIET_SECONDS if after is None else after
        self.every = EVERY_SECONDS if every is None else every
        self.after = 0.0 if progress else after
        self.stream = stream
        self.start = time.perf_counter()
        self.last: float | None = None
        self.n = 0
        self.best = -np.inf
        self.phase = ""
        self.said = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if progress is not False:  # a watcher reports long steps too
            self._thread = threading.Thread(target=self._watch, daemon=True, name="stanhier-heartbeat")
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self._maybe_report()

    def set_phase(self, phase: str) -> None:
        """Name the current step (shown in the next status line)."""
        self.phase = phase

    def tick(self, lp: float) -> None:
        """One log-likelihood evaluation done (value ``lp``)."""
        self.n += 1
        if np.isfinite(lp):
            self.best = max(self.best, float(lp))
        self._maybe_report()

    def _maybe_report(self) -> None:
        if self.progress is False:
            return
        with self._lock:
            now = time.perf_counter()
            elapsed = now - self.start
            if elapsed < self.after or (self.last is not None and now - self.last < self.every):
                return
            self.last = now
            if not self.said:
                self._say(f"{self.who}: {self.what}")
                self.said = True
            best = f", best {self.value} so far {self.best:.4f}" if np.isfinite(self.best) else ""
            each = f" ({elapsed / self.n:.2g} s each)" if self.n else ""
            phase = f" ({self.phase})" if self.phase else ""
            self._say(f"{self.who}: {elapsed:.0f} s, {self.n} evaluations{each}{best}{phase}")

    def done(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self.last is not None:
                self._say(f"{self.who}: done in {time.perf_counter() - self.start:.0f} s ({self.n} evaluations).")
            self.last = None
            self.progress = False  # nothing more after done

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)


# --------------------------------------------------------------------------- optimizer
@dataclass(frozen=True, eq=False)
class OptimumInfo:
    """The optimizer's report."""

    theta: np.ndarray  #: unconstrained parameter vector at the optimum
    lp: float
    grad: np.ndarray
    hessian: np.ndarray | None  #: finite-difference Hessian (step 1e-4) at ``theta``
    converged: bool
    message: str
    n_evals: int
    n_starts: int
    seconds: float


def maximize(density: LogDensity, starts: list[np.ndarray], scale: np.ndarray, *,
             tol: float = 1e-8,
             native: Callable[[np.ndarray], np.ndarray] | None = None,
             heartbeat: Heartbeat | None = None) -> OptimumInfo:
    """Maximize ``density`` from several starts: scipy L-BFGS on scaled coordinates, then
    Newton steps on a finite-difference Hessian of the Stan gradient.

    Convergence is judged by the Newton decrement ``g' (-H)^-1 g / 2 < tol`` (scale free),
    falling back to a max-abs scaled gradient below 1e-3 where -H is not positive definite
    (singular fits). A failed start is retried from the next one. ``native``: the
    backend's own optimizer (CmdStan's ``optimize(jacobian=False)``) replaces scipy's
    L-BFGS for the first stage. ``heartbeat``: told of every evaluation and of each step
    (:class:`Heartbeat`), so a long fit says what it is doing.
    """
    t0 = time.perf_counter()
    count = {"n": 0}
    beat = heartbeat or Heartbeat("fit", "maximizing the log-likelihood", progress=False)

    def value_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        count["n"] += 1
        try:
            lp, g = density.log_prob_grad(x)
        except (RuntimeError, ValueError):
            beat.tick(-np.inf)
            return -np.inf, np.full(len(x), np.nan)
        beat.tick(float(lp))
        return float(lp), np.asarray(g, float)

    def neg(z: np.ndarray, center: np.ndarray) -> tuple[float, np.ndarray]:
        lp, g = value_grad(center + scale * z)
        if not np.isfinite(lp) or not np.all(np.isfinite(g)):
            return 1e300, np.zeros_like(z)
        return -lp, -g * scale

    try:
        return _maximize(value_grad, neg, starts, scale, tol, native, beat, t0, count)
    finally:
        beat.done()


def _maximize(value_grad, neg, starts, scale, tol, native, beat, t0, count) -> OptimumInfo:
    best: tuple[float, np.ndarray] | None = None
    n_starts = 0
    for x0 in starts:
        n_starts += 1
        beat.set_phase(f"L-BFGS from start {n_starts}" if len(starts) > 1 else "L-BFGS")
        lp0, _ = value_grad(x0)
        if not np.isfinite(lp0):
            continue
        if native is not None:
            beat.set_phase("CmdStan's L-BFGS" + (f" from start {n_starts}" if len(starts) > 1 else ""))
            try:
                x = native(x0)
            except SamplingError:
                continue
        else:
            res = sopt.minimize(neg, np.zeros_like(x0), args=(x0,), jac=True, method="L-BFGS-B",
                                options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 30})
            x = x0 + scale * res.x
        beat.set_phase(f"Newton steps, finite-difference Hessian ({2 * len(x)} gradients each)")
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


