"""Maximum likelihood on the marginalized model: ``lmer`` and ``glmer`` (as R's lme4).

The random effects are integrated out of the likelihood and Stan's log density of
the *marginal* model is maximized over the fixed effects ``beta``, the relative
covariance factor's free elements ``theta`` (lme4's parameterization) and
``log(sigma)``:

* Gaussian (``lmer``): exact marginal likelihood (or REML criterion) from per-group
  cross-products computed once in Python (``stan_templates/ml_lmm.stan``); the cost
  of a gradient does not depend on the number of observations.
* Other families (``glmer``): Laplace approximation (``nAGQ=1``) or adaptive
  Gauss-Hermite quadrature (``nAGQ>1``, one scalar random effect) with Newton
  iterations for the random-effect modes inside the Stan program
  (``stan_templates/ml_glmm.stan``).

Two programs serve every model: sizes, the layout of the covariance factor and
the family are data, so a compiled model is reused by every later fit.

Example
-------
>>> import pandas as pd, stanhier as sh                       # doctest: +SKIP
>>> sleep = pd.read_csv("tests/data/sleepstudy.csv")          # doctest: +SKIP
>>> m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)  # doctest: +SKIP
>>> round(m.logLik(), 2)                                      # doctest: +SKIP
-875.97
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import optimize as sopt
from scipy import sparse

from .backends import get_backend
from .backends.base import CompiledModel, LogDensity, fd_hessian
from .design import Design, check_gaussian_groups, data_label, make_design
from .errors import ArgumentError, DataError, FamilyError, FormulaError, SamplingError, StanhierWarning
from .family import Family, get_family
from .formula import parse_formula
from .templating import render

__all__ = ["lmer", "glmer", "RandomLayout", "MLProblem", "MAX_STACKED_Q", "MAX_DENSE_CELLS",
           "stan_program", "build_layout"]

#: Largest number of random effects in the stacked (several grouping factors) layout.
#: The stacked block is a dense q x q matrix: memory q^2 and time q^3 per gradient.
MAX_STACKED_Q = 1000
#: Largest N * q for a GLMM's dense per-observation random-effects design.
MAX_DENSE_CELLS = 20_000_000

_FAMILY_CODE = {"poisson": 1, "binomial": 2, "bernoulli": 3, "negbinomial": 4}
_NEWTON_TOL = 1e-10
_NEWTON_MAX_ITER = 50


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True, eq=False)
class TermSlot:
    """Where one random term lives in the blocks and in ``theta``."""

    index: int  #: position in Design.terms
    group: str  #: lme4 group name
    M: int  #: coefficients
    L: int  #: levels
    correlated: bool
    col: int  #: first column in the block (stacked: of level 0)
    theta_index: tuple[int, ...]  #: 0-based positions in theta, column-major lower triangle
    pairs: tuple[tuple[int, int], ...]  #: (row, col) in the term's Lambda for each theta element


@dataclass(frozen=True, eq=False)
class RandomLayout:
    """The random effects as G independent blocks of q effects (see the Stan programs).

    ``layout == "blocks"``: all terms share one grouping factor, one block per level.
    ``layout == "stacked"``: one block holding every random effect.
    """

    layout: str
    G: int
    q: int
    block: np.ndarray  #: (N,) 0-based block of each observation
    Zb: Any  #: (N, q) each observation's row of Z within its block (ndarray or scipy sparse)
    slots: tuple[TermSlot, ...]
    n_theta: int
    lam_row: np.ndarray  #: 1-based
    lam_col: np.ndarray
    lam_par: np.ndarray

    @property
    def lambda_diagonal(self) -> bool:
        return bool(np.all(self.lam_row == self.lam_col))

    def Lambda(self, theta: np.ndarray) -> np.ndarray:
        """The q x q relative covariance factor of one block."""
        lam = np.zeros((self.q, self.q))
        lam[self.lam_row - 1, self.lam_col - 1] = np.asarray(theta)[self.lam_par - 1]
        return lam

    def term_lambda(self, slot: TermSlot, theta: np.ndarray) -> np.ndarray:
        lam = np.zeros((slot.M, slot.M))
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            lam[i, j] = theta[k]
        return lam

    def term_values(self, slot: TermSlot, per_block: np.ndarray) -> np.ndarray:
        """(L, M) values of a term's coefficients from (G, q) per-block vectors."""
        if self.layout == "blocks":
            return per_block[:, slot.col:slot.col + slot.M]
        return per_block[0, slot.col:slot.col + slot.L * slot.M].reshape(slot.L, slot.M)

    def term_cov(self, slot: TermSlot, per_block: np.ndarray) -> np.ndarray:
        """(L, M, M) covariance blocks of a term from (G, q, q) per-block matrices."""
        if self.layout == "blocks":
            return per_block[:, slot.col:slot.col + slot.M, slot.col:slot.col + slot.M]
        out = np.empty((slot.L, slot.M, slot.M))
        for lev in range(slot.L):
            c = slot.col + lev * slot.M
            out[lev] = per_block[0, c:c + slot.M, c:c + slot.M]
        return out


