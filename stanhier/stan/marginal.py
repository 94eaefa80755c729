"""Data of the marginalized Gaussian program (``brm_marginal.stan``): layout and cross-products.

For a Gaussian ``brm`` the group-level effects enter the linear predictor linearly
and have a Gaussian prior, so they can be integrated out exactly. The program then
needs only cross-products of ``A`` (the population-level design: intercept column and
centred predictors, as brms centres them), ``Z`` (the group-level design) and ``y``,
arranged in independent *blocks* of random effects:

* ``"blocks"``: every group-level term has the same grouping factor, e.g.
  ``(Days | Subject)`` or ``(1 | g) + (0 + x | g)``: one block per level of the
  factor, ``q`` = the number of coefficients of all terms together;
* ``"dense"``: several grouping factors (crossed or nested), e.g.
  ``(1 | plate) + (1 | sample)``: one block holding every effect of every level,
  ``q = sum_k N_k * M_k`` (used while ``q <= MAX_DENSE_Q``; the cost per gradient
  grows as ``q**3``).

In the blocks layout with ``q`` = 1 or 2 (e.g. ``(1 | g)``, ``(x | g)``, ``(x || g)``) the
program evaluates every block at once in closed form (:func:`closed_form_q`): the 1 x 1 or
2 x 2 determinants and inverses are written out elementwise over length-``G`` vectors, so a
gradient records a few vector operations instead of ``G`` small-matrix ones. Larger blocks
and the dense layout loop over blocks with a Cholesky factor each.

Within a block, term ``k`` occupies ``R_k`` consecutive copies (one per level in the
dense layout, one in the blocks layout) of its ``M_k`` coefficients, starting at
offset ``O_k``: the effect ``r_k[j, m]`` sits at ``O_k + j * M_k + m`` (dense, 0-based)
or at ``O_k + m`` of block ``j`` (blocks).

Example
-------
>>> import numpy as np, pandas as pd
>>> from stanhier.model.formula import parse_formula
>>> from stanhier.model.design import make_design
>>> df = pd.DataFrame({"y": [1.0, 2.0, 4.0, 3.0, 2.5, 1.0], "x": [0, 1, 0, 1, 2, 2], "g": list("aabbcc")})
>>> lay = marginal_layout(make_design(parse_formula("y ~ x + (x | g)"), df))
>>> (lay.kind, lay.G, lay.q, lay.offsets, lay.copies)
('blocks', 3, 2, (0,), (1,))
>>> closed_form_q(lay)   # 2 x 2 blocks: the program's elementwise closed form
2
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..model.crossprod import (crossprod, exact_value, finish_parts, gaussian_crossprod_parts,
                              grouped_crossprod, symmetrize)
from ..model.design import Design
from ..model.distributed import design_moments
from . import names

__all__ = ["MAX_DENSE_Q", "CLOSED_FORM_Q", "closed_form_q", "MarginalLayout", "marginal_layout", "block_design",
           "cross_products", "marginal_standata", "partition_cross_products", "design_cross_products", "ExactSetup",
           "exact_setup"]

#: largest stacked block (all effects of all levels) the dense layout accepts
MAX_DENSE_Q = 200
#: block sizes whose marginal density the program writes in elementwise closed form
CLOSED_FORM_Q = (1, 2)


@dataclass(frozen=True)
class MarginalLayout:
    """How the group-level effects are arranged in independent blocks."""

    kind: str  #: ``"blocks"`` (one block per level of the single grouping factor) or ``"dense"``
    G: int  #: number of blocks
    q: int  #: effects per block
    offsets: tuple[int, ...]  #: per term: 0-based offset of its first effect in a block (O_k)
    copies: tuple[int, ...]  #: per term: R_k, consecutive copies of its M_k coefficients


def _same_factor(design: Design) -> bool:
    first = design.terms[0]
    return all(gt.term.group_name == first.term.group_name and gt.n_levels == first.n_levels
               and np.array_equal(gt.J, first.J) for gt in design.terms[1:])


def marginal_layout(design: Design, max_dense_q: int = MAX_DENSE_Q) -> MarginalLayout | None:
    """The block layout of ``design``'s group-level effects, or None if it does not fit.

    None when the model has no group-level term, or several grouping factors whose
    stacked effects exceed ``max_dense_q``.
    """
    terms = design.terms
    if not terms:
        return None
    if _same_factor(design):
        offsets, o = [], 0
        for gt in terms:
            offsets.append(o)
            o += gt.M
        return MarginalLayout("blocks", terms[0].n_levels, o, tuple(offsets), (1,) * len(terms))
    q = sum(gt.n_levels * gt.M for gt in terms)
    if q > max_dense_q:
        return None
    offsets, o = [], 0
    for gt in terms:
        offsets.append(o)
        o += gt.n_levels * gt.M
    return MarginalLayout("dense", 1, q, tuple(offsets), tuple(gt.n_levels for gt in terms))


def closed_form_q(layout: MarginalLayout | None) -> int:
    """The block size ``q`` if the program evaluates all blocks in closed form (blocks layout,
    ``q`` in :data:`CLOSED_FORM_Q`), else 0 (a loop over blocks). ``q`` is model structure (the
    coefficients of the terms), never data, so the program text stays a function of structure."""
    if layout is not None and layout.kind == "blocks" and layout.q in CLOSED_FORM_Q:
        return layout.q
    return 0


def block_design(design: Design, layout: MarginalLayout) -> tuple[np.ndarray, np.ndarray]:
    """``(block, Zb)``: the 0-based block of every row and its (N, q) row of Z within the block."""
    N = design.N
    if layout.kind == "blocks":
        return design.terms[0].J.astype(np.int64), np.column_stack([gt.Z for gt in design.terms])
    Zb = np.zeros((N, layout.q))
    rows = np.arange(N)
    for gt, o in zip(design.terms, layout.offsets):
        for m in range(gt.M):
            Zb[rows, o + gt.J * gt.M + m] = gt.Z[:, m]
    return np.zeros(N, dtype=np.int64), Zb


def fixed_design(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """``(A, means_X)``: brms's population-level design (intercept column, then centred predictors)."""
    X = design.X
    if design.has_intercept:
        means = X[:, 1:].mean(axis=0)
        return np.column_stack([np.ones(design.N), X[:, 1:] - means]), means
    return X, np.zeros(0)


