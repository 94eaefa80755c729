"""Per-group cross-products: the one routine behind every sufficient statistic.

Both Gaussian programs that read cross-products instead of rows -- ``lmer``'s exact
marginal likelihood (:func:`stanhier.ml.problem.lmm_crossproducts`) and ``brm``'s
``sufficient_stats=True`` program (:func:`stanhier.stan.codegen.make_standata`) --
build them here, so the sums are written once.

For observations ``i`` with group ``group[i]`` in ``0..G-1``,

    grouped_crossprod(A, B, group, G)[g] = sum_{i: group[i] == g} outer(A[i], B[i])

(``B`` one-dimensional gives ``sum A[i] * B[i]``, shape ``(G, a)``). Groups without
observations get zeros. ``A``/``B`` may be scipy sparse matrices.

Example
-------
>>> import numpy as np
>>> A = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
>>> group = np.array([0, 1, 1])
>>> grouped_crossprod(A, A, group, 2).tolist()
[[[1.0, 0.0], [0.0, 0.0]], [[2.0, 3.0], [3.0, 5.0]]]
>>> grouped_crossprod(A, np.array([1.0, 2.0, 3.0]), group, 2).tolist()
[[1.0, 0.0], [5.0, 8.0]]
>>> crossprod(A).tolist()
[[3.0, 3.0], [3.0, 5.0]]
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["grouped_crossprod", "crossprod", "symmetrize", "grouped_crossprod_parts", "finish_parts",
           "gaussian_crossprod_parts", "exact_column_sums", "add_exact", "exact_value", "EXACT_LEVELS"]


def _dense(M: Any) -> np.ndarray:
    return np.asarray(M.toarray() if sparse.issparse(M) else M, dtype=float)


def crossprod(A: Any, B: Any = None) -> np.ndarray:
    """``A' B`` over all rows (``B=None``: ``A' A``, symmetrized); dense or sparse input.

    >>> crossprod(np.array([[1.0, 2.0]]), np.array([3.0])).tolist()
    [3.0, 6.0]
    """
    if B is None:
        return symmetrize(_dense(A.T @ A))
    return _dense(A.T @ B)


def symmetrize(M: np.ndarray) -> np.ndarray:
    """``(M + M') / 2`` over the last two axes (removes rounding asymmetry).

    >>> symmetrize(np.array([[1.0, 2.0], [0.0, 1.0]])).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    return (M + np.swapaxes(M, -1, -2)) / 2


def grouped_crossprod(A: Any, B: Any, group: np.ndarray, G: int) -> np.ndarray:
    """Per-group sums of outer products ``A[i] B[i]'``: shape ``(G, a, b)``, or ``(G, a)`` for
    a one-dimensional ``B`` (see the module docstring)."""
    group = np.asarray(group, dtype=np.int64)
    N = A.shape[0]
    if group.shape != (N,) or B.shape[0] != N:
        raise ValueError(f"grouped_crossprod: A ({A.shape}), B ({B.shape}) and group ({group.shape}) "
                         "need the same number of rows.")
    if N and (group.min() < 0 or group.max() >= G):
        raise ValueError(f"grouped_crossprod: group indices must lie in 0..{G - 1}.")
    vector = np.ndim(B) == 1
    if G == 1:  # one group: a plain cross-product (the sparse stacked layout takes this path)
        out = crossprod(A, B)
        return out[None]
    if sparse.issparse(A) or sparse.issparse(B):
        A, B = _dense(A), _dense(B)
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=G)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    As, Bs = A[order], B[order]
    prod = As * Bs[:, None] if vector else As[:, :, None] * Bs[:, None, :]
    out = np.zeros((G,) + prod.shape[1:])
    present = counts > 0
    if np.any(present):
        # consecutive starts of non-empty groups delimit exactly each group's rows
        out[present] = np.add.reduceat(prod, starts[present], axis=0)
    return out


# --------------------------------------------------------------------------- order-independent sums
#: extraction levels of :func:`grouped_crossprod_parts` (each captures 52 - log2(2N) bits)
EXACT_LEVELS = 3
#: rows x cells per chunk of :func:`grouped_crossprod_parts` (bounds its memory)
CHUNK_CELLS = 4_000_000
#: rows per chunk of :func:`exact_column_sums` (float sums of 27-bit integers stay exact)
_EXACT_SUM_ROWS = 1 << 25