def build_layout(design: Design, *, max_stacked_q: int = MAX_STACKED_Q) -> RandomLayout:
    """Arrange the design's random terms into blocks (see :class:`RandomLayout`).

    >>> import pandas as pd
    >>> from stanhier.formula import parse_formula
    >>> df = pd.DataFrame({"y": [1., 2, 3, 4, 5, 6], "x": [0., 1, 0, 1, 0, 1], "g": list("aabbcc")})
    >>> lay = build_layout(make_design(parse_formula("y ~ x + (x | g)"), df))
    >>> lay.layout, lay.G, lay.q, lay.n_theta
    ('blocks', 3, 2, 3)
    """
    terms = design.terms
    if not terms:
        raise FormulaError(
            f"The formula {design.formula.text!r} has no random-effects term such as '(1 | group)': "
            "lmer/glmer need at least one; fit a model without random effects with statsmodels."
        )
    for gt in terms:
        if gt.n_levels < 2:
            raise DataError(
                f"Grouping factor {gt.term.group_name!r} of term {gt.term.text!r} has only one level: "
                "a variance cannot be estimated from one group; drop the term."
            )
    same_group = all(gt.term.group == terms[0].term.group for gt in terms)
    layout = "blocks" if same_group else "stacked"
    slots, lam_rows, lam_cols, lam_pars = [], [], [], []
    n_theta, col = 0, 0
    for k, gt in enumerate(terms):
        M, L = gt.M, gt.n_levels
        pairs = [(i, j) for j in range(M) for i in range(j, M) if gt.correlated or i == j]
        idx = tuple(range(n_theta, n_theta + len(pairs)))
        slot = TermSlot(index=k, group=gt.term.group_name, M=M, L=L, correlated=gt.correlated,
                        col=col, theta_index=idx, pairs=tuple(pairs))
        slots.append(slot)
        reps = [col] if layout == "blocks" else [col + lev * M for lev in range(L)]
        for c0 in reps:
            for (i, j), p in zip(pairs, idx):
                lam_rows.append(c0 + i + 1)
                lam_cols.append(c0 + j + 1)
                lam_pars.append(p + 1)
        n_theta += len(pairs)
        col += M if layout == "blocks" else M * L
    q = col
    N = design.N
    if layout == "blocks":
        G = terms[0].n_levels
        block = terms[0].J.copy()
        Zb = np.hstack([gt.Z for gt in terms])
    else:
        sizes = ", ".join(f"{gt.term.group_name}: {gt.n_levels * gt.M}" for gt in terms)
        if q > max_stacked_q:
            raise DataError(
                f"The model has {q} random effects in crossed/nested grouping factors ({sizes}); "
                f"stanhier's ML fits handle several grouping factors with a dense {q} x {q} matrix "
                f"and support at most {max_stacked_q} random effects in that layout. Fit a model with "
                "fewer levels, one grouping factor (any number of levels), the Bayesian brm(), or "
                "lme4 (sparse Cholesky) for this one."
            )
        G = 1
        block = np.zeros(N, dtype=int)
        rows, cols, vals = [], [], []
        for gt, slot in zip(terms, slots):
            for m in range(gt.M):
                rows.append(np.arange(N))
                cols.append(slot.col + gt.J * gt.M + m)
                vals.append(gt.Z[:, m])
        Zb = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(N, q))
    return RandomLayout(layout=layout, G=G, q=q, block=block, Zb=Zb, slots=tuple(slots),
                        n_theta=n_theta, lam_row=np.array(lam_rows), lam_col=np.array(lam_cols),
                        lam_par=np.array(lam_pars))


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True, eq=False)
class MLProblem:
    """Everything one optimization needs: the program, its data and the parameter layout."""

    kind: str  #: "lmm" or "glmm"
    template: str
    data: dict
    K: int
    n_theta: int
    n_aux: int  #: log_sigma (lmm) or log_shape (negbinomial): 1, else 0
    order: np.ndarray | None  #: GLMM: permutation sorting observations by block

    @property
    def n_params(self) -> int:
        return self.K + self.n_theta + self.n_aux


