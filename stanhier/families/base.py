"""The :class:`Family` base class, :class:`AuxParam` and the family registry.

A family is one subclass of :class:`Family` in its own module of ``stanhier/families/``,
decorated with :func:`register`. The class holds everything about the family: its
links, its auxiliary parameters (Stan bounds, brms's default prior), the support of
the response, the Stan text of the ``brm`` likelihood (and, for families ``glmer``
fits, the GLMM log-likelihood and its derivatives), and the numpy log-likelihood,
random draws, mean, variance and unit deviance.

Example
-------
>>> from stanhier.families import get_family
>>> fam = get_family("negbinomial")
>>> fam.aux_params[0].stan_declaration
'real<lower=0> shape;  // shape parameter'
>>> fam.aux_params[0].default_prior(scale=2.5)
('gamma', (0.01, 0.01))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from ..errors import FamilyError
from .links import LINKS, Link

__all__ = ["AuxParam", "Family", "register", "REGISTRY", "LINKS", "Link", "SCALE", "SIGMA"]

#: placeholder in :attr:`AuxParam.prior` for brms's data-dependent scale (``def_scale_prior``)
SCALE = "scale"

def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class AuxParam:
    """An auxiliary (family-specific) parameter such as ``sigma`` or ``shape``.

    ``prior`` is brms's default prior as (distribution, arguments); an argument equal to
    :data:`SCALE` is replaced by the data-dependent scale of brms's ``def_scale_prior``.

    >>> AuxParam("nu", lower=1, prior=("gamma", (2, 0.1)), comment="degrees of freedom").stan_declaration
    'real<lower=1> nu;  // degrees of freedom'
    """

    name: str
    lower: float | None = None
    upper: float | None = None
    prior: tuple[str, tuple[float | str, ...]] = ("student_t", (3.0, 0.0, SCALE))
    comment: str = ""

    @property
    def stan_bounds(self) -> str:
        parts = ([f"lower={_num(self.lower)}"] if self.lower is not None else []) + \
                ([f"upper={_num(self.upper)}"] if self.upper is not None else [])
        return f"<{', '.join(parts)}>" if parts else ""

    @property
    def stan_declaration(self) -> str:
        """The parameter's line in the ``parameters`` block of the ``brm`` program."""
        return f"real{self.stan_bounds} {self.name};  // {self.comment}"

    def default_prior(self, scale: float) -> tuple[str, tuple[float, ...]]:
        """brms's default prior: (distribution, arguments) for the given data scale."""
        dist, args = self.prior
        return dist, tuple(float(scale) if a == SCALE else float(a) for a in args)


