"""The bernoulli family: 0/1 responses; the binomial links (logit default) for brm and glmer.

>>> from stanhier.families import bernoulli
>>> float(bernoulli().loglik(1, 0.0, {}).round(4))
-0.6931
"""

from __future__ import annotations

import numpy as np

from .base import Family, register
from .binomial import Binomial

__all__ = ["Bernoulli"]


@register
class Bernoulli(Family):
    """0/1 responses. ``sh.families.bernoulli()``"""

    name = "bernoulli"
    links = Binomial.links
    aliases = ("logistic",)
    support = "binary"
    mean_range = (0.0, 1.0)
    stan_data = ("array[N] int<lower=0, upper=1> Y;  // response",)
    stan_default_likelihood = "target += bernoulli_logit_glm_lpmf(Y | Xc, mu, b);"
    stan_likelihood = "target += bernoulli_lpmf(Y | mu);"
    glmm_code = 3
    glmm_lpmf = "bernoulli_logit_lpmf(y | eta)"
    glmm_derivatives = "vector[n] p = inv_logit(eta);\nd[:, 1] = to_vector(y) - p;\nd[:, 2] = p .* (1 - p);"
    glmm_lpmf_mu = "bernoulli_lpmf(y | mu)"
    glmm_variance = "mu .* (1 - mu)"

    def lme4_label(self, aux):
        return "binomial"  # lme4 fits 0/1 data with binomial()

    def loglik(self, y, eta, aux, trials=None):
        link = self.link_object
        return np.where(np.asarray(y) == 1, link.log_mu(eta), link.log1m_mu(eta))

    def rng(self, eta, aux, rng, trials=None):
        return rng.binomial(1, self.inverse_link(eta)).astype(float)

    def variance(self, eta, aux, trials=None):
        p = self.inverse_link(eta)
        return p * (1 - p)

    def unit_deviance(self, y, eta, aux, trials=None):
        return -2 * self.loglik(y, eta, aux)