def stan_program(kind: str) -> str:
    """The Stan code of the ML program (``"lmm"`` or ``"glmm"``); it depends on nothing else.

    >>> "marginal_gaussian_lpdf" in stan_program("lmm")
    True
    """
    return render({"lmm": "ml_lmm.stan", "glmm": "ml_glmm.stan"}[kind])


def _lam_data(lay: RandomLayout) -> dict:
    return dict(n_theta=lay.n_theta, n_lam=len(lay.lam_row), lam_row=lay.lam_row.astype(int),
                lam_col=lay.lam_col.astype(int), lam_par=lay.lam_par.astype(int))


def lmm_crossproducts(design: Design, lay: RandomLayout) -> dict[str, np.ndarray]:
    """Per-block cross-products Z'Z, Z'X, Z'y (shape (G, ...)) and the totals X'X, X'y, y'y."""
    X, y = design.X, design.y
    out = {"XtX": X.T @ X, "Xty": X.T @ y, "yty": float(y @ y)}
    if lay.layout == "blocks":
        order = np.argsort(lay.block, kind="stable")
        starts = np.searchsorted(lay.block[order], np.arange(lay.G))
        Z, Xs, ys = lay.Zb[order], X[order], y[order]
        out["ZtZ"] = np.add.reduceat(Z[:, :, None] * Z[:, None, :], starts, axis=0)
        out["ZtX"] = np.add.reduceat(Z[:, :, None] * Xs[:, None, :], starts, axis=0)
        out["Zty"] = np.add.reduceat(Z * ys[:, None], starts, axis=0)
    else:
        Z = lay.Zb
        out["ZtZ"] = np.asarray((Z.T @ Z).todense())[None]
        out["ZtX"] = np.asarray(Z.T @ X)[None]
        out["Zty"] = np.asarray(Z.T @ y)[None]
    out["ZtZ"] = (out["ZtZ"] + np.swapaxes(out["ZtZ"], 1, 2)) / 2
    out["XtX"] = (out["XtX"] + out["XtX"].T) / 2
    return out


