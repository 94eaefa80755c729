"""The binomial family: successes out of ``trials``; logit (default), probit, cloglog, cauchit or log link.

>>> from stanhier.families import binomial
>>> float(binomial().mean(0.0, {}, trials=10))
5.0
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ..errors import FamilyError
from .base import Family, register

__all__ = ["Binomial"]


def _xlog(count: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """count * log_p with 0 * log(0) = 0 (as ``xlogy``)."""
    return np.where(count == 0, 0.0, count * log_p)


@register
class Binomial(Family):
    """Successes out of trials (``cbind(s, f)`` or ``y | trials(n)``). ``sh.families.binomial()``"""

    name = "binomial"
    links = ("logit", "probit", "cloglog", "cauchit", "log")
    support = "binomial"
    mean_range = (0.0, 1.0)
    stan_data = ("array[N] int<lower=0> Y;  // response", "array[N] int<lower=0> trials;  // number of trials")
    stan_default_likelihood = "target += binomial_logit_glm_lpmf(Y | trials, Xc, mu, b);"
    stan_likelihood = "target += binomial_lpmf(Y | trials, mu);"
    glmm_code = 2
    glmm_lpmf = "binomial_logit_lpmf(y | trials, eta)"
    glmm_derivatives = ("vector[n] p = inv_logit(eta);\nd[:, 1] = to_vector(y) - to_vector(trials) .* p;\n"
                        "d[:, 2] = to_vector(trials) .* p .* (1 - p);")
    glmm_lpmf_mu = "binomial_lpmf(y | trials, mu)"
    glmm_variance = "to_vector(trials) .* mu .* (1 - mu)"

    def mean(self, eta, aux, trials=None):
        return self.inverse_link(eta) * trials

    def variance(self, eta, aux, trials=None):
        p = self.inverse_link(eta)
        return trials * p * (1 - p)

    def loglik(self, y, eta, aux, trials=None):
        y, n = np.asarray(y, float), np.asarray(trials, float)
        link = self.link_object
        return (special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
                + _xlog(y, link.log_mu(eta)) + _xlog(n - y, link.log1m_mu(eta)))

    def rng(self, eta, aux, rng, trials=None):
        return rng.binomial(np.broadcast_to(trials, np.shape(eta)).astype(int), self.inverse_link(eta)).astype(float)

    def unit_deviance(self, y, eta, aux, trials=None):
        mu = self.mean(eta, aux, trials)
        return 2 * (special.xlogy(y, y / mu) + special.xlogy(trials - y, (trials - y) / (trials - mu)))

    def check_response(self, y, column, trials=None, trials_column=None):
        super().check_response(y, column, trials, trials_column)
        if trials is None:
            raise FamilyError(
                f"Family 'binomial' needs the number of trials: write 'cbind(successes, failures) ~ ...' "
                f"or '{column} | trials(n) ~ ...'."
            )
        tcol = trials_column or "trials"
        if np.any(trials < 0) or np.any(trials != np.round(trials)):
            raise FamilyError(f"Column {tcol!r}: trials must be non-negative integers.")
        if np.any(y > trials):
            idx = np.flatnonzero(y > trials)
            raise FamilyError(
                f"Column {column!r} has {len(idx)} row(s) with more successes than trials "
                f"(first at row {idx[0]}: {y[idx[0]]:g} > {trials[idx[0]]:g})."
            )
