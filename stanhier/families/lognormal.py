"""The lognormal family: ``mu`` and ``sigma`` on the log scale (identity link, or inverse).

>>> from stanhier.families import lognormal
>>> float(lognormal().mean(0.0, {"sigma": 1.0}).round(4))
1.6487
"""

from __future__ import annotations

import numpy as np

from .base import SIGMA, Family, register

__all__ = ["Lognormal"]


@register
class Lognormal(Family):
    """Log-normal response (``mu`` on the log scale); auxiliary ``sigma``. ``sh.families.lognormal()``"""

    name = "lognormal"
    links = ("identity", "inverse")
    aux_params = (SIGMA,)
    support = "positive"
    stan_default_likelihood = "target += lognormal_lpdf(Y | mu + Xc * b, sigma);"
    stan_likelihood = "target += lognormal_lpdf(Y | mu, sigma);"

    @property
    def scale_link(self) -> str:
        return "log"  # brms sets the default prior scales from log(y)

    def mean(self, eta, aux, trials=None):
        return np.exp(self.inverse_link(eta) + aux["sigma"] ** 2 / 2)

    def variance(self, eta, aux, trials=None):
        s2 = aux["sigma"] ** 2
        return np.expm1(s2) * np.exp(2 * self.inverse_link(eta) + s2)

    def loglik(self, y, eta, aux, trials=None):
        logy = np.log(y)
        z = (logy - self.inverse_link(eta)) / aux["sigma"]
        return -0.5 * z ** 2 - np.log(aux["sigma"]) - 0.5 * np.log(2 * np.pi) - logy

    def rng(self, eta, aux, rng, trials=None):
        return np.exp(rng.normal(self.inverse_link(eta), aux["sigma"]))