def lmm_problem(design: Design, lay: RandomLayout, REML: bool) -> MLProblem:
    cp = lmm_crossproducts(design, lay)
    data = dict(N=design.N, K=design.X.shape[1], REML=int(REML), XtX=cp["XtX"], Xty=cp["Xty"],
                yty=cp["yty"], G=lay.G, q=lay.q, ZtZ=cp["ZtZ"], ZtX=cp["ZtX"], Zty=cp["Zty"],
                lambda_diagonal=int(lay.lambda_diagonal), **_lam_data(lay))
    return MLProblem(kind="lmm", template="ml_lmm.stan", data=data, K=design.X.shape[1],
                     n_theta=lay.n_theta, n_aux=1, order=None)


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and log weights for integrals of f(x) exp(-x^2)."""
    if n == 1:
        return np.zeros(1), np.array([0.5 * np.log(np.pi)])
    x, w = np.polynomial.hermite.hermgauss(n)
    return x, np.log(w)


def glmm_problem(design: Design, lay: RandomLayout, family: Family, nAGQ: int) -> MLProblem:
    N = design.N
    if lay.layout == "stacked" and N * lay.q > MAX_DENSE_CELLS:
        raise DataError(
            f"The GLMM's random-effects design would be a dense {N} x {lay.q} matrix "
            f"({N * lay.q:,} cells, limit {MAX_DENSE_CELLS:,}) because its grouping factors are "
            "crossed or nested; use fewer levels or a single grouping factor."
        )
    order = np.argsort(lay.block, kind="stable")
    blocks = lay.block[order]
    starts = np.searchsorted(blocks, np.arange(lay.G))
    sizes = np.diff(np.append(starts, N))
    Zb = lay.Zb.toarray() if sparse.issparse(lay.Zb) else lay.Zb
    trials = design.trials if design.trials is not None else np.ones(N)
    x, logw = gauss_hermite(nAGQ)
    data = dict(N=N, K=design.X.shape[1], family=_FAMILY_CODE[family.name],
                y=np.round(design.y[order]).astype(int), trials=np.round(trials[order]).astype(int),
                X=design.X[order], G=lay.G, q=lay.q, Zb=Zb[order],
                block_start=(starts + 1).astype(int), block_size=sizes.astype(int),
                n_agq=int(nAGQ), gh_x=x, gh_logw=logw, newton_tol=_NEWTON_TOL,
                newton_max_iter=_NEWTON_MAX_ITER, **_lam_data(lay))
    return MLProblem(kind="glmm", template="ml_glmm.stan", data=data, K=design.X.shape[1],
                     n_theta=lay.n_theta, n_aux=int(family.name == "negbinomial"), order=order)


# --------------------------------------------------------------------------- starts
def _irls(X: np.ndarray, y: np.ndarray, family: Family, trials: np.ndarray | None) -> np.ndarray:
    """Fixed-effects GLM by IRLS (starting values for glmer)."""
    n = trials if (family.name == "binomial" and trials is not None) else np.ones_like(y)
    if family.link == "log":
        mu = y + 0.5
        eta = np.log(mu)
    else:
        p = (y + 0.5) / (n + 1)
        eta = np.log(p / (1 - p))
    beta = np.zeros(X.shape[1])
    for _ in range(50):
        if family.link == "log":
            mu = np.exp(eta)
            w, z = mu, eta + (y - mu) / mu
        else:
            p = 1 / (1 + np.exp(-eta))
            w = np.maximum(n * p * (1 - p), 1e-10)
            z = eta + (y - n * p) / w
        XtW = X.T * w
        try:
            new = np.linalg.solve(XtW @ X + 1e-10 * np.eye(X.shape[1]), XtW @ z)
        except np.linalg.LinAlgError:
            break
        eta = np.clip(X @ new, -30, 30)
        if np.max(np.abs(new - beta)) < 1e-10:
            beta = new
            break
        beta = new
    return beta


def _starts(problem: MLProblem, design: Design, lay: RandomLayout, family: Family) -> list[np.ndarray]:
    X, y = design.X, design.y
    diag = np.zeros(lay.n_theta)
    for slot in lay.slots:
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            diag[k] = 1.0 if i == j else 0.0
    if problem.kind == "lmm":
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ beta
        log_sigma = np.log(max(np.std(resid), 1e-8 * max(np.std(y), 1.0), 1e-300))
        return [np.concatenate([beta, diag * s, [log_sigma]]) for s in (1.0, 0.3, 3.0)]
    beta = _irls(X, y, family, design.trials)
    aux: list[float] = []
    if family.name == "negbinomial":
        mu = np.exp(X @ beta)
        excess = np.mean((y - mu) ** 2 - mu)
        aux = [float(np.log(np.clip(np.mean(mu ** 2) / excess, 1e-2, 1e4))) if excess > 0 else np.log(100.0)]
    return [np.concatenate([beta, diag * s, aux]) for s in (1.0, 0.3, 2.0)]


# --------------------------------------------------------------------------- optimizer
@dataclass(frozen=True, eq=False)
class OptimumInfo:
    """The optimizer's report."""

    theta: np.ndarray  #: unconstrained parameter vector at the optimum
    lp: float
    grad: np.ndarray
    hessian: np.ndarray | None
    converged: bool
    message: str
    n_evals: int
    n_starts: int
    seconds: float


