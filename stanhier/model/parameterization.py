"""Centred or non-centred group-level effects, per term, chosen from the data (``parameterization="auto"``).

For a group-level term with levels j and coefficients m, write ``r_jm = sd_m * z_jm``.
The *centred* program samples ``r`` directly, the *non-centred* one samples ``z``.
Which geometry NUTS finds easy depends on how strongly the data inform each level's
effects relative to their prior scale (Papaspiliopoulos, Roberts & Sköld 2007;
Betancourt & Girolami 2015; Gorinova, Moore & Hoffman 2020): with ``I_jm`` the Fisher
information of the data of level j about coefficient m and ``tau_m`` its group-level
SD, the ratio

    kappa_jm = tau_m**2 * I_jm      (prior variance / likelihood variance)

is small when the data say little (the prior dominates: non-centred is efficient,
centred has a funnel) and large when they say much (the likelihood dominates:
centred is efficient, non-centred has the funnel instead). In the normal model the
optimal partial centring is ``w = kappa / (1 + kappa)`` (Gorinova et al. 2020, sec. 3;
Papaspiliopoulos et al. 2007, sec. 2), so a term is centred when the typical level has
``w > 1/2``, i.e. ``median_j kappa_j > 1``, taking for every level its least-informed
coefficient. See docs/parameterization.md for how ``I`` and ``tau`` are estimated
before fitting and for what this chooses on the shipped examples.

Example
-------
>>> import numpy as np, pandas as pd
>>> from stanhier.model.formula import parse_formula
>>> from stanhier.model.design import make_design
>>> from stanhier.model.priors import resolve_priors
>>> from stanhier.families import get_family
>>> rng = np.random.default_rng(1)
>>> g = np.repeat(np.arange(4), 200)                # 4 levels, 200 counts each: data dominate
>>> df = pd.DataFrame({"y": rng.poisson(np.exp(1 + 0.5 * (g - 1.5))), "g": g})
>>> design = make_design(parse_formula("y ~ 1 + (1 | g)"), df)
>>> fam = get_family("poisson")
>>> choose_centering(design, fam, resolve_priors(design, fam, []), "auto")
(True,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..families import Family
from .design import Design, GroupTerm
from .priors import PriorSet

__all__ = ["PARAMETERIZATIONS", "TermInformation", "term_information", "choose_centering"]

#: accepted values of ``parameterization``
PARAMETERIZATIONS = ("auto", "noncentered", "centered")

#: median kappa above which a term is centred
THRESHOLD = 1.0


@dataclass(frozen=True)
class TermInformation:
    """What the auto rule saw for one group-level term."""

    group: str
    coefs: tuple[str, ...]
    tau: tuple[float, ...]  #: SD scale used per coefficient (pilot estimate, capped by the prior's scale)
    tau_prior: tuple[float, ...]  #: the prior scale of each sd
    kappa: tuple[float, ...]  #: per coefficient: median over levels of tau^2 * I
    median_kappa: float  #: median over levels of min over coefficients of tau^2 * I
    centered: bool  #: the term is centred (median kappa > 1)

    def reason(self) -> str:
        kind = "centred" if self.centered else "non-centred"
        return (f"({' + '.join(self.coefs)} | {self.group}): {kind}, median kappa = "
                f"{self.median_kappa:.3g} {'>' if self.centered else '<='} {THRESHOLD:g}")


def _prior_scale(dist: str, args: tuple[float, ...]) -> float:
    """A scale of a prior on an SD (for student_t/normal/cauchy... the scale argument)."""
    if dist in ("normal", "cauchy", "double_exponential", "logistic", "lognormal") and len(args) >= 2:
        return float(args[1]) if dist != "lognormal" else float(np.exp(args[0]))
    if dist in ("student_t", "skew_normal") and len(args) >= 3:
        return float(args[2])
    if dist == "exponential":
        return 1.0 / float(args[0])
    if dist == "gamma":
        return float(args[0] / args[1])
    if dist == "inv_gamma" and args[0] > 1:
        return float(args[1] / (args[0] - 1))
    if dist == "uniform":
        return float(args[1] - args[0]) / 2
    return 1.0


def _sd_prior_scales(priors: PriorSet, k: int, M: int) -> np.ndarray:
    scales = np.ones(M)
    for st in priors.statements:
        if st.param != f"sd_{k}":
            continue
        positions = st.positions or tuple(range(1, M + 1))
        rows = st.args if len(st.args) == len(positions) else st.args * len(positions)
        for pos, a in zip(positions, rows):
            scales[pos - 1] = _prior_scale(st.dist, tuple(a))
    return scales


def _working(design: Design, family: Family, gt: GroupTerm) -> tuple[np.ndarray, np.ndarray]:
    """IRLS working weights and working response at per-level pilot means (shrunk to the overall mean)."""
    y = design.y.astype(float)
    n = np.bincount(gt.J, minlength=gt.n_levels).astype(float)
    if family.name in ("binomial", "bernoulli"):
        t = design.trials.astype(float) if design.trials is not None else np.ones_like(y)
        p_all = (y.sum() + 0.5) / (t.sum() + 1.0)
        p_lev = (np.bincount(gt.J, y, gt.n_levels) + p_all) / (np.bincount(gt.J, t, gt.n_levels) + 1.0)
        p = np.clip(p_lev[gt.J], 1e-6, 1 - 1e-6)
        eta = family.linkfun(p)
        dmu = np.maximum(family.link_object.mu_eta(eta), 1e-12)  # logit: p (1 - p)
        w = t * dmu ** 2 / (p * (1 - p))
        z = eta + (y - t * p) / np.maximum(t * dmu, 1e-12)
        return w, z
    mu_all = max(float(y.mean()), 1e-6)
    mu_lev = (np.bincount(gt.J, y, gt.n_levels) + mu_all) / (n + 1.0)
    mu = np.maximum(mu_lev[gt.J], 1e-6)
    if family.link == "log":
        if family.name == "poisson":
            w = mu
        elif family.name == "negbinomial":
            var = float(y.var()) if len(y) > 1 else mu_all
            phi = mu_all ** 2 / max(var - mu_all, 1e-6 * mu_all)
            w = mu * phi / (phi + mu)
        else:  # Gamma: information about log(mu) per observation is the shape
            shape = mu_all ** 2 / max(float(y.var()), 1e-12)
            w = np.full_like(y, shape)
        return w, np.log(mu) + (y - mu) / mu
    yl = np.log(np.maximum(y, 1e-12)) if family.name == "lognormal" else y
    resid = yl - (np.bincount(gt.J, yl, gt.n_levels) / np.maximum(n, 1))[gt.J]
    s2 = max(float(resid.var()), 1e-12 * max(float(yl.var()), 1.0))
    return np.full_like(y, 1.0 / s2), yl


def term_information(design: Design, family: Family, priors: PriorSet, k: int) -> TermInformation:
    """The auto rule's view of term ``k`` (1-based): tau, kappa per level, and the choice."""
    gt = design.terms[k - 1]
    M, G = gt.M, gt.n_levels
    w, z = _working(design, family, gt)
    Z = gt.Z
    # per-level information matrices and one weighted least-squares step per level
    info = np.zeros((G, M, M))
    score = np.zeros((G, M))
    np.add.at(info, gt.J, (w[:, None, None] * Z[:, :, None] * Z[:, None, :]))
    np.add.at(score, gt.J, w[:, None] * Z * z[:, None])
    marg = np.zeros((G, M))  # marginal precision of each coefficient within its level
    est = np.full((G, M), np.nan)
    for j in range(G):
        cov = np.linalg.pinv(info[j])
        d = np.diag(cov)
        marg[j] = np.where(d > 0, 1.0 / np.maximum(d, 1e-300), 0.0)
        if np.linalg.matrix_rank(info[j]) == M:
            est[j] = cov @ score[j]
    tau_prior = _sd_prior_scales(priors, k, M)
    tau = tau_prior.copy()
    ok = np.all(np.isfinite(est), axis=1)
    if ok.sum() >= 3:
        # method of moments: spread of the per-level estimates minus their sampling variance
        noise = np.array([np.mean(1.0 / np.maximum(marg[ok, m], 1e-300)) for m in range(M)])
        spread = np.var(est[ok], axis=0, ddof=1)
        tau = np.minimum(tau_prior, np.sqrt(np.maximum(spread - noise, 0.0)))
    kappa_jm = tau[None, :] ** 2 * marg
    med = float(np.median(kappa_jm.min(axis=1)))
    kappa = np.median(kappa_jm, axis=0)
    return TermInformation(group=gt.term.group_name, coefs=gt.coef_names, tau=tuple(map(float, tau)),
                           tau_prior=tuple(map(float, tau_prior)), kappa=tuple(map(float, kappa)),
                           median_kappa=med, centered=bool(med > THRESHOLD))


def choose_centering(design: Design, family: Family, priors: PriorSet, parameterization: str) -> tuple[bool, ...]:
    """Per group-level term: True (centred) or False (non-centred)."""
    n = len(design.terms)
    if parameterization == "centered":
        return (True,) * n
    if parameterization == "noncentered" or n == 0:
        return (False,) * n
    return tuple(term_information(design, family, priors, k).centered for k in range(1, n + 1))

