"""Stage 3a: response distributions (families), their links and numpy helpers.

A :class:`Family` knows its link, its auxiliary (family-specific) parameters, the
support of the response, and how to evaluate the pointwise log-likelihood and
draw new responses with numpy/scipy (used for ``log_lik``, ``posterior_predict``).

Example
-------
>>> import stanhier as sh
>>> sh.families.poisson().link, sh.families.get_family("Gamma").aux
('log', ('shape',))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special, stats

from ..errors import FamilyError

__all__ = [
    "Family", "get_family", "gaussian", "poisson", "binomial", "bernoulli",
    "negbinomial", "Gamma", "student", "lognormal", "FAMILIES",
]


def _inv_link(link: str) -> Callable[[np.ndarray], np.ndarray]:
    return {"identity": lambda e: e, "log": np.exp, "logit": special.expit}[link]


def _link_fn(link: str) -> Callable[[np.ndarray], np.ndarray]:
    return {"identity": lambda m: m, "log": np.log, "logit": special.logit}[link]


@dataclass(frozen=True)
class Family:
    """A response distribution with its link.

    ``name`` is brms's family name; ``aux`` the family-specific parameters in the
    order brms prints them; ``support`` one of ``real``, ``count``, ``binary``,
    ``binomial``, ``positive``.
    """

    name: str
    link: str
    aux: tuple[str, ...]
    support: str

    # ------------------------------------------------------------ links
    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """Expected value from the linear predictor (for lognormal: the median's log -> mean needs sigma)."""
        return _inv_link(self.link)(eta)

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        return _link_fn(self.link)(mu)

    @property
    def is_discrete(self) -> bool:
        return self.support in ("count", "binary", "binomial")

    @property
    def uses_trials(self) -> bool:
        return self.name == "binomial"

    @property
    def has_sigma(self) -> bool:
        return "sigma" in self.aux

    # ------------------------------------------------------------ numpy helpers
    def mean(self, eta: np.ndarray, aux: dict[str, np.ndarray], trials: np.ndarray | None = None) -> np.ndarray:
        """E[y | eta, aux] (brms's ``posterior_epred``); broadcasting over draws."""
        if self.name == "lognormal":
            return np.exp(eta + aux["sigma"] ** 2 / 2)
        mu = self.inverse_link(eta)
        if self.name == "binomial":
            return mu * trials
        return mu

    def loglik(self, y: np.ndarray, eta: np.ndarray, aux: dict[str, np.ndarray],
               trials: np.ndarray | None = None) -> np.ndarray:
        """Pointwise log density of ``y`` given the linear predictor ``eta`` (broadcasts)."""
        n = self.name
        if n == "gaussian":
            return stats.norm.logpdf(y, eta, aux["sigma"])
        if n == "student":
            return stats.t.logpdf(y, aux["nu"], eta, aux["sigma"])
        if n == "lognormal":
            return stats.lognorm.logpdf(y, aux["sigma"], scale=np.exp(eta))
        if n == "poisson":
            return stats.poisson.logpmf(y, np.exp(eta))
        if n == "bernoulli":
            return y * -np.logaddexp(0, -eta) + (1 - y) * -np.logaddexp(0, eta)
        if n == "binomial":
            return stats.binom.logpmf(y, trials, special.expit(eta))
        if n == "negbinomial":
            mu, phi = np.exp(eta), aux["shape"]
            return stats.nbinom.logpmf(y, phi, phi / (phi + mu))
        if n == "Gamma":
            mu, shape = np.exp(eta), aux["shape"]
            return stats.gamma.logpdf(y, shape, scale=mu / shape)
        raise FamilyError(f"No log-likelihood for family {n!r}.")  # pragma: no cover

    def rng(self, eta: np.ndarray, aux: dict[str, np.ndarray], rng: np.random.Generator,
            trials: np.ndarray | None = None) -> np.ndarray:
        """Draw new responses given ``eta`` (``posterior_predict``)."""
        n = self.name
        if n == "gaussian":
            return rng.normal(eta, aux["sigma"])
        if n == "student":
            return eta + aux["sigma"] * rng.standard_t(aux["nu"], size=np.shape(eta))
        if n == "lognormal":
            return np.exp(rng.normal(eta, aux["sigma"]))
        if n == "poisson":
            return rng.poisson(np.exp(eta)).astype(float)
        if n == "bernoulli":
            return rng.binomial(1, special.expit(eta)).astype(float)
        if n == "binomial":
            return rng.binomial(np.broadcast_to(trials, np.shape(eta)).astype(int),
                                special.expit(eta)).astype(float)
        if n == "negbinomial":
            mu, phi = np.exp(eta), aux["shape"]
            return rng.poisson(rng.gamma(phi, mu / phi)).astype(float)
        if n == "Gamma":
            mu, shape = np.exp(eta), aux["shape"]
            return rng.gamma(shape, mu / shape)
        raise FamilyError(f"No random generator for family {n!r}.")  # pragma: no cover

    # ------------------------------------------------------------ validation
    def check_response(self, y: np.ndarray, column: str, trials: np.ndarray | None = None,
                       trials_column: str | None = None) -> None:
        """Raise :class:`FamilyError` naming the column if ``y`` is outside the support."""
        def bad(mask: np.ndarray, what: str, todo: str) -> None:
            if np.any(mask):
                idx = np.flatnonzero(mask)
                vals = ", ".join(repr(float(v)) for v in np.asarray(y)[idx[:3]])
                raise FamilyError(
                    f"Family {self.name!r}: column {column!r} has {len(idx)} value(s) {what} "
                    f"(e.g. {vals} in row(s) {', '.join(map(str, idx[:3]))}); {todo}"
                )

        if self.support in ("count", "binomial"):
            bad(y < 0, "below zero", "counts must be non-negative integers.")
            bad(y != np.round(y), "that are not whole numbers",
                "counts must be integers; use a continuous family (e.g. 'gaussian', 'Gamma') otherwise.")
        if self.support == "binary":
            bad(~np.isin(y, (0.0, 1.0)), "outside {0, 1}",
                "recode the response as 0/1, or use 'binomial' with trials for counts.")
        if self.support == "positive":
            bad(y <= 0, "that are not positive", f"family {self.name!r} needs y > 0.")
        if self.support == "binomial":
            if trials is None:
                raise FamilyError(
                    f"Family 'binomial' needs the number of trials: write 'cbind(successes, failures) ~ ...' "
                    f"or '{column} | trials(n) ~ ...'."
                )
            tcol = trials_column or "trials"
            if np.any(trials < 0) or np.any(trials != np.round(trials)):
                raise FamilyError(f"Column {tcol!r}: trials must be non-negative integers.")
            if np.any(y > trials):
                idx = np.flatnonzero(y > trials)
                raise FamilyError(
                    f"Column {column!r} has {len(idx)} row(s) with more successes than trials "
                    f"(first at row {idx[0]}: {y[idx[0]]:g} > {trials[idx[0]]:g})."
                )


def gaussian(link: str = "identity") -> Family:
    """Normal response; auxiliary ``sigma``. ``sh.families.gaussian()``"""
    return _make("gaussian", link)


def poisson(link: str = "log") -> Family:
    """Poisson counts with log link. ``sh.families.poisson()``"""
    return _make("poisson", link)


def binomial(link: str = "logit") -> Family:
    """Successes out of trials (``cbind(s, f)`` or ``y | trials(n)``). ``sh.families.binomial()``"""
    return _make("binomial", link)


def bernoulli(link: str = "logit") -> Family:
    """0/1 responses. ``sh.families.bernoulli()``"""
    return _make("bernoulli", link)


def negbinomial(link: str = "log") -> Family:
    """Negative binomial (Stan's ``neg_binomial_2``); auxiliary ``shape``. ``sh.families.negbinomial()``"""
    return _make("negbinomial", link)


def Gamma(link: str = "log") -> Family:  # noqa: N802 - the name R users know
    """Gamma with log link (brms's default); auxiliary ``shape``. ``sh.families.Gamma()``"""
    return _make("Gamma", link)


def student(link: str = "identity") -> Family:
    """Student-t response; auxiliaries ``sigma`` and ``nu``. ``sh.families.student()``"""
    return _make("student", link)


def lognormal(link: str = "identity") -> Family:
    """Log-normal response (``mu`` on the log scale); auxiliary ``sigma``. ``sh.families.lognormal()``"""
    return _make("lognormal", link)


# name -> (allowed links, aux parameters, support)
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "gaussian": (("identity",), ("sigma",), "real"),
    "poisson": (("log",), (), "count"),
    "binomial": (("logit",), (), "binomial"),
    "bernoulli": (("logit",), (), "binary"),
    "negbinomial": (("log",), ("shape",), "count"),
    "Gamma": (("log",), ("shape",), "positive"),
    "student": (("identity",), ("sigma", "nu"), "real"),
    "lognormal": (("identity",), ("sigma",), "positive"),
}