def maximize(density: LogDensity, starts: list[np.ndarray], scale: np.ndarray, *,
             tol: float = 1e-8,
             native: Callable[[np.ndarray], np.ndarray] | None = None) -> OptimumInfo:
    """Maximize ``density`` from several starts: scipy L-BFGS on scaled coordinates, then
    Newton steps on a finite-difference Hessian of the Stan gradient.

    Convergence is judged by the Newton decrement ``g' (-H)^-1 g / 2 < tol`` (scale free),
    falling back to a max-abs scaled gradient below 1e-3 where -H is not positive definite
    (singular fits). A failed start is retried from the next one. ``native``: the
    backend's own optimizer (CmdStan's ``optimize(jacobian=False)``) replaces scipy's
    L-BFGS for the first stage.
    """
    t0 = time.perf_counter()
    count = {"n": 0}

    def value_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        count["n"] += 1
        try:
            lp, g = density.log_prob_grad(x)
        except (RuntimeError, ValueError):
            return -np.inf, np.full(len(x), np.nan)
        return float(lp), np.asarray(g, float)

    def neg(z: np.ndarray, center: np.ndarray) -> tuple[float, np.ndarray]:
        lp, g = value_grad(center + scale * z)
        if not np.isfinite(lp) or not np.all(np.isfinite(g)):
            return 1e300, np.zeros_like(z)
        return -lp, -g * scale

    best: tuple[float, np.ndarray] | None = None
    n_starts = 0
    for x0 in starts:
        n_starts += 1
        lp0, _ = value_grad(x0)
        if not np.isfinite(lp0):
            continue
        if native is not None:
            try:
                x = native(x0)
            except SamplingError:
                continue
        else:
            res = sopt.minimize(neg, np.zeros_like(x0), args=(x0,), jac=True, method="L-BFGS-B",
                                options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 30})
            x = x0 + scale * res.x
        x, lp, H, ok = _newton_polish(value_grad, x, tol)
        if best is None or lp > best[0] + 1e-9:
            best = (lp, x, H, ok)
        if ok:
            break
    if best is None:
        raise SamplingError(
            "The log-likelihood could not be evaluated at any starting value (every start gave "
            "-inf or an error); check the response for extreme values."
        )
    lp, x, H, ok = best
    _, g = value_grad(x)
    msg = "converged" if ok else "the optimizer did not reach a point with zero gradient"
    return OptimumInfo(theta=x, lp=lp, grad=g, hessian=H, converged=ok, message=msg,
                       n_evals=count["n"], n_starts=n_starts, seconds=time.perf_counter() - t0)


def _newton_polish(value_grad, x: np.ndarray, tol: float, max_iter: int = 20):
    lp, g = value_grad(x)
    H = None
    for _ in range(max_iter):
        H = fd_hessian(value_grad, x, 1e-4)
        negH = -H
        try:
            C = np.linalg.cholesky(negH)
        except np.linalg.LinAlgError:
            # singular fit or saddle: regularized step, convergence on the gradient
            lam = abs(np.min(np.linalg.eigvalsh(negH))) + 1e-6 * (1 + np.max(np.abs(np.diag(negH))))
            step = np.linalg.solve(negH + lam * np.eye(len(x)), g)
            decrement = None
        else:
            step = np.linalg.solve(C.T, np.linalg.solve(C, g))
            decrement = 0.5 * float(g @ step)
            if decrement < tol:
                return x, lp, H, True
        t, improved = 1.0, False
        while t > 1e-8:
            x_new = x + t * step
            lp_new, g_new = value_grad(x_new)
            if np.isfinite(lp_new) and lp_new >= lp - 1e-12 * abs(lp):
                improved = True
                break
            t /= 2
        if not improved:
            break
        if lp_new - lp < 1e-12 * max(1.0, abs(lp)) and decrement is None:
            x, lp, g = x_new, lp_new, g_new
            break
        x, lp, g = x_new, lp_new, g_new
    if H is None:
        H = fd_hessian(value_grad, x, 1e-4)
    try:
        np.linalg.cholesky(-H)
        step = np.linalg.solve(-H, g)
        ok = 0.5 * float(g @ step) < max(tol, 1e-6)
    except np.linalg.LinAlgError:
        ok = float(np.max(np.abs(g) * np.maximum(1.0, np.abs(x)))) < 1e-3
    return x, lp, H, ok


