"""The beta family: proportions strictly inside (0, 1); logit (default), probit, cloglog or cauchit link; precision ``phi``.

As brms: ``Y ~ beta(mu * phi, (1 - mu) * phi)`` with ``mu = inv_logit(eta)`` (at the default link), so
E[y] = mu and Var[y] = mu (1 - mu) / (1 + phi); ``phi`` has the prior ``gamma(0.01, 0.01)``.

>>> from stanhier.families import beta
>>> fam = beta()
>>> fam.link, fam.aux, float(fam.variance(0.0, {"phi": 9.0}))
('logit', ('phi',), 0.025)
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .base import AuxParam, Family, register

__all__ = ["Beta"]


@register
class Beta(Family):
    """Beta-distributed proportions in (0, 1); auxiliary precision ``phi``. ``sh.families.beta()``"""

    name = "beta"
    links = ("logit", "probit", "cloglog", "cauchit")
    aux_params = (AuxParam("phi", lower=0, prior=("gamma", (0.01, 0.01)), comment="precision parameter"),)
    support = "unit"
    mean_range = (0.0, 1.0)
    stan_likelihood = "target += beta_lpdf(Y | mu * phi, (1 - mu) * phi);"

    def loglik(self, y, eta, aux, trials=None):
        mu, phi = self.inverse_link(eta), aux["phi"]
        a, b = mu * phi, (1 - mu) * phi
        return (special.gammaln(phi) - special.gammaln(a) - special.gammaln(b)
                + (a - 1) * np.log(y) + (b - 1) * np.log1p(-np.asarray(y, float)))

    def rng(self, eta, aux, rng, trials=None):
        mu, phi = self.inverse_link(eta), aux["phi"]
        return rng.beta(mu * phi, (1 - mu) * phi)

    def variance(self, eta, aux, trials=None):
        mu = self.inverse_link(eta)
        return mu * (1 - mu) / (1 + aux["phi"])

    def check_response(self, y, column, trials=None, trials_column=None):
        y = np.asarray(y, float)
        self.reject_values(y, column, (y <= 0) | (y >= 1), "outside the open interval (0, 1)",
                  "family 'beta' needs proportions strictly between 0 and 1 (no exact 0 or 1); "
                  "use 'binomial' for counts or 'bernoulli' for 0/1 data.")
