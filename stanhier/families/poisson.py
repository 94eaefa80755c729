"""The poisson family: counts with log (default), identity or sqrt link (brm and glmer).

>>> from stanhier.families import poisson
>>> float(poisson().loglik(2, 0.0, {}).round(4))
-1.6931
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import Family, register

__all__ = ["Poisson"]


@register
class Poisson(Family):
    """Poisson counts with log link. ``sh.families.poisson()``"""

    name = "poisson"
    links = ("log", "identity", "sqrt")
    support = "count"
    mean_range = (0.0, np.inf)
    stan_data = ("array[N] int<lower=0> Y;  // response",)
    stan_default_likelihood = "target += poisson_log_glm_lpmf(Y | Xc, mu, b);"
    stan_likelihood = "target += poisson_lpmf(Y | mu);"
    glmm_code = 1
    # ``trials`` is the exposure: 1 for raw rows, the row count of an aggregated pattern
    # (stanhier.ml.aggregate); log(1) = 0 and 1 * mu = mu leave raw rows' values unchanged
    glmm_lpmf = "poisson_log_lpmf(y | eta + log(to_vector(trials)))"
    glmm_derivatives = ("vector[n] mu = to_vector(trials) .* exp(eta);\nd[:, 1] = to_vector(y) - mu;\n"
                        "d[:, 2] = mu;")
    glmm_lpmf_mu = "poisson_lpmf(y | to_vector(trials) .* mu)"
    glmm_variance = "to_vector(trials) .* mu"

    def loglik(self, y, eta, aux, trials=None):
        mu = self.inverse_link(eta)
        return special.xlogy(y, mu) - mu - special.gammaln(np.asarray(y, float) + 1)

    def rng(self, eta, aux, rng, trials=None):
        return rng.poisson(self.inverse_link(eta)).astype(float)

    def variance(self, eta, aux, trials=None):
        return self.inverse_link(eta)

    def unit_deviance(self, y, eta, aux, trials=None):
        mu = self.inverse_link(eta)
        return 2 * (special.xlogy(y, y / mu) - (y - mu))