def _score_weight(y: np.ndarray, mean: np.ndarray, dmean: np.ndarray,
                  var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GLM score (y - E[y]) dmean / var and weight dmean^2 / var (dmean = d E[y] / d eta);
    0 where the variance vanishes (a saturated mean: no information)."""
    ratio = np.divide(dmean, var, out=np.zeros(np.broadcast(dmean, var).shape), where=var > 0)
    return (y - mean) * ratio, dmean * ratio


#: the residual SD of the location-scale families (brms's ``student_t(3, 0, scale)`` prior)
SIGMA = AuxParam("sigma", lower=0, prior=("student_t", (3.0, 0.0, SCALE)), comment="residual SD")


@dataclass(frozen=True)
class Family:
    """A response distribution with its link (one subclass per family, see :func:`register`).

    Class attributes a family defines: ``name`` (brms's name), ``links`` (the first is the
    default, as brms's), ``aux_params``, ``support`` (``real``, ``positive``, ``unit``, ``count``,
    ``binary``, ``binomial``), ``mean_range`` (where the distribution's ``mu`` may lie),
    ``stan_data`` (the response's lines in the ``data`` block), ``stan_likelihood``
    (``brm``'s likelihood statements given ``mu``, the mean after the inverse link; in scope:
    ``Y``, ``mu``, ``trials`` and the auxiliary parameters), optionally ``stan_default_likelihood``
    (statements for the default link alone, e.g. Stan's ``*_glm`` functions; ``mu`` is then the
    linear predictor without ``Xc * b``) and, for families ``glmer`` fits, ``glmm_lpmf`` /
    ``glmm_derivatives`` (default link) with ``glmm_lpmf_mu`` / ``glmm_variance`` (any link).
    Everything about a link itself is its :class:`~stanhier.families.links.Link`.

    >>> from stanhier.families import poisson
    >>> fam = poisson()
    >>> fam.name, fam.link, fam.aux, fam.is_discrete
    ('poisson', 'log', (), True)
    """

    link: str = ""

    name: ClassVar[str] = ""
    links: ClassVar[tuple[str, ...]] = ("identity",)
    aux_params: ClassVar[tuple[AuxParam, ...]] = ()
    support: ClassVar[str] = "real"
    aliases: ClassVar[tuple[str, ...]] = ()
    #: closed range of the distribution's ``mu`` (the inverse link's value)
    mean_range: ClassVar[tuple[float, float]] = (-np.inf, np.inf)
    #: True when ``mu`` must lie strictly inside :attr:`mean_range` (Gamma: mu > 0)
    mean_open: ClassVar[bool] = False
    #: lines of the Stan ``data`` block declaring the response (and trials)
    stan_data: ClassVar[tuple[str, ...]] = ("vector[N] Y;  // response",)
    #: ``brm``'s likelihood statements given ``mu`` (the mean, after the inverse link)
    stan_likelihood: ClassVar[str] = ""
    #: ``brm``'s likelihood statements for the default link only (``mu``: the linear predictor
    #: without ``Xc * b``); ``None``: the inverse link, then ``stan_likelihood``
    stan_default_likelihood: ClassVar[str | None] = None
    #: GLMM (``glmer``) log-likelihood at the default link: a Stan expression in ``y`` (int
    #: array), ``y_real`` (the response as a vector: continuous families), ``trials``, ``eta``
    #: (vector) and ``phi`` (the auxiliary parameter, 1 if none); ``None``: no glmer.
    #: Families with a scale parameter (:attr:`glmm_aic`) give it at scale 1 (-deviance / 2 up
    #: to a constant: the function lme4's PIRLS maximizes for the random-effect modes)
    glmm_lpmf: ClassVar[str | None] = None
    #: GLMM first two derivatives at the default link: Stan statements setting ``d[:, 1]`` =
    #: d log p / d eta and ``d[:, 2]`` = its weight (the negative second derivative, which for
    #: a canonical link is the Fisher information) (``n`` = rows(eta)), variables as ``glmm_lpmf``
    glmm_derivatives: ClassVar[str | None] = None
    #: GLMM log-likelihood at any link: a Stan expression in ``y``, ``trials``, ``mu`` (the
    #: inverse link of ``eta``; E[y] = trials .* mu) and ``phi``
    glmm_lpmf_mu: ClassVar[str | None] = None
    #: Var[y] as a Stan expression in ``mu``, ``trials`` and ``phi`` (glmer's Fisher weights at
    #: any link: (d E[y] / d eta)^2 / Var[y], lme4's PIRLS weights)
    glmm_variance: ClassVar[str | None] = None
    #: the auxiliary parameter glmer estimates (on the log scale, as ``phi``), if any
    glmm_aux: ClassVar[str | None] = None
    #: the family's code in the glmer program's data (``family``): unique, fixed once given
    glmm_code: ClassVar[int | None] = None
    #: families with a scale parameter (gaussian, Gamma), which lme4's glmer profiles out: the
    #: total deviance (R's ``sum(dev.resids)``), a Stan expression in ``y_real`` and ``mu``
    glmm_deviance: ClassVar[str | None] = None
    #: ... and R's ``family()$aic`` (unit prior weights): a Stan expression in ``y_real``, ``mu``,
    #: ``dev`` (:attr:`glmm_deviance`) and ``n`` (observations). lme4's Laplace objective is
    #: ``log|H| + |u|^2 + aic`` with the dispersion profiled out inside ``aic``; ``None``: no scale
    glmm_aic: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        if not self.link:
            object.__setattr__(self, "link", self.links[0])
        if self.link not in self.links:
            raise FamilyError(
                f"Link {self.link!r} is not supported for family {self.name!r}; supported links: "
                f"{', '.join(self.links)} (e.g. family='{self.name}(link=\"{self.links[-1]}\")')."
            )

    def __repr__(self) -> str:
        return f"Family({self.name!r}, link={self.link!r})"

    @property
    def spec(self) -> str:
        """The family as a string :func:`~stanhier.families.get_family` reads back: the name at
        the default link, else ``name(link='...')`` (reproducing calls, the CLI's ``--family``).

        >>> from stanhier.families import binomial
        >>> binomial().spec, binomial(link="probit").spec
        ('binomial', "binomial(link='probit')")
        """
        return self.name if self.default_link else f"{self.name}(link='{self.link}')"

    # ------------------------------------------------------------ description
    @property
    def aux(self) -> tuple[str, ...]:
        """Names of the auxiliary parameters in the order brms prints them."""
        return tuple(p.name for p in self.aux_params)

    @property
    def is_discrete(self) -> bool:
        return self.support in ("count", "binary", "binomial")

    @property
    def uses_trials(self) -> bool:
        return self.support == "binomial"

    @property
    def has_sigma(self) -> bool:
        return "sigma" in self.aux

    @property
    def glmm_capable(self) -> bool:
        """True when ``glmer`` can fit the family (it has the GLMM Stan snippets)."""
        return self.glmm_lpmf is not None

    @property
    def glmm_scale(self) -> bool:
        """True when glmer profiles out a scale parameter (lme4's ``useSc``): a residual SD
        (:meth:`~stanhier.ml.fit.MerFit.sigma`) from the Pearson residuals, and R's ``aic`` in the
        Laplace objective.

        >>> from stanhier.families import get_family
        >>> get_family("Gamma").glmm_scale, get_family("poisson").glmm_scale
        (True, False)
        """
        return self.glmm_aic is not None

    @property
    def scale_link(self) -> str:
        """The link brms's ``def_scale_prior`` uses to set the default prior scales."""
        return self.link

    def lme4_label(self, aux: dict[str, float]) -> str:
        """The family as lme4's ``summary()`` prints it (``Family: <label>  ( link )``)."""
        return self.name

    # ------------------------------------------------------------ links
    @property
    def link_object(self) -> Link:
        """The family's :class:`~stanhier.families.links.Link`."""
        return LINKS[self.link]

    @property
    def default_link(self) -> bool:
        """True at the family's default link (the one with its own Stan fast paths)."""
        return self.link == self.links[0]

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """The distribution's ``mu`` from the linear predictor."""
        return self.link_object.inverse(eta)

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        return self.link_object.link(mu)

    def stan_mean_outside(self, mu: str) -> str:
        """Stan condition: some element of the vector ``mu`` is outside :attr:`mean_range` (its
        interior when :attr:`mean_open`) or not finite (an inverse link at its pole).

        >>> from stanhier.families import binomial, get_family
        >>> binomial().stan_mean_outside("mu")
        'min(mu) < 0 || max(mu) > 1 || is_inf(sum(mu)) || is_nan(sum(mu))'
        >>> get_family("Gamma").stan_mean_outside("mu")
        'min(mu) <= 0 || is_inf(sum(mu)) || is_nan(sum(mu))'
        """
        lo, hi = self.mean_range
        strict = "=" if self.mean_open else ""
        parts = ([f"min({mu}) <{strict} {_num(lo)}"] if np.isfinite(lo) else []) + \
                ([f"max({mu}) >{strict} {_num(hi)}"] if np.isfinite(hi) else [])
        return " || ".join(parts + [f"is_inf(sum({mu}))", f"is_nan(sum({mu}))"])

    @property
    def stan_model(self) -> str:
        """``brm``'s likelihood statements for this link (``mu``: the linear predictor without
        ``Xc * b``): the default link's own statements, else the inverse link then ``stan_likelihood``.

        >>> from stanhier.families import poisson
        >>> print(poisson(link="sqrt").stan_model)
        mu = square(mu + Xc * b);
        target += poisson_lpmf(Y | mu);
        """
        if self.default_link and self.stan_default_likelihood is not None:
            return self.stan_default_likelihood
        return f"mu = {self.link_object.stan_inverse('mu + Xc * b')};\n{self.stan_likelihood}"

    # ------------------------------------------------------------ numpy helpers (broadcast over draws)
    def mean(self, eta: np.ndarray, aux: dict[str, np.ndarray], trials: np.ndarray | None = None) -> np.ndarray:
        """E[y | eta, aux] (brms's ``posterior_epred``)."""
        return self.inverse_link(eta)

    def variance(self, eta: np.ndarray, aux: dict[str, np.ndarray],
                 trials: np.ndarray | None = None) -> np.ndarray:
        """Var[y | eta, aux]."""
        raise FamilyError(f"Family {self.name!r} has no variance function.")

    def loglik(self, y: np.ndarray, eta: np.ndarray, aux: dict[str, np.ndarray],
               trials: np.ndarray | None = None) -> np.ndarray:
        """Pointwise log density of ``y`` given the linear predictor ``eta``."""
        raise NotImplementedError

    def rng(self, eta: np.ndarray, aux: dict[str, np.ndarray], rng: np.random.Generator,
            trials: np.ndarray | None = None) -> np.ndarray:
        """Draw new responses given ``eta`` (``posterior_predict``)."""
        raise NotImplementedError

    def unit_deviance(self, y: np.ndarray, eta: np.ndarray, aux: dict[str, np.ndarray],
                      trials: np.ndarray | None = None) -> np.ndarray:
        """R's ``family()$dev.resids`` (deviance residuals are its signed square root)."""
        raise FamilyError(f"Family {self.name!r} has no unit deviance.")

    # ------------------------------------------------------------ glmer: PIRLS pieces and starts
    def glm_working(self, y: np.ndarray, eta: np.ndarray, aux: dict[str, np.ndarray],
                    trials: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score d log p / d eta and Fisher weight (d E[y] / d eta)^2 / Var[y] at ``eta``: lme4's
        PIRLS working weights (the observed information too at a canonical link).

        >>> from stanhier.families import poisson
        >>> tuple(float(v[0]) for v in poisson().glm_working(np.array([3.0]), np.array([0.0]), {}))
        (2.0, 1.0)
        """
        n = 1.0 if trials is None else np.asarray(trials, float)
        return _score_weight(y, self.mean(eta, aux, trials), n * self.link_object.mu_eta(eta),
                             self.variance(eta, aux, trials))

    def start_mean(self, y: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """The distribution's ``mu`` the IRLS start begins from: (y + 1/2) / (trials + 1) for
        proportions (0/1, successes out of trials, values in (0, 1)), y + 1/2 otherwise."""
        return (y + 0.5) / (trials + 1) if self.support in ("binary", "binomial", "unit") else y + 0.5

    def irls_start(self, y: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """Starting linear predictor of the IRLS fit of the fixed effects (glmer's start)."""
        return self.linkfun(self.start_mean(y, trials))

    def irls_working(self, y: np.ndarray, eta: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IRLS weights and working response at ``eta`` of the quasi-likelihood GLM with this link
        and the variance function of the response's support: binomial's n mu (1 - mu) for
        proportions, Poisson's mu for counts and positive responses, 1 for real ones. These are
        the Fisher weights of poisson, binomial and bernoulli; for the others (negbinomial,
        Gamma, beta...) a start that needs no auxiliary parameter."""
        n = np.asarray(trials, float) if self.support == "binomial" else 1.0
        mu = self.inverse_link(eta)
        if self.support in ("binary", "binomial", "unit"):
            var = n * mu * (1 - mu)
        elif self.support in ("count", "positive"):
            var = mu
        else:
            var = np.ones_like(mu)
        score, w = _score_weight(y, n * mu, n * self.link_object.mu_eta(eta), var)
        w = np.maximum(w, 1e-10)
        return w, eta + score / w

    def glmm_aux_start(self, y: np.ndarray, mu: np.ndarray) -> list[float]:
        """Starting value(s) of glmer's log auxiliary parameter given the IRLS means."""
        return []

    # ------------------------------------------------------------ validation
    def check_response(self, y: np.ndarray, column: str, trials: np.ndarray | None = None,
                       trials_column: str | None = None) -> None:
        """Raise :class:`FamilyError` naming the column if ``y`` is outside the support."""
        y = np.asarray(y, float)
        if self.support in ("count", "binomial"):
            self.reject_values(y, column, y < 0, "below zero", "counts must be non-negative integers.")
            self.reject_values(y, column, y != np.round(y), "that are not whole numbers",
                      "counts must be integers; use a continuous family (e.g. 'gaussian', 'Gamma') otherwise.")
        if self.support == "binary":
            self.reject_values(y, column, ~np.isin(y, (0.0, 1.0)), "outside {0, 1}",
                      "recode the response as 0/1, or use 'binomial' with trials for counts.")
        if self.support == "positive":
            self.reject_values(y, column, y <= 0, "that are not positive", f"family {self.name!r} needs y > 0.")

    def reject_values(self, y: np.ndarray, column: str, mask: np.ndarray, what: str, todo: str) -> None:
        """Raise :class:`FamilyError` if any row of ``mask`` is set (used by ``check_response``)."""
        if np.any(mask):
            idx = np.flatnonzero(mask)
            vals = ", ".join(repr(float(v)) for v in np.asarray(y)[idx[:3]])
            raise FamilyError(
                f"Family {self.name!r}: column {column!r} has {len(idx)} value(s) {what} "
                f"(e.g. {vals} in row(s) {', '.join(map(str, idx[:3]))}); {todo}"
            )

    def with_link(self, link: str) -> "Family":
        """The same family with another (supported) link."""
        return dataclasses.replace(self, link=link)


#: family name -> class, in registration order
REGISTRY: dict[str, type[Family]] = {}

F = TypeVar("F", bound=type[Family])


def register(cls: F) -> F:
    """Class decorator adding a family to the registry (by its ``name`` and ``aliases``)."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"Family class {cls.__name__} needs a unique name, got {cls.name!r}.")
    if (cls.glmm_lpmf is None) != (cls.glmm_derivatives is None) or \
            (cls.glmm_lpmf is not None) != (cls.glmm_code is not None):
        raise ValueError(f"Family class {cls.__name__}: glmm_lpmf, glmm_derivatives and glmm_code go together.")
    if (cls.glmm_lpmf is None) != (cls.glmm_lpmf_mu is None) or (cls.glmm_lpmf is None) != (cls.glmm_variance is None):
        raise ValueError(f"Family class {cls.__name__}: glmer at any link needs glmm_lpmf_mu and glmm_variance.")
    if (cls.glmm_deviance is None) != (cls.glmm_aic is None) or (cls.glmm_aic is not None and cls.glmm_lpmf is None):
        raise ValueError(f"Family class {cls.__name__}: glmm_deviance and glmm_aic go together, with glmm_lpmf.")
    if unknown := [link for link in cls.links if link not in LINKS]:
        raise ValueError(f"Family class {cls.__name__}: unknown link(s) {unknown}; define them in links.py.")
    if cls.glmm_code is not None and any(c.glmm_code == cls.glmm_code for c in REGISTRY.values()):
        raise ValueError(f"Family class {cls.__name__}: glmm_code {cls.glmm_code} is taken.")
    REGISTRY[cls.name] = cls
    return cls
