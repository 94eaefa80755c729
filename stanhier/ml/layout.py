"""How the random effects of an ML fit are arranged into independent blocks.

Example
-------
>>> import pandas as pd
>>> from stanhier.model.formula import parse_formula
>>> from stanhier.model.design import make_design
>>> df = pd.DataFrame({"y": [1., 2, 3, 4, 5, 6], "x": [0., 1, 0, 1, 0, 1], "g": list("aabbcc")})
>>> build_layout(make_design(parse_formula("y ~ x + (x | g)"), df)).q
2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from ..errors import DataError, FormulaError
from ..model.design import Design

__all__ = ["TermSlot", "RandomLayout", "build_layout", "MAX_STACKED_Q", "linear_predictor"]

#: Largest number of random effects in the stacked (several grouping factors) layout.
#: The stacked block is a dense q x q matrix: memory q^2 and time q^3 per gradient.
MAX_STACKED_Q = 1000

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
    >>> from stanhier.model.formula import parse_formula
    >>> from stanhier.model.design import make_design
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
    N = len(terms[0].J)  # the rows held here (none for a Dask design)
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
                "lme4 (sparse Cholesky) for this one. (lmer, and glmer for Poisson/binomial/Bernoulli "
                "models with scalar terms by Laplace, fit this kind with their blocked evaluator.)"
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


def linear_predictor(X: np.ndarray, Zs, Js, beta: np.ndarray, term_values) -> np.ndarray:
    """``X beta + sum_k Z_k r_k[J_k]`` (rows with ``J_k < 0`` get no effect of term k)."""
    eta = X @ beta
    for Z, J, vals in zip(Zs, Js, term_values):
        ok = J >= 0
        contrib = np.zeros(len(eta))
        contrib[ok] = np.sum(Z[ok] * vals[J[ok]], axis=1)
        eta = eta + contrib
    return eta
