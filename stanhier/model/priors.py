"""Stage 3b: priors — brms's defaults, user priors, and how they reach Stan.

A user writes ``sh.prior("normal(0, 1)", class_="b", coef="temperature")``. The
prior *family* (``normal``) is part of the model's structure; its
hyperparameters (0, 1) are Stan data, never literals in the program. Defaults
follow brms 2.18 exactly (``get_prior``).

Example
-------
>>> import pandas as pd, stanhier as sh
>>> df = pd.DataFrame({"y": [1.0, 2.0, 4.0, 3.0], "x": [0, 1, 0, 1], "g": list("aabb")})
>>> tab = sh.get_prior("y ~ x + (1 | g)", data=df)
>>> list(tab["class"])
['b', 'b', 'Intercept', 'sd', 'sd', 'sd', 'sigma']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .design import Design
from .distributed import exact_quantiles
from ..errors import PriorError
from ..families import LINKS, Family, aux_names

__all__ = ["Prior", "prior", "PriorStatement", "PriorSet", "resolve_priors", "DISTRIBUTIONS",
           "default_scale_prior", "truncation_constant", "kernel_constant", "lkj_constant"]

#: Stan distributions allowed in priors: name -> (number of arguments, support).
DISTRIBUTIONS: dict[str, tuple[int, str]] = {
    "normal": (2, "real"), "student_t": (3, "real"), "cauchy": (2, "real"),
    "double_exponential": (2, "real"), "logistic": (2, "real"), "skew_normal": (3, "real"),
    "exponential": (1, "positive"), "gamma": (2, "positive"), "inv_gamma": (2, "positive"),
    "lognormal": (2, "positive"), "weibull": (2, "positive"), "chi_square": (1, "positive"),
    "inv_chi_square": (1, "positive"), "frechet": (2, "positive"),
    "uniform": (2, "bounded"), "beta": (2, "unit"),
    "lkj": (1, "corr"), "lkj_corr_cholesky": (1, "corr"),
}

#: Each distribution of :data:`DISTRIBUTIONS` but the LKJ as scipy.stats spells it, from Stan's
#: arguments. Used for one number only: a prior truncated at a lower bound ``lb`` (a half-normal
#: on an SD...) is normalised by ``-log P(X > lb)``, which depends on the hyperparameters alone, so
#: it is Stan data (``lt_i``) computed here rather than a CCDF the compiler instantiates in every
#: program (about 10 s of compile time per program for ``student_t_lccdf``).
_SCIPY_DISTS = {
    "normal": lambda mu, sigma: ("norm", (), mu, sigma),
    "student_t": lambda nu, mu, sigma: ("t", (nu,), mu, sigma),
    "cauchy": lambda mu, sigma: ("cauchy", (), mu, sigma),
    "double_exponential": lambda mu, sigma: ("laplace", (), mu, sigma),
    "logistic": lambda mu, sigma: ("logistic", (), mu, sigma),
    "skew_normal": lambda xi, omega, alpha: ("skewnorm", (alpha,), xi, omega),
    "exponential": lambda beta: ("expon", (), 0.0, 1.0 / beta),
    "gamma": lambda alpha, beta: ("gamma", (alpha,), 0.0, 1.0 / beta),
    "inv_gamma": lambda alpha, beta: ("invgamma", (alpha,), 0.0, beta),
    "lognormal": lambda mu, sigma: ("lognorm", (sigma,), 0.0, math.exp(mu)),
    "weibull": lambda alpha, sigma: ("weibull_min", (alpha,), 0.0, sigma),
    "chi_square": lambda nu: ("chi2", (nu,), 0.0, 1.0),
    "inv_chi_square": lambda nu: ("invgamma", (nu / 2.0,), 0.0, 0.5),
    "frechet": lambda alpha, sigma: ("invweibull", (alpha,), 0.0, sigma),
    "uniform": lambda a, b: ("uniform", (), a, b - a),
    "beta": lambda a, b: ("beta", (a, b), 0.0, 1.0),
}


def truncation_constant(dist: str, lb: float, args: Sequence[Sequence[float]]) -> float:
    """``-sum log P(X_i > lb)`` for ``X_i ~ dist(args[i])``: what Stan's
    ``-dist_lccdf(lb | args)`` adds to the log prior of parameters bounded below by ``lb``.

    >>> round(truncation_constant("student_t", 0.0, [(3.0, 0.0, 2.5)]), 10)   # half-t: log 2
    0.6931471806
    """
    from scipy import stats

    total = 0.0
    for row in args:
        name, shapes, loc, scale = _SCIPY_DISTS[dist](*row)
        total -= float(getattr(stats, name).logsf(lb, *shapes, loc=loc, scale=scale))
    return total


#: Prior families the Stan programs write as ``lc_i + kernel(x)`` (``templates/prior_kernels.stan``)
#: instead of calling Stan's ``_lpdf``, whose autodiff instantiation costs seconds of compile time
#: in every program: the point ``x0`` (from Stan's arguments) where the template's kernel is 0, so
#: the constant ``lc_i`` is the log density at ``x0``, computed here with scipy (Stan data).
KERNEL_ZERO = {
    "normal": lambda mu, sigma: mu,
    "student_t": lambda nu, mu, sigma: mu,
    "cauchy": lambda mu, sigma: mu,
    "exponential": lambda beta: 0.0,
    "gamma": lambda alpha, beta: 1.0,
}


def lkj_constant(eta: float, dim: int) -> float:
    """Log normalizing constant of the LKJ(eta) density of a ``dim x dim`` correlation matrix
    (Lewandowski, Kurowicka and Joe 2009, theorem 5; Stan's ``do_lkj_constant``): the value of
    ``lkj_corr_cholesky_lpdf`` at the identity.

    >>> round(lkj_constant(1.0, 3), 10) == round(math.log(2) - 2 * math.log(math.pi), 10)   # 1 / (pi^2 / 2)
    True
    """
    k1 = dim - 1
    return k1 * math.lgamma(eta + 0.5 * k1) - sum(
        0.5 * k * math.log(math.pi) + math.lgamma(eta + 0.5 * (k1 - k)) for k in range(1, dim))


def kernel_constant(dist: str, args: Sequence[Sequence[float]], dim: int = 0) -> float:
    """``sum_i lpdf(x0_i | args_i)``: what a prior written as a kernel adds as the constant ``lc``
    (``dim``: the matrix size, for the LKJ).

    >>> round(kernel_constant("normal", [(0.0, 1.0), (3.0, 1.0)]), 10) == round(-math.log(2 * math.pi), 10)
    True
    """
    if dist == "lkj_corr_cholesky":
        return sum(lkj_constant(float(row[0]), dim) for row in args)
    from scipy import stats

    total = 0.0
    for row in args:
        name, shapes, loc, scale = _SCIPY_DISTS[dist](*row)
        total += float(getattr(stats, name).logpdf(KERNEL_ZERO[dist](*row), *shapes, loc=loc, scale=scale))
    return total


#: prior classes: the model's own and every family's auxiliary parameters (``sigma``, ``shape``...)
AUX_CLASSES = aux_names()
CLASSES = ("Intercept", "b", "sd", "cor", "L") + AUX_CLASSES


@dataclass(frozen=True)
class Prior:
    """One user prior, as brms's ``set_prior``/``prior``.

    >>> prior("normal(0, 1)", class_="b", coef="x")
    Prior(dist='normal', args=(0.0, 1.0), class_='b', coef='x', group='')
    """

    dist: str
    args: tuple[float, ...]
    class_: str = "b"
    coef: str = ""
    group: str = ""

    @property
    def text(self) -> str:
        if self.dist == "flat":
            return "(flat)"
        return f"{self.dist}({', '.join(_fmt(a) for a in self.args)})"


_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$")


def _parse_dist(text: str) -> tuple[str, tuple[float, ...]]:
    if text.strip() in ("", "flat", "(flat)"):
        return "flat", ()
    match = _CALL.match(text)
    if not match:
        raise PriorError(f"Cannot read prior {text!r}: write it like 'normal(0, 1)' or 'student_t(3, 0, 2.5)'.")
    name, argtext = match.group(1), match.group(2)
    if name not in DISTRIBUTIONS:
        import difflib

        close = difflib.get_close_matches(name, DISTRIBUTIONS, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise PriorError(
            f"Prior {text!r}: {name!r} is not a Stan distribution stanhier supports.{hint} "
            f"Supported: {', '.join(DISTRIBUTIONS)}."
        )
    try:
        args = tuple(float(a) for a in argtext.split(",")) if argtext.strip() else ()
    except ValueError:
        raise PriorError(f"Prior {text!r}: arguments must be numbers (hyperparameters are data).") from None
    n_args = DISTRIBUTIONS[name][0]
    if len(args) != n_args:
        raise PriorError(f"Prior {text!r}: {name} takes {n_args} argument(s), got {len(args)}.")
    if name == "lkj":
        name = "lkj_corr_cholesky"
    return name, args


def prior(dist: str, class_: str = "b", coef: str = "", group: str = "", **kwargs) -> Prior:
    """Make a prior, as brms's ``prior(normal(0, 1), class = b, coef = x)``.

    ``class`` may also be passed as ``klass=`` or ``**{"class": ...}``.

    >>> prior("student_t(3, 0, 10)", class_="sd", group="Subject").group
    'Subject'
    """
    class_ = kwargs.pop("class", kwargs.pop("klass", class_))
    if kwargs:
        raise PriorError(f"prior() got unknown argument(s) {sorted(kwargs)}; use class_, coef, group.")
    if class_ not in CLASSES:
        raise PriorError(f"Unknown prior class {class_!r}; use one of {', '.join(CLASSES)}.")
    if class_ == "L":
        class_ = "cor"
    name, args = _parse_dist(dist)
    return Prior(dist=name, args=args, class_=class_, coef=coef or "", group=group or "")


def _fmt(x: float) -> str:
    return f"{x:g}"


def _r_round(x: float, digits: int = 1) -> float:
    """R's round(): IEC 60559 half-to-even on the decimal representation."""
    return float(round(x, digits))


def _mad(x: np.ndarray) -> float:
    return float(np.median(np.abs(x - np.median(x))) * 1.4826)


#: the links at which brms sets the default prior scales from link(y) (``def_scale_prior``)
SCALE_LINKS = ("identity", "log", "inverse", "sqrt")


def _response_on_scale(d: Design, link: str, center: float | None = None) -> np.ndarray:
    """The response on brms's prior scale, link(y) (log and inverse links: zeros as 0.1);
    ``center``: |link(y) - center|."""
    y = np.asarray(d.y, float)
    if link in ("log", "inverse"):
        y = np.where(y == 0, y + 0.1, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = LINKS[link].link(y)
    return y if center is None else np.abs(y - center)


def _distributed_location_scale(design: Design, link: str) -> tuple[float, float]:
    """(round(median), round(mad)) of the response of a Dask design, computed exactly."""
    cache = design.source.cache
    key = f"location_scale_{link}"
    if key not in cache:
        med = float(exact_quantiles(design.source, partial(_response_on_scale, link=link), [0.5], "the response")[0])
        mad = float(exact_quantiles(design.source, partial(_response_on_scale, link=link, center=med), [0.5],
                                    "the response's absolute deviations")[0]) * 1.4826
        cache[key] = (_r_round(med, 1), _r_round(mad, 1))
    return cache[key]


def default_scale_prior(design: Design, family: Family, center: bool = True) -> tuple[float, float]:
    """brms's ``def_scale_prior``: (location, scale) of ``student_t(3, location, scale)``."""
    location, scale = 0.0, 2.5
    link = family.scale_link
    if link in SCALE_LINKS and design.distributed:  # exact median and MAD on the cluster
        loc_y, scale_y = _distributed_location_scale(design, link)
        if math.isfinite(scale_y):
            scale = max(scale, scale_y)
        if center and math.isfinite(loc_y):
            location = loc_y
    elif link in SCALE_LINKS:
        y = _response_on_scale(design, link)
        scale_y = _r_round(_mad(y), 1)
        if math.isfinite(scale_y):
            scale = max(scale, scale_y)
        if center:
            loc_y = _r_round(float(np.median(y)), 1)
            if math.isfinite(loc_y):
                location = loc_y
    return location, scale


# ------------------------------------------------------------------ resolved priors
@dataclass(frozen=True)
class PriorStatement:
    """One ``lprior +=`` line of the Stan program (structure) with its data (values)."""

    index: int  #: positional number i: data ``Np_i``, ``Jp_i``, ``pa_i_1``...
    param: str  #: Stan parameter (``b``, ``Intercept``, ``sd_1``, ``L_1``, ``sigma``)
    dist: str
    n_args: int
    scalar: bool  #: the parameter is a real (no indexing)
    lb: float | None  #: lower bound of the parameter (truncation)
    comment: str  #: what it is, for the generated code
    positions: tuple[int, ...] = ()  #: 1-based positions in the vector parameter
    args: tuple[tuple[float, ...], ...] = ()  #: per position (or one row for scalar)
    dim: int = 0  #: size of a matrix parameter (the LKJ prior's ``L_k``: its coefficients per level)

    @property
    def kernel(self) -> bool:
        """The program writes this prior as its data constant ``lc_i`` plus a kernel."""
        return self.dist in KERNEL_ZERO or self.dist == "lkj_corr_cholesky"

    @property
    def truncated(self) -> bool:
        support = DISTRIBUTIONS.get(self.dist, (0, "corr"))[1]
        return self.lb is not None and (support == "real" or self.lb != 0.0)

    def structure(self) -> tuple:
        return (self.param, self.dist, self.n_args, self.scalar, self.truncated, self.lb is not None)


@dataclass(frozen=True)
class PriorRow:
    """A row of the ``get_prior`` table."""

    prior: str
    class_: str
    coef: str = ""
    group: str = ""
    lb: str = ""
    source: str = "default"


@dataclass(frozen=True, eq=False)
class PriorSet:
    """All priors of a model: the Stan statements and the brms-style table."""

    statements: tuple[PriorStatement, ...]
    rows: tuple[PriorRow, ...]
    user: tuple[Prior, ...] = field(default=())

    def table(self) -> pd.DataFrame:
        """The priors as brms's ``get_prior``/``prior_summary`` data frame."""
        return pd.DataFrame(
            [{"prior": r.prior, "class": r.class_, "coef": r.coef, "group": r.group,
              "resp": "", "dpar": "", "nlpar": "", "lb": r.lb, "ub": "", "source": r.source}
             for r in self.rows]
        )

    def standata(self) -> dict:
        data: dict = {}
        for st in self.statements:
            i = st.index
            if st.truncated:
                data[f"lt_{i}"] = truncation_constant(st.dist, float(st.lb), st.args)
            if st.kernel:
                data[f"lc_{i}"] = kernel_constant(st.dist, st.args, st.dim)
            if st.scalar:
                for a in range(st.n_args):
                    data[f"pa_{i}_{a + 1}"] = float(st.args[0][a])
            else:
                data[f"Np_{i}"] = len(st.positions)
                data[f"Jp_{i}"] = np.asarray(st.positions, dtype=int)
                for a in range(st.n_args):
                    data[f"pa_{i}_{a + 1}"] = np.asarray([row[a] for row in st.args], float)
        return data


def _check_support(p: Prior, what: str) -> None:
    support = DISTRIBUTIONS.get(p.dist, (0, "flat"))[1]
    if p.class_ == "cor" and p.dist not in ("lkj_corr_cholesky",):
        raise PriorError(
            f"Prior {p.text} does not fit a correlation matrix ({what}): use 'lkj(eta)', e.g. lkj(2)."
        )
    if p.class_ != "cor" and p.dist == "lkj_corr_cholesky":
        raise PriorError(f"Prior {p.text} is for correlations only (class 'cor'), not class {p.class_!r}.")
    if support in ("unit", "bounded"):
        raise PriorError(
            f"Prior {p.text} on {what}: bounded priors (uniform, beta) need matching parameter "
            "bounds, which stanhier does not declare; use e.g. normal() or student_t() instead."
        )
    if p.class_ in ("Intercept", "b") and support == "positive":
        raise PriorError(
            f"Prior {p.text} on {what} only has positive support but the parameter is unbounded; "
            "use a prior on the whole real line (normal, student_t, cauchy, ...)."
        )
    if p.dist == "flat" and p.class_ not in ("b", "Intercept"):
        raise PriorError(f"A flat prior is not allowed on class {p.class_!r}; give a proper prior.")
    for a in p.args[1:] if p.dist in ("normal", "cauchy", "double_exponential", "logistic",
                                      "lognormal") else ():
        if a <= 0:
            raise PriorError(f"Prior {p.text}: the scale must be positive.")


def resolve_priors(design: Design, family: Family, user: Sequence[Prior] = ()) -> PriorSet:
    """Combine brms's defaults with ``user`` priors (most specific wins).

    Raises :class:`PriorError` for a class, coef or group the model does not have.
    """
    if isinstance(user, Prior):
        user = [user]
    user = tuple(user or ())
    for p in user:
        if not isinstance(p, Prior):
            raise PriorError(f"prior= takes sh.prior(...) objects, got {type(p).__name__}.")
    location, scale = default_scale_prior(design, family)
    default_t = Prior("student_t", (3.0, location, scale), "Intercept")
    default_sd = Prior("student_t", (3.0, 0.0, scale), "sd")

    slopes = [n for n in design.fixed_names if not (design.has_intercept and n == "Intercept")]
    groups = {gt.term.group_name for gt in design.terms}
    _validate_user(user, design, family, slopes, groups)

    def pick(class_: str, coef: str = "", group: str = "") -> Prior | None:
        best, score = None, -1
        for p in user:
            if p.class_ != class_:
                continue
            if p.coef and p.coef != coef or p.group and p.group != group:
                continue
            s = 2 * bool(p.coef) + bool(p.group)
            if s >= score:
                best, score = p, s
        return best

    rows: list[PriorRow] = []
    statements: list[PriorStatement] = []
    pending: dict[tuple, list] = {}

    def add(param: str, scalar: bool, lb: float | None, p: Prior, pos: int, comment: str) -> None:
        key = (param, p.dist, scalar, lb)
        pending.setdefault(key, [comment, []])[1].append((pos, p.args))

    # b: flat unless given
    b_class = pick("b")
    rows.append(PriorRow((b_class or Prior("flat", (), "b")).text, "b",
                         source="user" if b_class else "default"))
    for j, name in enumerate(slopes, start=1):
        p = pick("b", coef=name)
        rows.append(PriorRow((p or Prior("flat", (), "b")).text, "b", coef=name,
                             source="user" if p and p.coef else "(vectorized)"))
        if p is not None and p.dist != "flat":
            _check_support(p, f"b_{name}")
            add("b", False, None, p, j, "population-level effects b")
    # cor
    cor_terms = [gt for gt in design.terms if gt.correlated]
    if cor_terms:
        p_all = pick("cor") or Prior("lkj_corr_cholesky", (1.0,), "cor")
        rows.append(PriorRow(_lkj_text(p_all), "cor", source="user" if pick("cor") else "default"))
    seen_groups: set[str] = set()
    for k, gt in enumerate(design.terms, start=1):
        if not gt.correlated:
            continue
        p = pick("cor", group=gt.term.group_name) or Prior("lkj_corr_cholesky", (1.0,), "cor")
        _check_support(p, f"cor of {gt.term.group_name}")
        if gt.term.group_name not in seen_groups:
            rows.append(PriorRow(_lkj_text(p), "cor", group=gt.term.group_name,
                                 source="user" if p.group else "(vectorized)"))
            seen_groups.add(gt.term.group_name)
        statements.append(PriorStatement(0, f"L_{k}", "lkj_corr_cholesky", 1, True, None,
                                         f"correlations of group-level term {k}", args=(p.args,),
                                         dim=len(gt.coef_names)))
    # Intercept
    if design.has_intercept:
        p = pick("Intercept") or default_t
        rows.append(PriorRow(p.text, "Intercept", source="user" if pick("Intercept") else "default"))
        if p.dist != "flat":
            _check_support(p, "Intercept")
            statements.append(PriorStatement(0, "Intercept", p.dist, len(p.args), True, None,
                                             "intercept on the centred predictors", args=(p.args,)))
    # sd
    if design.terms:
        p_all = pick("sd") or default_sd
        rows.append(PriorRow(p_all.text, "sd", lb="0", source="user" if pick("sd") else "default"))
        by_group: dict[str, list[tuple[int, object]]] = {}
        for k, gt in enumerate(design.terms, start=1):
            by_group.setdefault(gt.term.group_name, []).append((k, gt))
        for group in sorted(by_group):
            pg = pick("sd", group=group)
            rows.append(PriorRow((pg or p_all).text, "sd", group=group, lb="0",
                                 source="user" if pg and pg.group else "(vectorized)"))
            coef_rows = []
            for k, gt in by_group[group]:
                for m, coef in enumerate(gt.coef_names, start=1):
                    p = pick("sd", coef=coef, group=group) or default_sd
                    _check_support(p, f"sd_{group}__{coef}")
                    add(f"sd_{k}", False, 0.0, p, m, f"group-level SDs of term {k}")
                    coef_rows.append(PriorRow(p.text, "sd", coef=coef, group=group,
                                              lb="0", source="user" if p.coef else "(vectorized)"))
            rows.extend(sorted(coef_rows, key=lambda r: r.coef))
    # family parameters
    for ap in family.aux_params:
        aux = ap.name
        p = pick(aux) or Prior(*ap.default_prior(scale), aux)
        _check_support(p, aux)
        lb = None if ap.lower is None else float(ap.lower)
        rows.append(PriorRow(p.text, aux, lb="" if lb is None else _fmt(lb),
                             source="user" if pick(aux) else "default"))
        statements.append(PriorStatement(0, aux, p.dist, len(p.args), True, lb,
                                         f"family parameter {aux}", args=(p.args,)))

    for (param, dist, scalar, lb), (comment, items) in pending.items():
        items.sort()
        statements.append(PriorStatement(0, param, dist, DISTRIBUTIONS[dist][0], scalar, lb, comment,
                                         positions=tuple(i for i, _ in items),
                                         args=tuple(a for _, a in items)))
    order = {"b": 0, "Intercept": 1}
    statements.sort(key=lambda s: (order.get(s.param, 2), s.param, s.dist))
    statements = [replace(s, index=i) for i, s in enumerate(statements, start=1)]
    rows.sort(key=lambda r: (r.class_.lower(), r.group, r.coef))
    return PriorSet(statements=tuple(statements), rows=tuple(rows), user=user)


def _lkj_text(p: Prior) -> str:
    return f"lkj({_fmt(p.args[0])})"


def _validate_user(user: Iterable[Prior], design: Design, family: Family, slopes: list[str],
                   groups: set[str]) -> None:
    coefs_by_group: dict[str, set[str]] = {}
    for gt in design.terms:
        coefs_by_group.setdefault(gt.term.group_name, set()).update(gt.coef_names)
    for p in user:
        if p.class_ in AUX_CLASSES and p.class_ not in family.aux:
            raise PriorError(
                f"Prior on {p.class_!r}: family {family.name!r} has no such parameter "
                f"(its parameters: {', '.join(family.aux) or 'none'})."
            )
        if p.class_ == "Intercept" and not design.has_intercept:
            raise PriorError("Prior on class 'Intercept', but the model has no intercept ('0 +' or '- 1').")
        if p.class_ == "b" and p.coef and p.coef not in slopes:
            raise PriorError(
                f"Prior on b coef {p.coef!r}: no such population-level coefficient; "
                f"the model has {', '.join(slopes) or 'none'}."
            )
        if p.class_ in ("sd", "cor") and not design.terms:
            raise PriorError(f"Prior on class {p.class_!r}, but the formula has no group-level terms.")
        if p.class_ in ("sd", "cor") and p.group and p.group not in groups:
            raise PriorError(
                f"Prior on {p.class_} for group {p.group!r}: no such grouping factor; "
                f"the model has {', '.join(sorted(groups))}."
            )
        if p.class_ == "sd" and p.coef:
            allowed = coefs_by_group.get(p.group, set()) if p.group else set().union(*coefs_by_group.values())
            if p.coef not in allowed:
                raise PriorError(
                    f"Prior on sd coef {p.coef!r}: not a group-level coefficient"
                    f"{' of ' + repr(p.group) if p.group else ''}; the model has {', '.join(sorted(allowed))}."
                )
        if p.class_ in ("Intercept", "cor") + AUX_CLASSES and p.coef:
            raise PriorError(f"Prior on class {p.class_!r} takes no coef (got {p.coef!r}).")
