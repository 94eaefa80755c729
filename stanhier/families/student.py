"""The student family: Student-t response with identity (default), log or inverse link, ``sigma`` and ``nu``.

>>> from stanhier.families import student
>>> student().aux
('sigma', 'nu')
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import SIGMA, AuxParam, Family, register

__all__ = ["Student"]


@register
class Student(Family):
    """Student-t response; auxiliaries ``sigma`` and ``nu``. ``sh.families.student()``"""

    name = "student"
    links = ("identity", "log", "inverse")
    aliases = ("student_t",)
    aux_params = (SIGMA, AuxParam("nu", lower=1, prior=("gamma", (2.0, 0.1)), comment="degrees of freedom"))
    support = "real"
    stan_default_likelihood = "target += student_t_lpdf(Y | nu, mu + Xc * b, sigma);"
    stan_likelihood = "target += student_t_lpdf(Y | nu, mu, sigma);"

    def loglik(self, y, eta, aux, trials=None):
        nu, sigma = aux["nu"], aux["sigma"]
        z = (np.asarray(y) - self.inverse_link(eta)) / sigma
        return (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
                - np.log(sigma) - (nu + 1) / 2 * np.log1p(z ** 2 / nu))

    def rng(self, eta, aux, rng, trials=None):
        return self.inverse_link(eta) + aux["sigma"] * rng.standard_t(aux["nu"], size=np.shape(eta))

    def variance(self, eta, aux, trials=None):
        """sigma^2 nu / (nu - 2); infinite for nu <= 2."""
        nu = np.asarray(aux["nu"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(nu > 2, np.asarray(aux["sigma"]) ** 2 * nu / (nu - 2), np.inf)
        return np.ones_like(eta, dtype=float) * v
