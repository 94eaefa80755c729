"""The optimization problem of an ML fit: the Stan program, its data and the starting values.

:class:`MLProblem` holds typed inputs (:class:`CrossProducts` for ``lmer``,
:class:`GLMMBlocks` for ``glmer``, the :class:`~stanhier.ml.layout.RandomLayout`);
:meth:`MLProblem.standata` is the one place that turns them into the Stan data dict.

Example
-------
>>> import pandas as pd
>>> from stanhier.model.formula import parse_formula
>>> from stanhier.model.design import make_design
>>> from stanhier.ml.layout import build_layout
>>> df = pd.DataFrame({"y": [1., 2, 4, 3, 5, 7], "x": [0., 1, 0, 1, 0, 1], "g": list("aabbcc")})
>>> design = make_design(parse_formula("y ~ x + (1 | g)"), df)
>>> problem = lmm_problem(design, build_layout(design), REML=True)
>>> problem.crossproducts.ZtZ.shape, problem.n_params, problem.standata()["G"]
((3, 1, 1), 4, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from scipy import sparse

from ..errors import DataError
from ..families import LINKS, Family, glmm_families
from ..model.crossprod import (crossprod, exact_value, finish_parts, gaussian_crossprod_parts, grouped_crossprod,
                               symmetrize)
from ..model.distributed import design_moments
from ..model.design import Design
from ..stan.templating import render
from .layout import RandomLayout, build_layout

__all__ = ["MLProblem", "CrossProducts", "GLMMBlocks", "stan_program", "lmm_problem", "glmm_problem",
           "lmm_crossproducts", "partition_crossproducts", "lmm_bounds", "moments_least_squares", "gauss_hermite", "start_values", "MAX_DENSE_CELLS", "glmm_template_context",
           "glm_irls"]

#: Largest N * q for a GLMM's dense per-observation random-effects design.
MAX_DENSE_CELLS = 20_000_000

#: largest stacked block (crossed/nested factors) whose cross-products are summed exactly
MAX_EXACT_STACKED_Q = 20

_NEWTON_TOL = 1e-10
_NEWTON_MAX_ITER = 50


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True, eq=False)
class CrossProducts:
    """``lmer``'s data: per-block cross-products (leading axis G) and whole-data totals."""

    XtX: np.ndarray  #: (K, K)
    Xty: np.ndarray  #: (K,)
    yty: float
    ZtZ: np.ndarray  #: (G, q, q)
    ZtX: np.ndarray  #: (G, q, K)
    Zty: np.ndarray  #: (G, q)


@dataclass(frozen=True, eq=False)
class GLMMBlocks:
    """``glmer``'s data: the observations sorted by block (``order``), each block contiguous."""

    y: np.ndarray  #: (N,) int response of the discrete families (0 for continuous ones), sorted
    y_real: np.ndarray  #: (N,) the response as floats (every family), sorted
    trials: np.ndarray  #: (N,) int binomial trials (ones otherwise), sorted
    X: np.ndarray  #: (N, K) sorted
    Zb: np.ndarray  #: (N, q) dense, sorted: each observation's row of Z within its block
    block_start: np.ndarray  #: (G,) 1-based first observation of each block
    block_size: np.ndarray  #: (G,)
    order: np.ndarray  #: permutation sorting the design's observations by block
    family_code: int  #: the program's family switch
    link_code: int  #: the program's link switch
    nAGQ: int


@dataclass(frozen=True, eq=False)
class MLProblem:
    """Everything one optimization needs: the program, its typed data and the parameter layout.

    Parameters (the unconstrained vector): ``beta`` (K), ``theta`` (n_theta), then
    ``n_aux`` auxiliary values (``log_sigma`` for lmer, ``log_shape`` for negbinomial).
    """

    kind: str  #: "lmm" or "glmm"
    layout: RandomLayout
    N: int
    K: int
    n_aux: int
    REML: bool = False
    crossproducts: CrossProducts | None = None  #: lmm
    #: lmm: n, X'X, X'y, y'y, sum of y, column sums of X (least-squares starting values)
    moments: dict | None = None
    blocks: GLMMBlocks | None = None  #: glmm

    @property
    def template(self) -> str:
        return {"lmm": "ml_lmm.stan", "glmm": "ml_glmm.stan"}[self.kind]

    @property
    def n_theta(self) -> int:
        return self.layout.n_theta

    @property
    def n_params(self) -> int:
        return self.K + self.n_theta + self.n_aux

    def standata(self) -> dict[str, Any]:
        """The data dict of the Stan program (the only place Stan data names are written)."""
        lay = self.layout
        data: dict[str, Any] = dict(N=self.N, K=self.K)
        if self.kind == "lmm":
            cp = self.crossproducts
            data.update(REML=int(self.REML), XtX=cp.XtX, Xty=cp.Xty, yty=cp.yty, G=lay.G, q=lay.q,
                        ZtZ=cp.ZtZ, ZtX=cp.ZtX, Zty=cp.Zty, lambda_diagonal=int(lay.lambda_diagonal))
        else:
            bl = self.blocks
            x, logw = gauss_hermite(bl.nAGQ)
            data.update(family=bl.family_code, link=bl.link_code, y=bl.y, y_real=bl.y_real, trials=bl.trials, X=bl.X, G=lay.G, q=lay.q,
                        Zb=bl.Zb, block_start=bl.block_start, block_size=bl.block_size)
        data.update(n_theta=lay.n_theta, n_lam=len(lay.lam_row), lam_row=lay.lam_row.astype(int),
                    lam_col=lay.lam_col.astype(int), lam_par=lay.lam_par.astype(int))
        if self.kind == "glmm":
            data.update(n_agq=int(bl.nAGQ), gh_x=x, gh_logw=logw, newton_tol=_NEWTON_TOL,
                        newton_max_iter=_NEWTON_MAX_ITER)
        return data


