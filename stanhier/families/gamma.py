"""The Gamma family: log (brms's default), inverse or identity link, ``shape``; variance ``mu^2 / shape``.

>>> from stanhier.families import Gamma
>>> Gamma().link, Gamma().aux
('log', ('shape',))
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import AuxParam, Family, register

__all__ = ["GammaFamily"]


@register
class GammaFamily(Family):
    """Gamma with log link (brms's default; lme4's is inverse, which ``Gamma(link="inverse")``
    gives); auxiliary ``shape``. ``sh.families.Gamma()``"""

    name = "Gamma"
    links = ("log", "inverse", "identity")
    aliases = ("gamma",)
    aux_params = (AuxParam("shape", lower=0, prior=("gamma", (0.01, 0.01)), comment="shape parameter"),)
    support = "positive"
    mean_range = (0.0, np.inf)
    mean_open = True
    stan_likelihood = "target += gamma_lpdf(Y | shape, shape ./ mu);"
    # glmer (lme4's Gamma): the modes maximize the log-likelihood at shape 1 (-deviance / 2 + const),
    # with lme4's PIRLS (Fisher) weights at every link (at log, the default: weight 1)
    glmm_code = 5
    glmm_lpmf = "gamma_lpdf(y_real | 1, exp(-eta))"
    glmm_derivatives = "d[:, 1] = y_real .* exp(-eta) - 1;\nd[:, 2] = rep_vector(1, n);"
    glmm_lpmf_mu = "gamma_lpdf(y_real | 1, inv(mu))"
    glmm_variance = "square(mu)"
    glmm_deviance = "-2 * sum(log(y_real ./ mu) - (y_real - mu) ./ mu)"
    # R's Gamma()$aic: disp = dev / n; -2 sum(dgamma(y, 1 / disp, scale = mu * disp, log = TRUE)) + 2
    glmm_aic = "-2 * gamma_lpdf(y_real | n / dev, n ./ (mu * dev)) + 2"

    def variance(self, eta, aux, trials=None):
        return self.inverse_link(eta) ** 2 / aux["shape"]

    def loglik(self, y, eta, aux, trials=None):
        k = aux["shape"]
        rate = k / self.inverse_link(eta)
        return k * np.log(rate) - special.gammaln(k) + (k - 1) * np.log(y) - rate * y

    def rng(self, eta, aux, rng, trials=None):
        return rng.gamma(aux["shape"], self.inverse_link(eta) / aux["shape"])

    def unit_deviance(self, y, eta, aux, trials=None):
        """R's ``Gamma()$dev.resids``: -2 (log(y / mu) - (y - mu) / mu)."""
        mu = self.inverse_link(eta)
        return -2 * (np.log(y / mu) - (y - mu) / mu)
