"""The negbinomial family: Stan's ``neg_binomial_2`` (mean ``mu``, variance ``mu + mu^2 / shape``).

>>> from stanhier.families import negbinomial
>>> float(negbinomial().variance(np.log(2.0), {"shape": 4.0}))
3.0
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import AuxParam, Family, register

__all__ = ["NegBinomial"]


@register
class NegBinomial(Family):
    """Negative binomial (Stan's ``neg_binomial_2``); auxiliary ``shape``. ``sh.families.negbinomial()``"""

    name = "negbinomial"
    links = ("log", "identity", "sqrt")
    aliases = ("negative_binomial", "negbin")
    aux_params = (AuxParam("shape", lower=0, prior=("gamma", (0.01, 0.01)), comment="shape parameter"),)
    support = "count"
    mean_range = (0.0, np.inf)
    stan_data = ("array[N] int<lower=0> Y;  // response",)
    stan_default_likelihood = "target += neg_binomial_2_log_glm_lpmf(Y | Xc, mu, b, shape);"
    stan_likelihood = "target += neg_binomial_2_lpmf(Y | mu, shape);"
    glmm_code = 4
    glmm_aux = "shape"
    glmm_lpmf = "neg_binomial_2_log_lpmf(y | eta, phi)"
    glmm_derivatives = ("vector[n] mu = exp(eta);\nvector[n] yv = to_vector(y);\n"
                        "d[:, 1] = yv - (yv + phi) .* mu ./ (phi + mu);\n"
                        "d[:, 2] = (yv + phi) .* mu * phi ./ square(phi + mu);")
    glmm_lpmf_mu = "neg_binomial_2_lpmf(y | mu, phi)"
    glmm_variance = "mu + square(mu) / phi"

    def lme4_label(self, aux):
        return f"Negative Binomial({aux['shape']:.4g})"

    def loglik(self, y, eta, aux, trials=None):
        y = np.asarray(y, float)
        mu, k = self.inverse_link(eta), aux["shape"]
        return (special.gammaln(y + k) - special.gammaln(k) - special.gammaln(y + 1)
                + k * np.log(k / (k + mu)) + special.xlogy(y, mu / (k + mu)))

    def rng(self, eta, aux, rng, trials=None):
        mu, k = self.inverse_link(eta), aux["shape"]
        return rng.poisson(rng.gamma(k, mu / k)).astype(float)

    def variance(self, eta, aux, trials=None):
        mu = self.inverse_link(eta)
        return mu + mu ** 2 / aux["shape"]

    def unit_deviance(self, y, eta, aux, trials=None):
        mu, k = self.inverse_link(eta), aux["shape"]
        return 2 * (special.xlogy(y, y / mu) - (y + k) * np.log((y + k) / (mu + k)))

    def glmm_aux_start(self, y, mu):
        """log shape by moments from the IRLS means (log 100 without overdispersion)."""
        excess = np.mean((y - mu) ** 2 - mu)
        return [float(np.log(np.clip(np.mean(mu ** 2) / excess, 1e-2, 1e4))) if excess > 0 else np.log(100.0)]