def stan_program(kind: str) -> str:
    """The Stan code of the ML program (``"lmm"`` or ``"glmm"``); it depends on nothing else.

    >>> "marginal_gaussian_lpdf" in stan_program("lmm")
    True
    """
    if kind == "lmm":
        return render("ml_lmm.stan")
    return render("ml_glmm.stan", **glmm_template_context())


def glmm_template_context() -> dict:
    """What ``ml_glmm.stan`` needs from the families: every glmer family's Stan snippets and
    every link glmer families take (family and link codes are data: one program serves all)."""
    fams = glmm_families()
    with_aux = [f for f in fams if f.glmm_aux]
    scale = [f for f in fams if f.glmm_scale]
    links = sorted({LINKS[name] for f in fams for name in f.links}, key=lambda link: link.code)
    return dict(families=fams, links=links, scale_families=scale,
                scale_condition=" || ".join(f"family == {f.glmm_code}" for f in scale) or "0",
                phi_condition=" || ".join(f"family == {f.glmm_code}" for f in with_aux) or "0",
                phi_names=", ".join(f"{f.name}'s {f.glmm_aux}" for f in with_aux) or "nothing")


def lmm_crossproducts(design: Design, lay: RandomLayout) -> CrossProducts:
    """Per-block cross-products Z'Z, Z'X, Z'y (shape (G, ...)) and the totals X'X, X'y, y'y."""
    X, y = design.X, design.y
    return CrossProducts(
        XtX=crossprod(X), Xty=crossprod(X, y), yty=float(y @ y),
        ZtZ=symmetrize(grouped_crossprod(lay.Zb, lay.Zb, lay.block, lay.G)),
        ZtX=grouped_crossprod(lay.Zb, X, lay.block, lay.G),
        Zty=grouped_crossprod(lay.Zb, y, lay.block, lay.G),
    )


def lmm_bounds(design: Design, lay: RandomLayout) -> tuple | None:
    """``(bound_X, bound_Zb, bound_y, n)`` for exact, partition-independent sums
    (:func:`stanhier.model.crossprod.grouped_crossprod_parts`); None for the stacked layout
    beyond ``MAX_EXACT_STACKED_Q`` (one large q x q block: summed in floating point, sparse)."""
    if lay.layout != "blocks" and lay.q > MAX_EXACT_STACKED_Q:
        return None
    m = design_moments(design)
    bX = np.maximum(np.abs(m["colmin"]), np.abs(m["colmax"]))
    if lay.layout == "blocks":
        bZ = np.concatenate([np.asarray(z, float) for z in m["zmax"]])
    else:
        bZ = np.concatenate([np.tile(np.asarray(z, float), gt.n_levels) for z, gt in zip(m["zmax"], design.terms)])
    return bX, bZ, np.array([m["ymax"]]), int(m["n"])


def partition_crossproducts(design: Design, bounds: tuple | None) -> dict[str, Any]:
    """The sums of :func:`lmm_crossproducts` on some rows (a partition, or all of them): exact
    parts when ``bounds`` (:func:`lmm_bounds`) are given, so that any split of the rows gives
    the same statistics bit for bit; else the plain sums."""
    lay = build_layout(design)
    if bounds is None:
        cp = lmm_crossproducts(design, lay)
        return {k: getattr(cp, k) for k in ("XtX", "Xty", "yty", "ZtZ", "ZtX", "Zty")}
    bX, bZ, by, n = bounds
    p = gaussian_crossprod_parts(design.X, design.y, lay.Zb, lay.block, lay.G, bX, bZ, float(by[0]), n)
    return {"XtX": p["AtA"], "Xty": p["Aty"], "yty": p["yty"], "ZtZ": p["ZtZ"], "ZtX": p["ZtA"], "Zty": p["Zty"]}