def _extraction_start(bound: np.ndarray, n_total: int) -> tuple[np.ndarray, int]:
    """Rump-Ogita-Oishi extraction constants: sigma = 2^(k + ceil(log2 bound)) per entry."""
    k = int(math.ceil(math.log2(2 * (int(n_total) + 2))))
    bound = np.asarray(bound, float)
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(np.where(bound > 0, bound, 1.0)))
    return np.ldexp(1.0, (k + e).astype(int)), k


def grouped_crossprod_parts(A: Any, B: Any, group: np.ndarray, G: int, bound_A: np.ndarray,
                            bound_B: np.ndarray, n_total: int) -> np.ndarray:
    """:func:`grouped_crossprod` as ``EXACT_LEVELS + 1`` stacked parts whose first
    ``EXACT_LEVELS`` are *exact* sums, so that adding the parts of any split of the rows
    (partitions, in any order) and then :func:`finish_parts` gives the same float: the
    statistics do not depend on how the data are partitioned.

    ``bound_A`` / ``bound_B``: per-column bounds of ``|A|`` / ``|B|`` over *all* rows;
    ``n_total``: the number of rows of all partitions together. Each product ``p`` is split
    exactly (``q = (sigma + p) - sigma``, Rump, Ogita and Oishi 2008) into parts that are
    multiples of ``ulp(sigma)`` and sum exactly; only the last, tiny remainder is summed in
    floating point.

    >>> A = np.array([[0.1], [0.2], [0.3]]); g = np.array([0, 0, 0])
    >>> one = finish_parts(grouped_crossprod_parts(A, A[:, 0], g, 1, [0.3], [0.3], 3))
    >>> two = finish_parts(grouped_crossprod_parts(A[2:], A[2:, 0], g[2:], 1, [0.3], [0.3], 3)
    ...                    + grouped_crossprod_parts(A[:2], A[:2, 0], g[:2], 1, [0.3], [0.3], 3))
    >>> bool(one[0, 0] == two[0, 0] == 0.1 * 0.1 + 0.2 * 0.2 + 0.3 * 0.3)
    True
    """
    group = np.asarray(group, dtype=np.int64)
    n_rows = A.shape[0]
    cells = max(1, A.shape[1] * (1 if np.ndim(B) == 1 else B.shape[1]))
    step = max(1, CHUNK_CELLS // cells)
    if n_rows > step:  # exact parts add: bounded memory by chunks of rows
        out = None
        for s0 in range(0, n_rows, step):
            sl = slice(s0, s0 + step)
            part = grouped_crossprod_parts(A[sl], B[sl], group[sl], G, bound_A, bound_B, n_total)
            out = part if out is None else out + part
        return out
    if sparse.issparse(A) or sparse.issparse(B):
        A, B = _dense(A), _dense(B)
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    vector = np.ndim(B) == 1
    bound = (np.multiply.outer(np.asarray(bound_A, float), np.asarray(bound_B, float)))
    if vector:
        bound = np.asarray(bound_A, float) * float(np.ravel(bound_B)[0])
    sigma, k = _extraction_start(bound, n_total)
    if G == 1:  # one group: no sorting, plain column sums
        present, starts = np.ones(1, dtype=bool), None
        As, Bs = A, B
    else:
        order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=G)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        present = counts > 0
        As, Bs = A[order], B[order]
    r = As * Bs[:, None] if vector else As[:, :, None] * Bs[:, None, :]
    out = np.zeros((EXACT_LEVELS + 1, G) + r.shape[1:])
    if not np.any(present) or n_rows == 0:
        return out
    for level in range(EXACT_LEVELS + 1):
        if level < EXACT_LEVELS:
            q = (sigma + r) - sigma  # exact: a multiple of ulp(sigma), |sum| < sigma
            r -= q  # exact remainder, |r| <= ulp(sigma) / 2
            sigma = sigma * 2.0 ** (k - 52)
        else:
            q = r
        out[level][present] = q.sum(axis=0) if starts is None else np.add.reduceat(q, starts[present], axis=0)
    return out