# --------------------------------------------------------------------------- entry points
def _check_backend(backend: str) -> None:
    if not isinstance(backend, str):
        raise ArgumentError(f"backend must be 'auto', 'pystan' or 'cmdstanpy', not {backend!r}.")


def _compile(kind: str, backend: str, progress: bool) -> CompiledModel:
    _check_backend(backend)
    return get_backend(backend).compile(stan_program(kind), progress=progress)


def _scale(problem: MLProblem, design: Design) -> np.ndarray:
    """Rough parameter scales for the optimizer (OLS-like SEs for beta, 1 elsewhere)."""
    X = design.X
    sd = np.std(design.y) if problem.kind == "lmm" else 1.0
    try:
        se = 10 * np.sqrt(np.diag(np.linalg.pinv(X.T @ X))) * max(sd, 1e-8)
    except np.linalg.LinAlgError:  # pragma: no cover
        se = np.ones(X.shape[1])
    se = np.where(np.isfinite(se) & (se > 0), se, 1.0)
    return np.concatenate([np.minimum(se, 1e6), np.ones(problem.n_theta + problem.n_aux)])


def _fit(kind: str, formula: str, data: Any, *, family: Family, REML: bool, nAGQ: int,
         backend: str, progress: bool, start: dict | None, control: dict | None,
         na_action: str = "drop", collinear: str = "drop"):
    from .mlfit import MerFit

    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string such as 'y ~ x + (1 | g)', not {type(formula).__name__}.")
    parsed = parse_formula(formula)
    design = make_design(parsed, data, na_action=na_action, collinear=collinear)
    if family.has_sigma:
        check_gaussian_groups(design)
    resp = parsed.response
    family.check_response(design.y, resp.column, design.trials,
                          resp.column2 if resp.kind == "trials" else None)
    if kind == "glmm" and family.name == "binomial" and resp.kind == "plain":
        raise FamilyError("Family 'binomial' needs 'cbind(successes, failures) ~ ...' or "
                          "'y | trials(n) ~ ...'; for a 0/1 response use family='bernoulli'.")
    lay = build_layout(design)
    if kind == "glmm" and nAGQ > 1 and (len(lay.slots) != 1 or lay.q != 1):
        raise ArgumentError(
            f"nAGQ = {nAGQ} > 1 needs a single scalar random-effects term such as '(1 | g)', as in lme4 "
            f"(this model has {len(lay.slots)} term(s) with {sum(s.M for s in lay.slots)} coefficient(s)); "
            "use nAGQ=1 (Laplace approximation)."
        )
    problem = lmm_problem(design, lay, REML) if kind == "lmm" else glmm_problem(design, lay, family, nAGQ)
    model = _compile(kind, backend, progress)
    density = model.log_density(problem.data)
    if density.n_params != problem.n_params:  # pragma: no cover - a programming error
        raise SamplingError(f"Internal error: Stan has {density.n_params} parameters, expected {problem.n_params}.")
    starts = _starts(problem, design, lay, family)
    if start is not None:
        starts.insert(0, _user_start(start, problem, starts[0]))
    native = None
    if model.backend == "cmdstanpy":  # CmdStan's L-BFGS, Jacobian off, from our start
        def native(x0: np.ndarray) -> np.ndarray:
            return density.flatten(model.optimize(problem.data, density.to_dict(x0)).params)
    info = maximize(density, starts, _scale(problem, design),
                    tol=float((control or {}).get("tol", 1e-8)), native=native)
    fit = MerFit(kind=kind, formula=formula, design=design, layout=lay, family=family, REML=REML,
                 nAGQ=nAGQ, problem=problem, model=model, density=density, optimum=info,
                 data_name=data_label(data))
    if not info.converged:
        warnings.warn(
            f"Model failed to converge: {info.message} (max |gradient| {np.max(np.abs(info.grad)):.2g} "
            f"after {info.n_starts} start(s)); rescale predictors or simplify the random effects.",
            StanhierWarning, stacklevel=3)
    if fit.is_singular():
        warnings.warn("boundary (singular) fit: see help('isSingular')", StanhierWarning, stacklevel=3)
    return fit