def cross_products(A: np.ndarray, Zb: np.ndarray, y: np.ndarray, block: np.ndarray,
                   G: int) -> dict[str, np.ndarray]:
    """Whole-data ``A'A, A'y, y'y`` and per-block ``Z'Z, Z'A, Z'y`` (:mod:`stanhier.model.crossprod`).

    >>> A = np.ones((3, 1)); Z = np.array([[1.0], [2.0], [3.0]]); y = np.array([1.0, 0.0, 2.0])
    >>> cp = cross_products(A, Z, y, np.array([0, 1, 1]), 2)
    >>> cp["ZtZ"][:, 0, 0].tolist(), cp["Zty"][:, 0].tolist(), float(cp["yty"])
    ([1.0, 13.0], [1.0, 6.0], 5.0)
    """
    return {"AtA": crossprod(A), "Aty": crossprod(A, y), "yty": float(y @ y),
            "ZtZ": symmetrize(grouped_crossprod(Zb, Zb, block, G)), "ZtA": grouped_crossprod(Zb, A, block, G),
            "Zty": grouped_crossprod(Zb, y, block, G)}


@dataclass(frozen=True, eq=False)
class ExactSetup:
    """What makes the sums independent of how the rows are split: the whole data's row count,
    exact column means and per-column bounds of ``|A|``, ``|Z|`` and ``|y|``."""

    n: int
    means: np.ndarray  #: exact means of X's non-intercept columns (empty without intercept)
    bound_A: np.ndarray
    bound_Z: np.ndarray
    bound_y: float


