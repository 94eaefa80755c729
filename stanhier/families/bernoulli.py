"""The bernoulli family: 0/1 responses with logit link (brm and glmer).

>>> from stanhier.families import bernoulli
>>> float(bernoulli().loglik(1, 0.0, {}).round(4))
-0.6931
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import Family, register

__all__ = ["Bernoulli"]


@register
class Bernoulli(Family):
    """0/1 responses. ``sh.families.bernoulli()``"""

    name = "bernoulli"
    links = ("logit",)
    aliases = ("logistic",)
    support = "binary"
    stan_data = ("array[N] int<lower=0, upper=1> Y;  // response",)
    stan_likelihood = "target += bernoulli_logit_glm_lpmf(Y | Xc, mu, b);"
    glmm_code = 3
    glmm_lpmf = "bernoulli_logit_lpmf(y | eta)"
    glmm_derivatives = "vector[n] p = inv_logit(eta);\nd[:, 1] = to_vector(y) - p;\nd[:, 2] = p .* (1 - p);"

    def lme4_label(self, aux):
        return "binomial"  # lme4 fits 0/1 data with binomial()

    def loglik(self, y, eta, aux, trials=None):
        return y * -np.logaddexp(0, -eta) + (1 - y) * -np.logaddexp(0, eta)

    def rng(self, eta, aux, rng, trials=None):
        return rng.binomial(1, special.expit(eta)).astype(float)

    def variance(self, eta, aux, trials=None):
        p = special.expit(eta)
        return p * (1 - p)

    def unit_deviance(self, y, eta, aux, trials=None):
        return -2 * self.loglik(y, eta, aux)