def gaussian_crossprod_parts(A: np.ndarray, y: np.ndarray, Zb: Any, block: np.ndarray, G: int,
                             bound_A: np.ndarray, bound_Z: np.ndarray, bound_y: float,
                             n_total: int) -> dict[str, np.ndarray]:
    """The exact parts (:func:`grouped_crossprod_parts`) of everything a Gaussian model's
    integrated likelihood needs: ``A'A``, ``A'y``, ``y'y`` over all rows and, per block,
    ``Z'Z``, ``Z'A``, ``Z'y`` -- in two passes over the rows (one of them sorted by block)
    rather than six; each entry is the same exact sum as its own call would give.

    >>> A = np.array([[1.0, 0.5], [1.0, -0.5], [1.0, 2.0]]); y = np.array([1.0, 2.0, 3.0])
    >>> p = gaussian_crossprod_parts(A, y, A[:, :1], np.array([0, 1, 1]), 2, [1.0, 2.0], [1.0], 3.0, 3)
    >>> finish_parts(p["Aty"])[0].tolist(), finish_parts(p["Zty"])[:, 0].tolist()
    ([6.0, 5.5], [1.0, 5.0])
    """
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    K, q = A.shape[1], Zb.shape[1]
    W = np.column_stack([A, y])
    bW = np.concatenate([np.asarray(bound_A, float), [float(bound_y)]])
    zeros = np.zeros(len(y), dtype=np.int64)
    WtW = grouped_crossprod_parts(W, W, zeros, 1, bW, bW, n_total)
    V = sparse.hstack([Zb, sparse.csr_matrix(W)]).tocsr() if sparse.issparse(Zb) else np.column_stack([Zb, W])
    ZtV = grouped_crossprod_parts(Zb, V, block, G, bound_Z, np.concatenate([np.asarray(bound_Z, float), bW]),
                                  n_total)
    return {"AtA": WtW[:, :, :K, :K], "Aty": WtW[:, :, :K, K], "yty": WtW[:, :, K:, K],
            "ZtZ": ZtV[..., :q], "ZtA": ZtV[..., q:q + K], "Zty": ZtV[..., q + K]}


def finish_parts(parts: np.ndarray) -> np.ndarray:
    """The float value of summed :func:`grouped_crossprod_parts` (largest parts first)."""
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def exact_column_sums(X: np.ndarray) -> list[dict[int, int]]:
    """Per column, the exact sum of its values as ``{binary exponent: integer}`` (add such dicts
    over partitions with :func:`add_exact`, read them with :func:`exact_value`): every value
    ``m * 2^e`` (``m`` a 53-bit integer) is summed as an integer per exponent ``e``.

    >>> s = add_exact(exact_column_sums(np.array([[0.1], [0.2]])), exact_column_sums(np.array([[0.3]])))
    >>> exact_value(s[0]) == float(sum(map(__import__("fractions").Fraction, (0.1, 0.2, 0.3))))
    True
    """
    X = np.asarray(X, dtype=float).reshape(len(X), -1)
    if len(X) > _EXACT_SUM_ROWS:  # the float bincounts below are exact for up to 2^25 rows
        return functools.reduce(add_exact, (exact_column_sums(X[s:s + _EXACT_SUM_ROWS])
                                            for s in range(0, len(X), _EXACT_SUM_ROWS)))
    out = []
    for j in range(X.shape[1]):
        mant, exp = np.frexp(X[:, j])
        m = np.ldexp(mant, 53).astype(np.int64)  # exact: |mant| < 1
        hi, lo = m >> 26, m - ((m >> 26) << 26)  # 27 / 26 bits, each sum < 2^52: exact in float
        e0 = int(exp.min()) if len(exp) else 0
        idx = exp - e0
        his = np.bincount(idx, weights=hi.astype(float))
        los = np.bincount(idx, weights=lo.astype(float))
        out.append({e0 + int(i) - 53: (int(his[i]) << 26) + int(los[i]) for i in np.flatnonzero(np.bincount(idx))})
    return out


def add_exact(a: list[dict[int, int]] | None, b: list[dict[int, int]] | None) -> list[dict[int, int]] | None:
    """Add two results of :func:`exact_column_sums` (exactly)."""
    if a is None or b is None:
        return a if b is None else b
    out = []
    for da, db in zip(a, b):
        d = dict(da)
        for e, v in db.items():
            d[e] = d.get(e, 0) + v
        out.append(d)
    return out


def exact_value(d: dict[int, int]) -> float:
    """The correctly rounded float of an exact sum ``{e: m}`` (= sum of m * 2^e)."""
    if not d:
        return 0.0
    e0 = min(d)
    total = sum(v << (e - e0) for e, v in d.items())
    return float(Fraction(total) * Fraction(2) ** e0)
