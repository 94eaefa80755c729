"""Likelihood-profile confidence intervals, as lme4's ``confint(m)`` (``method = "profile"``).

For each parameter -- the standard deviations and correlations of the random effects,
the residual SD and the fixed effects, lme4's ``oldNames = FALSE`` names -- the
log-likelihood is maximized over all the other parameters with that one held fixed; the
interval holds the values whose signed root deviance ``zeta = sign(v - v_hat) *
sqrt(2 (logLik_hat - logLik_profile(v)))`` lies within ``qnorm((1 + level) / 2)``. The
endpoints are found by root finding (lme4 interpolates a spline through its profile
grid), on the ML fit, as lme4 does for REML fits too.

The profile runs on the Stan program's log density (the same function the fit maximized):
SDs on the log scale, correlations on the atanh scale, the residual SD on the log scale;
each inner maximization uses Stan's gradient through the chain rule.

Example
-------
>>> m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)   # doctest: +SKIP
>>> m.confint()                                                            # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import optimize as sopt

from ..errors import ArgumentError

__all__ = ["profile_confint", "Reparam"]


class Reparam:
    """The fit's parameter vector ``x`` (beta, theta, aux) as a function of ``u``:
    log SDs and atanh correlations per term (lme4's order), then the aux parameters
    (log sigma for Gaussian models), then beta."""

    def __init__(self, fit: Any) -> None:
        self.fit = fit
        self.K = fit.problem.K
        self.T = fit.problem.n_theta
        self.A = fit.problem.n_aux
        self.lmm = fit.kind == "lmm"
        self.slots = fit.term_slots()
        self.names: list[str] = []
        self.kinds: list[str] = []  # "sd", "cor", "sigma", "aux", "beta"
        self.index: list[tuple] = []  # per u entry: (slot position, i, j)
        for si, slot in enumerate(self.slots):
            gt = fit.design.terms[slot.index]
            coefs = list(gt.coef_names_r)
            for j in range(slot.M):
                self.names.append(f"sd_{coefs[j]}|{slot.group}")
                self.kinds.append("sd")
                self.index.append((si, j, j))
                if slot.correlated:
                    for i in range(j + 1, slot.M):
                        self.names.append(f"cor_{coefs[i]}.{coefs[j]}|{slot.group}")
                        self.kinds.append("cor")
                        self.index.append((si, i, j))
        for a in range(self.A):
            self.names.append("sigma" if self.lmm and a == 0 else f"aux_{a}")
            self.kinds.append("sigma" if self.lmm and a == 0 else "aux")
            self.index.append((a,))
        for k, name in enumerate(fit.design.fixed_names_r):
            self.names.append(str(name))
            self.kinds.append("beta")
            self.index.append((k,))

    def from_x(self, x: np.ndarray) -> np.ndarray:
        beta, theta, aux = x[:self.K], x[self.K:self.K + self.T], x[self.K + self.T:]
        sigma = math.exp(aux[0]) if self.lmm else 1.0
        u = []
        covs = []
        for slot in self.slots:
            lam = self.fit.layout.term_lambda(slot, theta)
            covs.append(sigma ** 2 * lam @ lam.T)
        for kind, idx in zip(self.kinds, self.index):
            if kind == "sd":
                u.append(0.5 * math.log(max(covs[idx[0]][idx[1], idx[1]], 1e-300)))
            elif kind == "cor":
                c = covs[idx[0]]
                r = c[idx[1], idx[2]] / math.sqrt(max(c[idx[1], idx[1]] * c[idx[2], idx[2]], 1e-300))
                u.append(math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12)))
            elif kind in ("sigma", "aux"):
                u.append(aux[idx[0]])
            else:
                u.append(beta[idx[0]])
        return np.asarray(u, float)

    def to_x(self, u: np.ndarray) -> np.ndarray | None:
        """``x`` for ``u``, or None where the correlation matrix is not positive definite."""
        sds = [np.zeros(s.M) for s in self.slots]
        cors = [np.eye(s.M) for s in self.slots]
        aux = np.zeros(self.A)
        beta = np.zeros(self.K)
        for v, kind, idx in zip(u, self.kinds, self.index):
            if kind == "sd":
                sds[idx[0]][idx[1]] = math.exp(v)
            elif kind == "cor":
                cors[idx[0]][idx[1], idx[2]] = cors[idx[0]][idx[2], idx[1]] = math.tanh(v)
            elif kind in ("sigma", "aux"):
                aux[idx[0]] = v
            else:
                beta[idx[0]] = v
        sigma = math.exp(aux[0]) if self.lmm else 1.0
        theta = np.zeros(self.T)
        for slot, sd, R in zip(self.slots, sds, cors):
            try:
                L = np.linalg.cholesky(R)
            except np.linalg.LinAlgError:
                return None
            lam = (sd[:, None] * L) / sigma
            for (i, j), k in zip(slot.pairs, slot.theta_index):
                theta[k] = lam[i, j]
        return np.concatenate([beta, theta, aux])

    def natural(self, j: int, t: float) -> float:
        """A value of u_j on the scale lme4 reports."""
        kind = self.kinds[j]
        if kind in ("sd", "sigma"):
            return math.exp(t)
        if kind == "cor":
            return math.tanh(t)
        return t


class _Profiler:
    def __init__(self, fit: Any) -> None:
        self.rp = Reparam(fit)
        self.density = fit.density
        self.u_hat = self.rp.from_x(np.asarray(fit.optimum.theta, float))
        self.ll_hat = float(self.density.log_prob(self.rp.to_x(self.u_hat)))
        self.n = len(self.u_hat)

    def value_grad(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        x = self.rp.to_x(u)
        if x is None:
            return -np.inf, np.zeros_like(u)
        try:
            lp, g = self.density.log_prob_grad(x)
        except (RuntimeError, ValueError):
            return -np.inf, np.zeros_like(u)
        # chain rule: dx/du by central differences of the (cheap) map
        J = np.empty((len(x), len(u)))
        for k in range(len(u)):
            h = 1e-6 * max(1.0, abs(u[k]))
            up, dn = u.copy(), u.copy()
            up[k] += h
            dn[k] -= h
            xu, xd = self.rp.to_x(up), self.rp.to_x(dn)
            if xu is None or xd is None:
                return float(lp), np.zeros_like(u)
            J[:, k] = (xu - xd) / (2 * h)
        return float(lp), J.T @ np.asarray(g, float)

    def profile(self, j: int, t: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        """max over u_{-j} of the log-likelihood with u_j = t (from ``start``)."""
        free = [k for k in range(self.n) if k != j]
        scale = np.maximum(1.0, np.abs(self.u_hat[free]))

        def neg(z: np.ndarray) -> tuple[float, np.ndarray]:
            u = start.copy()
            u[j] = t
            u[free] = start[free] + z * scale
            lp, g = self.value_grad(u)
            if not np.isfinite(lp):
                return 1e300, np.zeros_like(z)
            return -lp, -g[free] * scale

        res = sopt.minimize(neg, np.zeros(len(free)), jac=True, method="BFGS",
                            options={"maxiter": 2000, "gtol": 1e-6})
        u = start.copy()
        u[j] = t
        u[free] = start[free] + res.x * scale
        return -float(res.fun), u

    def zeta(self, j: int, t: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        ll, u = self.profile(j, t, start)
        dev = max(0.0, 2 * (self.ll_hat - ll))
        return math.copysign(math.sqrt(dev), t - self.u_hat[j]), u

    def endpoint(self, j: int, direction: int, z: float, step: float) -> float:
        """The u_j where zeta = direction * z (nan-free: +-inf when never reached)."""
        t0, u0 = self.u_hat[j], self.u_hat.copy()
        prev_t, prev_z, start = t0, 0.0, u0
        for k in range(1, 60):
            t = t0 + direction * step * k * (1 + 0.5 * (k > 8) * (k - 8))
            zt, u = self.zeta(j, t, start)
            if direction * zt >= z:
                def f(tt: float) -> float:
                    return self.zeta(j, tt, start)[0] - direction * z

                return sopt.brentq(f, prev_t, t, xtol=1e-7 * max(1.0, abs(t)), rtol=1e-9)
            if not np.isfinite(zt) or (k > 8 and direction * (zt - prev_z) < 1e-6):
                break  # the profile levels off: the bound is the parameter's limit
            prev_t, prev_z, start = t, zt, u
        return -math.inf if direction < 0 else math.inf


def _ml_refit(fit: Any) -> Any:
    """The ML fit of a REML fit's model (the same program, data with REML off), started
    at the REML optimum; an ML fit itself."""
    if not getattr(fit, "REML", False):
        return fit
    if hasattr(fit, "ml_refit"):  # fits of the numpy evaluators refit on it
        return fit.ml_refit()
    import dataclasses

    from .optimizer import maximize
    from .problem import lmm_problem

    problem = lmm_problem(fit.design, fit.layout, False)
    density = fit.model.log_density(problem.standata())
    x0 = np.asarray(fit.optimum.theta, float)
    info = maximize(density, [x0], np.maximum(1.0, np.abs(x0)))
    return type(fit)(call=dataclasses.replace(fit.call, REML=False), design=fit.design, layout=fit.layout,
                     family=fit.family, problem=problem, model=fit.model, density=density, optimum=info)


def profile_confint(fit: Any, level: float = 0.95, parm: Sequence[str] | None = None) -> pd.DataFrame:
    """lme4's ``confint(m)`` (profile): one row per parameter (lme4's ``oldNames = FALSE``
    names), columns ``"2.5 %"`` and ``"97.5 %"``. A REML fit is profiled on its ML refit, as
    lme4 does. SDs whose profile never reaches the bound get 0, correlations -1 or 1.
    """
    if not 0 < level < 1:
        raise ArgumentError(f"level must be between 0 and 1, got {level!r}.")
    if getattr(fit, "density", None) is None:
        raise ArgumentError("Profile intervals need the fit's Stan log density; this fit ran on the "
                            "blocked evaluator for a design beyond the stacked layout: use confint(method='Wald').")
    ml = _ml_refit(fit)
    prof = _Profiler(ml)
    rp = prof.rp
    wanted = list(range(prof.n)) if parm is None else [rp.names.index(p) if p in rp.names else -1 for p in parm]
    if -1 in wanted:
        bad = [p for p, w in zip(parm or [], wanted) if w == -1]
        raise ArgumentError(f"Unknown parameter(s) {bad}; profile intervals are for {rp.names}.")
    from scipy import stats  # on first use: slow to import
    z = float(stats.norm.ppf(0.5 + level / 2))
    se = np.sqrt(np.diag(ml.vcov().to_numpy(float)))
    rows = []
    for j in wanted:
        kind = rp.kinds[j]
        step = (se[rp.index[j][0]] / 2 if kind == "beta" and np.isfinite(se[rp.index[j][0]])
                else 0.15 if kind in ("sd", "sigma", "aux") else 0.2)
        lo_t, hi_t = prof.endpoint(j, -1, z, step), prof.endpoint(j, +1, z, step)
        lo = rp.natural(j, lo_t) if np.isfinite(lo_t) else {"sd": 0.0, "sigma": 0.0, "cor": -1.0}.get(kind, -np.inf)
        hi = rp.natural(j, hi_t) if np.isfinite(hi_t) else {"cor": 1.0}.get(kind, np.inf)
        rows.append((rp.names[j], lo, hi))
    lo_name, hi_name = f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"
    return pd.DataFrame([(a, b) for _, a, b in rows], index=[n for n, _, _ in rows], columns=[lo_name, hi_name])