def _finish_crossproducts(sums: dict[str, Any], exact: bool) -> CrossProducts:
    if not exact:
        return CrossProducts(**sums)
    f = {k: finish_parts(v) for k, v in sums.items()}
    return CrossProducts(XtX=symmetrize(f["XtX"][0]), Xty=f["Xty"][0], yty=float(f["yty"][0, 0]),
                         ZtZ=symmetrize(f["ZtZ"]), ZtX=f["ZtX"], Zty=f["Zty"])


def lmm_problem(design: Design, lay: RandomLayout, REML: bool) -> MLProblem:
    """``lmer``'s problem; the cross-products are reduced on the cluster for Dask data, with
    the same (exact) sums as for pandas input, so both give the same fit."""
    bounds = lmm_bounds(design, lay)
    if design.distributed:
        sums = design.source.reduce(f"lmm_{lay.layout}", partial(partition_crossproducts, bounds=bounds))
    else:
        sums = partition_crossproducts(design, bounds) if bounds is not None else {
            k: getattr(c, k) for c in [lmm_crossproducts(design, lay)] for k in ("XtX", "Xty", "yty", "ZtZ", "ZtX", "Zty")}
    cp = _finish_crossproducts(sums, bounds is not None)
    m = design_moments(design)
    moments = {"n": design.N, "XtX": cp.XtX, "Xty": cp.Xty, "yty": cp.yty, "sum_y": exact_value(m["ysum_exact"]),
               "colsum": np.array([exact_value(c) for c in m["colsum_exact"]])}
    return MLProblem(kind="lmm", layout=lay, N=design.N, K=design.X.shape[1], n_aux=1, REML=bool(REML),
                     crossproducts=cp, moments=moments)


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
    y = np.asarray(design.y[order], float)
    bl = GLMMBlocks(y=np.round(y).astype(int) if family.is_discrete else np.zeros(N, int), y_real=y,
                    trials=np.round(trials[order]).astype(int),
                    X=design.X[order], Zb=Zb[order], block_start=(starts + 1).astype(int),
                    block_size=sizes.astype(int), order=order, family_code=family.glmm_code,
                    link_code=family.link_object.code, nAGQ=int(nAGQ))
    return MLProblem(kind="glmm", layout=lay, N=N, K=design.X.shape[1],
                     n_aux=int(family.glmm_aux is not None), blocks=bl)


# --------------------------------------------------------------------------- starts
def moments_least_squares(m: dict[str, Any]) -> tuple[np.ndarray, float, float]:
    """(beta, sd of the residuals, sd of y) of least squares from reduced moments
    (``n``, ``XtX``, ``Xty``, ``yty``, ``sum_y``, ``colsum``), as ``np.std`` of the rows would give."""
    n = float(m["n"])
    beta, *_ = np.linalg.lstsq(m["XtX"], m["Xty"], rcond=None)
    mean_r = (m["sum_y"] - m["colsum"] @ beta) / n
    ms_r = (m["yty"] - 2 * beta @ m["Xty"] + beta @ m["XtX"] @ beta) / n
    mean_y = m["sum_y"] / n
    return beta, float(np.sqrt(max(ms_r - mean_r ** 2, 0.0))), float(np.sqrt(max(m["yty"] / n - mean_y ** 2, 0.0)))


def glm_irls(X: np.ndarray, y: np.ndarray, family: Family, trials: np.ndarray | None,
          offset: np.ndarray | None = None) -> np.ndarray:
    """Fixed-effects GLM by IRLS (starting values for glmer); ``offset`` is added to X beta
    (aggregated Poisson rows: the log of their exposure)."""
    n = trials if (family.uses_trials and trials is not None) else np.ones_like(y)
    off = np.zeros_like(y) if offset is None else offset
    eta = family.irls_start(y, n) - off
    beta = np.zeros(X.shape[1])
    for _ in range(50):
        w, z = family.irls_working(y, eta + off, n)
        z = z - off
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


def start_values(problem: MLProblem, design: Design, family: Family) -> list[np.ndarray]:
    """Starting points for the optimizer: least squares / IRLS fixed effects, Lambda = s * I."""
    lay = problem.layout
    X, y = design.X, design.y
    diag = np.zeros(lay.n_theta)
    for slot in lay.slots:
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            diag[k] = 1.0 if i == j else 0.0
    if problem.kind == "lmm":
        # least squares from the (exact) cross-products: the same start for pandas and Dask data
        beta, sd_resid, sd_y = moments_least_squares(problem.moments)
        log_sigma = np.log(max(sd_resid, 1e-8 * max(sd_y, 1.0), 1e-300))
        return [np.concatenate([beta, diag * s, [log_sigma]]) for s in (1.0, 0.3, 3.0)]
    exposure = design.trials if family.name == "poisson" and design.trials is not None else None
    beta = glm_irls(X, y, family, design.trials, None if exposure is None else np.log(exposure))
    aux = family.glmm_aux_start(y, family.inverse_link(X @ beta))
    return [np.concatenate([beta, diag * s, aux]) for s in (1.0, 0.3, 2.0)]


