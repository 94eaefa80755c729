"""Link functions: each link defined once (Stan text, numpy functions, range, glmer code).

A :class:`Link` holds everything about one link ``g`` (``eta = g(mu)``): the Stan
expression of its inverse (used by ``brm``'s likelihood and by the glmer program) and of
``d mu / d eta`` (glmer's Fisher weights), the numpy inverse, link function and
derivative (post-estimation, IRLS starts, the crossed-factor evaluator), the range of
``mu`` it can give, and its code in the glmer program's data (``link``).

The numpy inverses of the links to (0, 1) come with stable ``log(mu)`` and ``log(1 - mu)``
(the binomial and Bernoulli log-likelihoods use them).

Example
-------
>>> from stanhier.families.links import LINKS
>>> probit = LINKS["probit"]
>>> probit.stan_inverse("mu + Xc * b")
'Phi(mu + Xc * b)'
>>> float(probit.inverse(0.0)), float(probit.mu_eta(0.0).round(4))
(0.5, 0.3989)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

__all__ = ["Link", "LINKS", "get_link"]

Array = Callable[[np.ndarray], np.ndarray]


def _stats():
    """scipy.stats, imported when a link first needs it (it takes most of stanhier's import time)."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Link:
    """One link function ``eta = link(mu)``; ``mu = inverse(eta)``.

    ``stan`` and ``stan_mu_eta`` are Stan expressions (vectorized) in ``{x}``;
    ``mu_range`` is the closed range of ``inverse`` (``sqrt``: mu >= 0).

    >>> from stanhier.families.links import LINKS
    >>> LINKS["cloglog"].stan_mu_eta.format(x="eta")
    'exp(eta - exp(eta))'
    """

    name: str
    code: int  #: the link's code in the glmer program's data (unique, fixed once given)
    stan: str
    stan_mu_eta: str
    inverse: Array
    link: Array
    mu_eta: Array
    mu_range: tuple[float, float] = (-np.inf, np.inf)
    log_inverse: Array | None = None  #: stable log(mu) (links to (0, 1))
    log1m_inverse: Array | None = None  #: stable log(1 - mu) (links to (0, 1))

    def stan_inverse(self, x: str) -> str:
        """The Stan expression of ``mu`` given the linear predictor expression ``x``."""
        return self.stan.format(x=x)

    def log_mu(self, eta: np.ndarray) -> np.ndarray:
        """log(mu), stable in the tails where the link provides it."""
        if self.log_inverse is not None:
            return self.log_inverse(eta)
        with np.errstate(divide="ignore"):
            return np.log(self.inverse(eta))

    def log1m_mu(self, eta: np.ndarray) -> np.ndarray:
        """log(1 - mu), stable in the tails where the link provides it."""
        if self.log1m_inverse is not None:
            return self.log1m_inverse(eta)
        with np.errstate(divide="ignore"):
            return np.log1p(-self.inverse(eta))


def _inverse(e: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(e, float)


def _cloglog_log_mu(e: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(-np.expm1(-np.exp(e)))


#: link name -> :class:`Link` (brms's and R's names)
LINKS: dict[str, Link] = {link.name: link for link in (
    Link("identity", 1, "{x}", "rep_vector(1, rows({x}))",
         inverse=lambda e: e, link=lambda m: m, mu_eta=lambda e: np.ones_like(np.asarray(e, float))),
    Link("log", 2, "exp({x})", "exp({x})", inverse=np.exp, link=np.log, mu_eta=np.exp, mu_range=(0.0, np.inf),
         log_inverse=lambda e: np.asarray(e, float)),
    Link("logit", 3, "inv_logit({x})", "inv_logit({x}) .* inv_logit(-{x})",
         inverse=special.expit, link=special.logit, mu_eta=lambda e: special.expit(e) * special.expit(-e),
         mu_range=(0.0, 1.0), log_inverse=lambda e: -np.logaddexp(0, -e), log1m_inverse=lambda e: -np.logaddexp(0, e)),
    Link("probit", 4, "Phi({x})", "exp(-0.5 * square({x})) / sqrt(2 * pi())",
         inverse=special.ndtr, link=special.ndtri, mu_eta=lambda e: _stats().norm.pdf(e), mu_range=(0.0, 1.0),
         log_inverse=special.log_ndtr, log1m_inverse=lambda e: special.log_ndtr(-np.asarray(e, float))),
    Link("cloglog", 5, "inv_cloglog({x})", "exp({x} - exp({x}))",
         inverse=lambda e: -np.expm1(-np.exp(e)), link=lambda m: np.log(-np.log1p(-np.asarray(m, float))),
         mu_eta=lambda e: np.exp(e - np.exp(e)), mu_range=(0.0, 1.0),
         log_inverse=_cloglog_log_mu, log1m_inverse=lambda e: -np.exp(e)),
    Link("cauchit", 6, "atan({x}) / pi() + 0.5", "inv(pi() * (1 + square({x})))",
         inverse=lambda e: np.arctan(e) / np.pi + 0.5, link=lambda m: np.tan(np.pi * (np.asarray(m, float) - 0.5)),
         mu_eta=lambda e: 1 / (np.pi * (1 + np.square(e))), mu_range=(0.0, 1.0),
         log_inverse=lambda e: _stats().cauchy.logcdf(e), log1m_inverse=lambda e: _stats().cauchy.logsf(e)),
    Link("sqrt", 7, "square({x})", "2 * {x}",
         inverse=np.square, link=np.sqrt, mu_eta=lambda e: 2 * np.asarray(e, float), mu_range=(0.0, np.inf)),
    Link("inverse", 8, "inv({x})", "-inv(square({x}))",
         inverse=_inverse, link=_inverse, mu_eta=lambda e: -_inverse(e) ** 2),
)}


def get_link(name: str) -> Link:
    """The :class:`Link` called ``name`` (a :class:`ValueError` listing the links otherwise).

    >>> get_link("logit").code
    3
    """
    if name not in LINKS:
        raise ValueError(f"Unknown link {name!r}; stanhier knows: {', '.join(LINKS)}.")
    return LINKS[name]
