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

from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["grouped_crossprod", "crossprod", "symmetrize"]


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