def exact_setup(design: Design, layout: MarginalLayout) -> ExactSetup:
    m = design_moments(design)
    n = int(m["n"])
    lo, hi = m["colmin"], m["colmax"]
    if design.has_intercept:
        means = np.array([exact_value(c) for c in m["colsum_exact"][1:]]) / n
        bound_A = np.concatenate([[1.0], np.maximum(np.abs(hi[1:] - means), np.abs(lo[1:] - means))])
    else:
        means = np.zeros(0)
        bound_A = np.maximum(np.abs(hi), np.abs(lo))
    zmax = m["zmax"]
    if layout.kind == "blocks":
        bound_Z = np.concatenate([np.asarray(z, float) for z in zmax])
    else:
        bound_Z = np.concatenate([np.tile(np.asarray(z, float), gt.n_levels) for z, gt in zip(zmax, design.terms)])
    return ExactSetup(n=n, means=means, bound_A=bound_A, bound_Z=bound_Z, bound_y=float(m["ymax"]))


def partition_cross_products(design: Design, layout: MarginalLayout, setup: ExactSetup) -> dict[str, np.ndarray]:
    """The exact parts (:func:`stanhier.model.crossprod.gaussian_crossprod_parts`) of
    :func:`cross_products` on some rows, centred with the whole data's exact means: adding the
    parts of any split of the rows gives the same statistics, bit for bit."""
    X, y = design.X, design.y
    A = np.column_stack([np.ones(design.N), X[:, 1:] - setup.means]) if design.has_intercept else X
    block, Zb = block_design(design, layout)
    return gaussian_crossprod_parts(A, y, Zb, block, layout.G, setup.bound_A, setup.bound_Z, setup.bound_y, setup.n)


def design_cross_products(design: Design, layout: MarginalLayout) -> tuple[dict[str, Any], np.ndarray]:
    """``(cross_products, means_X)`` of the whole design, as :func:`cross_products` returns them
    but summed exactly (:func:`partition_cross_products`), so pandas and Dask input -- however
    partitioned -- give identical data and hence identical draws. Dask data are reduced on the
    cluster: the client never holds the rows."""
    setup = exact_setup(design, layout)
    if design.distributed:
        key = f"marginal_{layout.kind}_{layout.G}_{layout.q}"
        parts = design.source.reduce(key, partial(partition_cross_products, layout=layout, setup=setup))
    else:
        parts = partition_cross_products(design, layout, setup)
    cp = {k: finish_parts(v) for k, v in parts.items()}
    return {"AtA": symmetrize(cp["AtA"][0]), "Aty": cp["Aty"][0], "yty": float(cp["yty"][0, 0]),
            "ZtZ": symmetrize(cp["ZtZ"]), "ZtA": cp["ZtA"], "Zty": cp["Zty"]}, setup.means


def marginal_standata(design: Design, layout: MarginalLayout, prior_data: dict[str, Any]) -> dict[str, Any]:
    """The data dict of ``brm_marginal.stan`` (``prior_data``: the priors' hyperparameters)."""
    cp, means = design_cross_products(design, layout)
    data: dict[str, Any] = {names.N: design.N, names.K: design.X.shape[1], **cp, "G": layout.G, "q": layout.q}
    if design.has_intercept:
        data["means_X"] = means
    for k, (gt, o, R) in enumerate(zip(design.terms, layout.offsets, layout.copies)):
        t = names.term(k)
        data[t.n_levels] = gt.n_levels
        data[t.n_coefs] = gt.M
        data[f"O_{t.suffix}"] = o
        data[f"R_{t.suffix}"] = R
        if gt.correlated:
            data[t.n_cor] = gt.M * (gt.M - 1) // 2
    data.update(prior_data)
    data[names.PRIOR_ONLY] = 0
    return data