_ALIASES = {
    "normal": "gaussian", "gamma": "Gamma", "negative_binomial": "negbinomial",
    "negbin": "negbinomial", "student_t": "student", "logistic": "bernoulli",
}


def _make(name: str, link: str) -> Family:
    links, aux, support = FAMILIES[name]
    if link not in links:
        raise FamilyError(
            f"Link {link!r} is not supported for family {name!r}; supported: {', '.join(links)}."
        )
    return Family(name=name, link=link, aux=aux, support=support)


def get_family(family: str | Family) -> Family:
    """Turn a family name (``"poisson"``) or a :class:`Family` into a :class:`Family`.

    >>> get_family("gaussian").aux
    ('sigma',)
    """
    if isinstance(family, Family):
        return family
    if not isinstance(family, str):
        raise FamilyError(f"family must be a name such as 'poisson' or a Family, not {type(family).__name__}.")
    key = family if family in FAMILIES else _ALIASES.get(family.lower(), family.lower())
    if key not in FAMILIES:
        import difflib

        close = difflib.get_close_matches(family, list(FAMILIES) + list(_ALIASES), n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise FamilyError(
            f"Unknown family {family!r}.{hint} Supported: {', '.join(FAMILIES)}."
        )
    return _make(key, FAMILIES[key][0][0])