def _user_start(start: dict, problem: MLProblem, default: np.ndarray) -> np.ndarray:
    x = default.copy()
    for key, value in start.items():
        value = np.atleast_1d(np.asarray(value, float))
        if key == "theta" and len(value) == problem.n_theta:
            x[problem.K:problem.K + problem.n_theta] = value
        elif key in ("beta", "fixef") and len(value) == problem.K:
            x[:problem.K] = value
        else:
            raise ArgumentError(f"start[{key!r}] must be 'theta' (length {problem.n_theta}) or "
                                f"'beta' (length {problem.K}).")
    return x


def lmer(formula: str, data: Any, REML: bool = True, *, backend: str = "auto",
         progress: bool = False, start: dict | None = None, control: dict | None = None,
         na_action: str = "drop", collinear: str = "drop"):
    """Fit a linear mixed model by maximum likelihood or REML, as lme4's ``lmer``.

    The Gaussian marginal likelihood is exact and computed from per-group
    cross-products, so a gradient costs the same for 1,000 or 1,000,000 rows.

    Parameters
    ----------
    formula : lme4 formula, e.g. ``"Reaction ~ Days + (Days | Subject)"``.
    data : pandas DataFrame (or dict of columns).
    REML : ``True`` (lme4's default) for the REML criterion, ``False`` for maximum likelihood.
    backend : ``"auto"``, ``"pystan"`` or ``"cmdstanpy"``.
    start : optional ``{"theta": [...]}`` starting values (lme4's relative covariance factor).
    na_action : ``"drop"`` rows with missing values (with a warning) or ``"raise"``.
    collinear : ``"drop"`` (lme4's behaviour, with a warning) or ``"error"`` for constant or
        linearly dependent fixed-effect columns.

    Returns
    -------
    MerFit

    Example
    -------
    >>> m = lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)  # doctest: +SKIP
    >>> print(m)                                                        # doctest: +SKIP
    """
    if not isinstance(REML, (bool, np.bool_)):
        raise ArgumentError(f"REML must be True or False, not {REML!r}.")
    return _fit("lmm", formula, data, family=get_family("gaussian"), REML=bool(REML), nAGQ=0,
                backend=backend, progress=progress, start=start, control=control,
                na_action=na_action, collinear=collinear)


def glmer(formula: str, data: Any, family: str | Family = "binomial", nAGQ: int = 1, *,
          backend: str = "auto", progress: bool = False, start: dict | None = None,
          control: dict | None = None, na_action: str = "drop", collinear: str = "drop"):
    """Fit a generalized linear mixed model by (approximate) maximum likelihood, as lme4's ``glmer``.

    ``nAGQ=1``: Laplace approximation; ``nAGQ>1``: adaptive Gauss-Hermite quadrature
    with that many nodes (one scalar random-effects term only, as lme4).
    Families: ``poisson``, ``binomial`` (``cbind(s, f)`` or ``y | trials(n)``),
    ``bernoulli`` (0/1), ``negbinomial`` (shape estimated, as ``glmer.nb``).

    Example
    -------
    >>> g = glmer("fish_num ~ 1 + temperature + (1 | weather)", fish, family="poisson")  # doctest: +SKIP
    >>> g20 = glmer("fish_num ~ 1 + temperature + (1 | weather)", fish, "poisson", nAGQ=20)  # doctest: +SKIP
    """
    fam = get_family(family)
    if fam.name == "gaussian":
        raise FamilyError("family='gaussian' is a linear mixed model: use lmer() (exact likelihood).")
    if fam.name not in _FAMILY_CODE:
        raise FamilyError(f"glmer supports the families {', '.join(_FAMILY_CODE)}; not {fam.name!r}.")
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, (int, np.integer)) or not (1 <= nAGQ <= 100):
        raise ArgumentError(f"nAGQ must be an integer between 1 and 100 (1 = Laplace), got {nAGQ!r}.")
    return _fit("glmm", formula, data, family=fam, REML=False, nAGQ=int(nAGQ), backend=backend,
                progress=progress, start=start, control=control, na_action=na_action,
                collinear=collinear)
