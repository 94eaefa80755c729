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
from typing import Callable, ClassVar, TypeVar

import numpy as np
from scipy import special

from ..errors import FamilyError

__all__ = ["AuxParam", "Family", "register", "REGISTRY", "LINKS", "SCALE", "SIGMA"]

#: placeholder in :attr:`AuxParam.prior` for brms's data-dependent scale (``def_scale_prior``)
SCALE = "scale"

#: link name -> (inverse link, link function)
LINKS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "identity": (lambda e: e, lambda m: m),
    "log": (np.exp, np.log),
    "logit": (special.expit, special.logit),
}


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


#: the residual SD of the location-scale families (brms's ``student_t(3, 0, scale)`` prior)
SIGMA = AuxParam("sigma", lower=0, prior=("student_t", (3.0, 0.0, SCALE)), comment="residual SD")


@dataclass(frozen=True)
class Family:
    """A response distribution with its link (one subclass per family, see :func:`register`).

    Class attributes a family defines: ``name`` (brms's name), ``links`` (the first is the
    default), ``aux_params``, ``support`` (``real``, ``positive``, ``unit``, ``count``,
    ``binary``, ``binomial``), ``stan_data`` (the response's lines in the ``data`` block),
    ``stan_likelihood`` (``brm``'s likelihood statements; in scope: ``Y``, ``mu`` (the
    linear predictor without ``Xc * b``), ``Xc``, ``b``, ``trials`` and the auxiliary
    parameters) and, for families ``glmer`` fits, ``glmm_lpmf`` / ``glmm_derivatives``.

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
    #: lines of the Stan ``data`` block declaring the response (and trials)
    stan_data: ClassVar[tuple[str, ...]] = ("vector[N] Y;  // response",)
    #: ``brm``'s likelihood statements (one or more lines)
    stan_likelihood: ClassVar[str] = ""
    #: GLMM (``glmer``) log-likelihood: a Stan expression in ``y`` (int array), ``trials``,
    #: ``eta`` (vector) and ``phi`` (the auxiliary parameter, 1 if none); ``None``: no glmer
    glmm_lpmf: ClassVar[str | None] = None
    #: GLMM first two derivatives: Stan statements setting ``d[:, 1]`` = d log p / d eta and
    #: ``d[:, 2]`` = -d^2 log p / d eta^2 (``n`` = rows(eta)), same variables as ``glmm_lpmf``
    glmm_derivatives: ClassVar[str | None] = None
    #: the auxiliary parameter glmer estimates (on the log scale, as ``phi``), if any
    glmm_aux: ClassVar[str | None] = None
    #: the family's code in the glmer program's data (``family``): unique, fixed once given
    glmm_code: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        if not self.link:
            object.__setattr__(self, "link", self.links[0])
        if self.link not in self.links:
            raise FamilyError(
                f"Link {self.link!r} is not supported for family {self.name!r}; supported: {', '.join(self.links)}."
            )

    def __repr__(self) -> str:
        return f"Family({self.name!r}, link={self.link!r})"

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
    def scale_link(self) -> str:
        """The link brms's ``def_scale_prior`` uses to set the default prior scales."""
        return self.link

    def lme4_label(self, aux: dict[str, float]) -> str:
        """The family as lme4's ``summary()`` prints it (``Family: <label>  ( link )``)."""
        return self.name

    # ------------------------------------------------------------ links
    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """The distribution's ``mu`` from the linear predictor."""
        return LINKS[self.link][0](eta)

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        return LINKS[self.link][1](mu)

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

    # ------------------------------------------------------------ glmer starting values
    def irls_start(self, y: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """Starting linear predictor of the IRLS fit of the fixed effects (glmer's start)."""
        if self.link == "log":
            return np.log(y + 0.5)
        p = (y + 0.5) / (trials + 1)
        return np.log(p / (1 - p))

    def irls_working(self, y: np.ndarray, eta: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IRLS weights and working response at ``eta`` (log link: Poisson's; logit: binomial's)."""
        if self.link == "log":
            mu = np.exp(eta)
            return mu, eta + (y - mu) / mu
        p = special.expit(eta)
        w = np.maximum(trials * p * (1 - p), 1e-10)
        return w, eta + (y - trials * p) / w

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
    if cls.glmm_code is not None and any(c.glmm_code == cls.glmm_code for c in REGISTRY.values()):
        raise ValueError(f"Family class {cls.__name__}: glmm_code {cls.glmm_code} is taken.")
    REGISTRY[cls.name] = cls
    return cls
