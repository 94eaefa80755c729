"""The gaussian (normal) family: identity (default), log or inverse link, residual SD ``sigma``.

>>> from stanhier.families import gaussian
>>> fam = gaussian()
>>> float(fam.loglik(0.0, 0.0, {"sigma": 1.0}).round(4))
-0.9189
"""

from __future__ import annotations

import numpy as np

from .base import SIGMA, Family, register

__all__ = ["Gaussian"]


@register
class Gaussian(Family):
    """Normal response; auxiliary ``sigma``. ``sh.families.gaussian()``"""

    name = "gaussian"
    links = ("identity", "log", "inverse")
    aliases = ("normal",)
    aux_params = (SIGMA,)
    support = "real"
    stan_default_likelihood = "target += normal_id_glm_lpdf(Y | Xc, mu, b, sigma);"
    stan_likelihood = "target += normal_lpdf(Y | mu, sigma);"
    # glmer at the log and inverse links (lme4's gaussian(link = "log")); the identity link runs
    # as lmer. The modes maximize the log-likelihood at sigma 1 (-deviance / 2 + const)
    glmm_code = 6
    glmm_lpmf = "normal_lpdf(y_real | eta, 1)"
    glmm_derivatives = "d[:, 1] = y_real - eta;\nd[:, 2] = rep_vector(1, n);"
    glmm_lpmf_mu = "normal_lpdf(y_real | mu, 1)"
    glmm_variance = "rep_vector(1, rows(mu))"
    glmm_deviance = "dot_self(y_real - mu)"
    # R's gaussian()$aic: n (log(2 pi dev / n) + 1) + 2
    glmm_aic = "n * (log(2 * pi() * dev / n) + 1) + 2"

    def loglik(self, y, eta, aux, trials=None):
        z = (np.asarray(y) - self.inverse_link(eta)) / aux["sigma"]
        return -0.5 * z ** 2 - np.log(aux["sigma"]) - 0.5 * np.log(2 * np.pi)

    def rng(self, eta, aux, rng, trials=None):
        return rng.normal(self.inverse_link(eta), aux["sigma"])

    def variance(self, eta, aux, trials=None):
        return np.ones_like(eta, dtype=float) * np.asarray(aux["sigma"], float) ** 2

    def unit_deviance(self, y, eta, aux, trials=None):
        """Squared residual (R's ``gaussian()$dev.resids``: the deviance is without sigma)."""
        return (np.asarray(y) - self.inverse_link(eta)) ** 2
