"""The Gamma family: log link (brms's default), ``shape``; mean ``mu``, variance ``mu^2 / shape``.

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
    """Gamma with log link (brms's default); auxiliary ``shape``. ``sh.families.Gamma()``"""

    name = "Gamma"
    links = ("log",)
    aliases = ("gamma",)
    aux_params = (AuxParam("shape", lower=0, prior=("gamma", (0.01, 0.01)), comment="shape parameter"),)
    support = "positive"
    stan_likelihood = "mu = exp(mu + Xc * b);\ntarget += gamma_lpdf(Y | shape, shape ./ mu);"

    def mean(self, eta, aux, trials=None):
        return np.exp(eta)

    def variance(self, eta, aux, trials=None):
        return np.exp(2 * eta) / aux["shape"]

    def loglik(self, y, eta, aux, trials=None):
        k = aux["shape"]
        rate = k / np.exp(eta)
        return k * np.log(rate) - special.gammaln(k) + (k - 1) * np.log(y) - rate * y

    def rng(self, eta, aux, rng, trials=None):
        return rng.gamma(aux["shape"], np.exp(eta) / aux["shape"])

    def unit_deviance(self, y, eta, aux, trials=None):
        """R's ``Gamma()$dev.resids``: -2 (log(y / mu) - (y - mu) / mu)."""
        mu = np.exp(eta)
        return -2 * (np.log(y / mu) - (y - mu) / mu)
