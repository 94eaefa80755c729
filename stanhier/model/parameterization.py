"""How each group-level term's effects are sampled, chosen from the data (``parameterization="auto"``).

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
centred is efficient, non-centred has the funnel instead).

A third treatment, *conditional*, removes the choice: the program samples standardized
variables ``z`` and ``eps`` and sets, exactly, for every level j

    r_j = V_j (s_j - I_j b) + L_j^-T z_j,      V_j = (Sigma^-1 + I_j)^-1 = L_j^-T L_j^-1,

where ``(s_j, I_j)`` is a Gaussian approximation of level j's likelihood (a pilot
penalized IRLS fit, computed once as data) and ``Sigma`` the term's covariance; the
population-level effects ``b`` that the term's coefficients share are set likewise from
their approximate conditional posterior given ``Sigma``:
``b = P^-1 sum_j W_j (s_j - ...) + L_P^-T eps`` with ``W_j = I_j - I_j V_j I_j`` and ``P = L_P L_P'``. This
is a change of variables (its log Jacobian is added to the target), so the posterior is
brms's; only the coordinates NUTS moves in differ. Where the data say little, ``V_j ~
Sigma`` and ``r_j ~ chol(Sigma) z_j`` (non-centred); where they say much, ``r_j`` follows
the data with its own small scale (as centred) and ``b`` moves with ``Sigma`` instead of
forming a funnel with it — which neither centred nor non-centred programs avoid for a
grouping factor with very few levels (the seed's fish model: 2 levels). It is
the conditionally Gaussian reparameterization of Papaspiliopoulos et al. (2007, sec. 4,
"partially non-centred" with level-specific weights) extended to the population mean.
``"auto"`` uses it for every term whenever the family has a log or logit link (where
stanhier has the IRLS working weights) and the intercept, if any, belongs to a
group-level term; otherwise it centres a term when the typical level has ``w > 1/2`` in
the optimal partial centring ``w = kappa / (1 + kappa)`` (Gorinova et al. 2020, sec. 3;
Papaspiliopoulos et al. 2007, sec. 2), i.e. ``median_j kappa_j > 1``, taking for every
level its least-informed coefficient. See docs/parameterization.md.

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
>>> choose_treatments(design, fam, resolve_priors(design, fam, []), "auto")
('conditional',)
>>> choose_treatments(design, get_family("gaussian"), resolve_priors(design, fam, []), "auto")
('centered',)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import linalg as spla

from ..errors import ArgumentError
from ..families import Family
from .design import Design, GroupTerm
from .priors import PriorSet

__all__ = ["PARAMETERIZATIONS", "TREATMENTS", "TermInformation", "term_information", "choose_treatments",
           "conditional_unavailable", "ConditionalPilot", "conditional_pilot"]

#: accepted values of ``parameterization``
PARAMETERIZATIONS = ("auto", "noncentered", "centered", "conditional")
#: how a term's effects can be sampled (the program's per-term choice)
TREATMENTS = ("noncentered", "centered", "conditional")
#: links whose IRLS working weights the pilot fit of the conditional treatment uses
CONDITIONAL_LINKS = ("log", "logit")

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


def conditional_unavailable(design: Design, family: Family) -> str | None:
    """Why the conditional treatment cannot be used for this model (None when it can)."""
    if family.link not in CONDITIONAL_LINKS or family.name in ("gaussian", "student", "lognormal"):
        return f"it needs a log or logit link (family {family.name!r} has link {family.link!r})"
    if design.has_intercept and not any("Intercept" in gt.coef_formulaic for gt in design.terms):
        return "the intercept belongs to no group-level term (write '(1 + ... | g)' or drop the intercept)"
    return None


def choose_treatments(design: Design, family: Family, priors: PriorSet, parameterization: str) -> tuple[str, ...]:
    """Per group-level term: ``"conditional"``, ``"centered"`` or ``"noncentered"``."""
    n = len(design.terms)
    if parameterization in ("centered", "noncentered") or n == 0:
        return (parameterization if n else "noncentered",) * n
    why = conditional_unavailable(design, family)
    if parameterization == "conditional":
        if why:
            raise ArgumentError(f"parameterization='conditional' is not available for this model: {why}. "
                                "Use 'auto', 'centered' or 'noncentered'.")
        return ("conditional",) * n
    if why is None:
        return ("conditional",) * n
    return tuple("centered" if term_information(design, family, priors, k).centered else "noncentered"
                 for k in range(1, n + 1))


# --------------------------------------------------------------------------- conditional treatment
@dataclass(frozen=True, eq=False)
class ConditionalPilot:
    """Data of the conditional treatment: per term, the Gaussian approximation of each level's
    likelihood and which population-level effects the term anchors (1-based, as Stan reads them)."""

    s: tuple[np.ndarray, ...]  #: per term (N_k, M_k): information-weighted working response I_j * beta_j
    info: tuple[np.ndarray, ...]  #: per term (N_k, M_k, M_k): Fisher information about beta_j
    fixed_column: tuple[np.ndarray, ...]  #: per term (M_k,): population-level column of each coefficient, 0: none
    anchored: tuple[np.ndarray, ...]  #: per term: positions (1..M_k) of the coefficients whose b it sets
    free: np.ndarray  #: population-level columns (1..K) sampled directly


def _fixed_columns(design: Design, gt: GroupTerm) -> np.ndarray:
    out = np.zeros(gt.M, dtype=int)
    for m, name in enumerate(gt.coef_formulaic):
        if name in design.fixed_formulaic:
            i = design.fixed_formulaic.index(name)
            if np.array_equal(design.X[:, i], gt.Z[:, m]):
                out[m] = i + 1
    return out


def _pilot_fit(design: Design, family: Family, ridge: float = 1.0, iterations: int = 30) -> tuple[np.ndarray, ...]:
    """Penalized IRLS of the whole linear predictor (random effects ~ N(0, ridge^2) on the link
    scale): coefficients (b, then each term's level-major effects), weights and working residuals."""
    N, K = design.X.shape
    blocks, q = [sparse.csr_matrix(design.X)], 0
    for gt in design.terms:
        rows = np.repeat(np.arange(N), gt.M)
        cols = (gt.J[:, None] * gt.M + np.arange(gt.M)[None, :]).ravel()
        blocks.append(sparse.csr_matrix((gt.Z.ravel(), (rows, cols)), shape=(N, gt.n_levels * gt.M)))
        q += gt.n_levels * gt.M
    A = sparse.hstack(blocks, format="csr")
    penalty = sparse.diags(np.r_[np.full(K, 1e-6), np.full(q, 1.0 / ridge ** 2)])
    y = design.y.astype(float)
    trials = design.trials.astype(float) if design.trials is not None else np.ones_like(y)
    eta = family.irls_start(y, trials)
    theta = np.zeros(K + q)
    for _ in range(iterations):
        w, zwork = family.irls_working(y, eta, trials)
        H = (A.T @ A.multiply(w[:, None])).tocsc() + penalty
        new = spla.spsolve(H, A.T @ (w * zwork))
        done = np.max(np.abs(new - theta)) < 1e-8
        theta, eta = new, A @ new
        if done:
            break
    w, zwork = family.irls_working(y, eta, trials)
    return theta, w, w * (zwork - eta)


def conditional_pilot(design: Design, family: Family) -> ConditionalPilot:
    """The data the conditional treatment needs (see the module's docstring)."""
    theta, w, wres = _pilot_fit(design, family)
    K = design.X.shape[1]
    s_all, info_all, fixed, anchored = [], [], [], []
    taken: set[int] = set()
    col = K
    for gt in design.terms:
        M, G = gt.M, gt.n_levels
        r = theta[col:col + G * M].reshape(G, M)
        col += G * M
        fc = _fixed_columns(design, gt)
        b_m = np.where(fc > 0, theta[np.maximum(fc - 1, 0)], 0.0)
        info = np.zeros((G, M, M))
        np.add.at(info, gt.J, w[:, None, None] * gt.Z[:, :, None] * gt.Z[:, None, :])
        info = (info + info.transpose(0, 2, 1)) / 2
        score = np.zeros((G, M))
        np.add.at(score, gt.J, gt.Z * wres[:, None])
        s_all.append(np.einsum("jab,jb->ja", info, b_m[None, :] + r) + score)
        info_all.append(info)
        fixed.append(fc)
        mine = [m + 1 for m in range(M) if fc[m] > 0 and fc[m] not in taken]
        taken.update(int(fc[m - 1]) for m in mine)
        anchored.append(np.array(mine, dtype=int))
    free = np.array([c for c in range(1, K + 1) if c not in taken], dtype=int)
    return ConditionalPilot(s=tuple(s_all), info=tuple(info_all), fixed_column=tuple(fixed),
                            anchored=tuple(anchored), free=free)
