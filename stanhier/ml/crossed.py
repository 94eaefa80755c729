"""Crossed and nested random effects at scale: lme4's penalized least squares, blocked.

When the random effects of a linear mixed model sit in several grouping factors
(crossed, e.g. students x lecturers, or nested) the stacked layout of
``ml_lmm.stan`` needs a dense q x q matrix (q = all random effects), which stops at
:data:`~stanhier.ml.layout.MAX_STACKED_Q`. This module evaluates the same exact
marginal (restricted) log-likelihood with a cost that follows the sparsity of Z'Z:

* the random effects are ordered as lme4 orders its terms (most levels first); the
  first term's block of ``A = Lambda' Z'Z Lambda + I`` is block-diagonal (one
  M1 x M1 block per level, diagonal for a scalar term), so it is factored level by level;
* everything else is a dense Schur complement
  ``S = Lambda2' (Z2'Z2 - T' P T) Lambda2 + I`` with ``T = Z1'Z2`` (sparse counts) and
  ``P = blockdiag(Lambda1 A11_j^-1 Lambda1')``, of the size of the *other* factors
  (1,128 x 1,128 for InstEval), factored by LAPACK;
* the fixed effects and sigma are profiled out (lme4's formulas: ``r^2``, ``RX``,
  deviance ``log|L|^2 + N (1 + log(2 pi r^2 / N))``, REML adds ``log|RX|^2`` with N - p),
  so the optimizer sees only ``theta`` (bounded below by 0 on Lambda's diagonal).

The Stan program ``ml_lmm_crossed.stan`` computes the same log-likelihood with the same
blocks (unprofiled: beta, theta, log sigma are its parameters) and stays the definition
of the model: :meth:`CrossedMerFit.stan_check` evaluates it at the optimum, and a test
checks that the two agree. The fit says which evaluator ran (``fit.evaluator``).

Small models run here too (``lmer`` with at most :data:`MAX_QUICK_Q2` random effects outside
the largest term; one grouping factor: none, A is block-diagonal): an evaluation then takes
microseconds, and theta is optimized by L-BFGS-B on central differences evaluated in one
vectorized pass (:meth:`CrossedLMM.deviance_batch`). Within the stacked layout the data are
``ml_lmm.stan``'s cross-products (exact sums, the same for Dask and pandas data) and that
program defines the fit (:class:`StanDefined`: ``stan_check``, ``density`` for profiles).

Example
-------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(1)
>>> df = pd.DataFrame({"a": rng.integers(0, 40, 800), "b": rng.integers(0, 15, 800)})
>>> df["y"] = rng.normal(size=40)[df.a] + 0.5 * rng.normal(size=15)[df.b] + rng.normal(size=800)
>>> fit = lmer_crossed("y ~ 1 + (1 | a) + (1 | b)", df, REML=False)
>>> fit.evaluator.split(":")[0]
'numpy blocked Cholesky'
>>> bool(fit.logLik() < 0)
True
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import linalg as sla
from scipy import optimize as sopt
from scipy import sparse

from ..errors import DataError, StanhierWarning
from ..families import Family, get_family
from ..model.design import Design, check_gaussian_groups, data_label, make_design
from ..model.formula import parse_formula
from ..stan.templating import render
from .fit import MerFit, MLCall
from .layout import MAX_STACKED_Q, TermSlot
from .optimizer import OptimumInfo
from .problem import stan_program
from ..backends.base import LogDensity

__all__ = ["CrossedLayout", "CrossedLMM", "CrossedMerFit", "StanProgramText", "build_crossed_layout",
           "crossed_problem", "fit_crossed_lmm", "lmer_crossed", "needs_crossed", "MAX_SCHUR_Q", "GramPairs", "CrossedModes", "ProblemSizes",
           "z_matrix", "single_threaded_blas", "crossed_stan_program", "crossed_stan_data",
           "EVALUATOR", "MAX_QUICK_Q2", "schur_size", "blocked_is_quick", "StanDefined", "PermutedDensity",
           "stacked_problem_of", "within_stacked", "blocks_problem", "minimize_bounded", "fd_gradient",
           "lower_bounds", "checked_optimum", "evaluator_text", "first_block_gram"]

#: Largest size of the dense Schur complement (random effects outside the largest factor):
#: memory 8 q^2 bytes per copy (a few copies live at once), time q^3 / 3 per evaluation.
MAX_SCHUR_Q = 8000

#: What ran, as reported by ``fit.evaluator`` and the summary.
EVALUATOR = ("numpy blocked Cholesky: diagonal block of the largest factor + dense Schur complement "
             "(stanhier.ml.crossed); Stan program ml_lmm_crossed.stan defines the same log-likelihood")


# --------------------------------------------------------------------------- BLAS threads
def _openblas_setters() -> list[tuple[Any, Any]]:
    """(set, get) thread-count functions of the OpenBLAS copies numpy/scipy loaded (Linux)."""
    out = []
    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return out
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            for prefix in ("scipy_openblas_", "openblas_"):
                setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    out.append((setter, getter))
                    break
            else:
                continue
            break
    return out


@contextlib.contextmanager
def single_threaded_blas():
    """Run OpenBLAS on one thread inside the block (restored afterwards).

    The evaluator's LAPACK calls are of moderate size (a ~1,000 x 1,000 Cholesky): threaded
    OpenBLAS gains little there and, on a loaded machine, loses up to 20x to spinning threads
    (measured: 1.8 s vs 0.09 s for a 1,128 x 1,128 ``dpotrf`` on 2 busy cores).
    """
    pairs = _openblas_setters()
    before = [int(get()) for _, get in pairs]
    for setter, _ in pairs:
        setter(1)
    try:
        yield
    finally:
        for (setter, _), n in zip(pairs, before):
            setter(n)


# --------------------------------------------------------------------------- layout
_EMPTY = sparse.csr_matrix((0, 0))


@dataclass(frozen=True, eq=False)
class CrossedLayout:
    """Random effects of a crossed/nested model ordered for the blocked factorization.

    Column order: the first slot (most levels; its ``M1`` coefficients per level
    adjacent) then every other term, level-major within a term (as the stacked layout).
    """

    slots: tuple[TermSlot, ...]  #: slots[0] is the block-diagonal term
    q: int
    q1: int  #: random effects in the block-diagonal part (L1 * M1)
    L1: int
    M1: int
    n_theta: int
    lam_row: np.ndarray  #: 1-based, over all q effects (as RandomLayout)
    lam_col: np.ndarray
    lam_par: np.ndarray
    layout: str = "crossed"
    G: int = 1

    @property
    def q2(self) -> int:
        return self.q - self.q1

    @property
    def lambda2_diagonal(self) -> bool:
        sel = self.lam_row > self.q1
        return bool(np.all(self.lam_row[sel] == self.lam_col[sel]))

    def term_lambda(self, slot: TermSlot, theta: np.ndarray) -> np.ndarray:
        lam = np.zeros((slot.M, slot.M))
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            lam[i, j] = theta[k]
        return lam

    def _lambda(self, theta: np.ndarray, first: int) -> sparse.csr_matrix:
        """Lambda's block of the effects after the first ``first`` (sparse, square)."""
        sel = self.lam_row > first
        return sparse.csr_matrix((np.asarray(theta, float)[self.lam_par[sel] - 1],
                                  (self.lam_row[sel] - 1 - first, self.lam_col[sel] - 1 - first)),
                                 shape=(self.q - first, self.q - first))

    def Lambda(self, theta: np.ndarray) -> sparse.csr_matrix:
        """lme4's relative covariance factor of all q effects at ``theta`` (q x q, sparse)."""
        return self._lambda(theta, 0)

    def Lambda2(self, theta: np.ndarray) -> sparse.csr_matrix:
        """Relative covariance factor of the dense (Schur) part, q2 x q2, sparse."""
        return _EMPTY if self.q2 == 0 else self._lambda(theta, self.q1)

    def term_values(self, slot: TermSlot, per_block: np.ndarray) -> np.ndarray:
        """(L, M) values of a term's coefficients from the (1, q) vector of all effects."""
        return per_block[0, slot.col:slot.col + slot.L * slot.M].reshape(slot.L, slot.M)

    def term_cov(self, slot: TermSlot, per_term: Any) -> np.ndarray:
        """(L, M, M) conditional covariances of a term (``per_term``: dict by slot index)."""
        return per_term[slot.index]


def needs_crossed(design: Design, max_stacked_q: int = MAX_STACKED_Q) -> bool:
    """True when the random terms use several grouping factors and hold more than
    ``max_stacked_q`` random effects (beyond the stacked layout of ``ml_lmm.stan``)."""
    terms = design.terms
    if len(terms) < 2 or all(gt.term.group == terms[0].term.group for gt in terms):
        return False
    return sum(gt.n_levels * gt.M for gt in terms) > max_stacked_q


def schur_size(design: Design) -> int:
    """q2 of :func:`build_crossed_layout`: the random effects outside the largest term."""
    sizes = [gt.n_levels * gt.M for gt in sorted(design.terms, key=lambda gt: -gt.n_levels)]
    return sum(sizes[1:])


def blocked_is_quick(design: Design) -> bool:
    """True when the blocked evaluator is the quick one for this design: a Schur complement of
    at most :data:`MAX_QUICK_Q2` effects (none for one term), on rows held in memory."""
    return bool(design.terms) and not design.distributed and schur_size(design) <= MAX_QUICK_Q2


def build_crossed_layout(design: Design) -> CrossedLayout:
    """Order the terms (most levels first, stable, as lme4) and index Lambda's nonzeros."""
    terms = design.terms
    for gt in terms:
        if gt.n_levels < 2:
            raise DataError(f"Grouping factor {gt.term.group_name!r} of term {gt.term.text!r} has only one "
                            "level: a variance cannot be estimated from one group; drop the term.")
    order = sorted(range(len(terms)), key=lambda k: -terms[k].n_levels)
    slots, rows, cols, pars = [], [], [], []
    n_theta, col = 0, 0
    for k in order:
        gt = terms[k]
        M, L = gt.M, gt.n_levels
        pairs = [(i, j) for j in range(M) for i in range(j, M) if gt.correlated or i == j]
        idx = tuple(range(n_theta, n_theta + len(pairs)))
        slots.append(TermSlot(index=k, group=gt.term.group_name, M=M, L=L, correlated=gt.correlated,
                              col=col, theta_index=idx, pairs=tuple(pairs)))
        base = col + M * np.arange(L)
        for (i, j), p in zip(pairs, idx):
            rows.append(base + i + 1)
            cols.append(base + j + 1)
            pars.append(np.full(L, p + 1))
        n_theta += len(pairs)
        col += M * L
    first = slots[0]
    q1 = first.L * first.M
    q2 = col - q1
    if q2 > MAX_SCHUR_Q:
        sizes = ", ".join(f"{s.group}: {s.L * s.M}" for s in slots)
        raise DataError(
            f"The model has {col} random effects in crossed/nested grouping factors ({sizes}). stanhier's "
            f"blocked evaluator keeps the largest factor's {q1} effects block-diagonal and factors the "
            f"other {q2} as a dense {q2} x {q2} Schur complement, which is limited to {MAX_SCHUR_Q} "
            f"effects ({8 * MAX_SCHUR_Q ** 2 / 1e9:.1f} GB per copy). Reduce the levels of the smaller "
            "factors (e.g. pool rare levels), fit one of them as a fixed effect, use the Bayesian brm(), "
            "or lme4 (sparse supernodal Cholesky) for this one."
        )
    return CrossedLayout(slots=tuple(slots), q=col, q1=q1, L1=first.L, M1=first.M, n_theta=n_theta,
                         lam_row=np.concatenate(rows).astype(int), lam_col=np.concatenate(cols).astype(int),
                         lam_par=np.concatenate(pars).astype(int))


def z_matrix(design: Design, lay: CrossedLayout) -> sparse.csc_matrix:
    """The N x q random-effects design in the crossed column order (sparse)."""
    N = design.N
    rows, cols, vals = [], [], []
    for slot in lay.slots:
        gt = design.terms[slot.index]
        for m in range(slot.M):
            rows.append(np.arange(N))
            cols.append(slot.col + gt.J * slot.M + m)
            vals.append(gt.Z[:, m])
    Z = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(N, lay.q))
    Z.sum_duplicates()
    return Z


# --------------------------------------------------------------------------- the problem
@dataclass(frozen=True, eq=False)
class CrossedLMM:
    """Cross-products of a crossed LMM, split into the blocks of the factorization.

    ``B``: (L1, M1, M1) diagonal blocks of Z1'Z1; ``T``: Z1'Z2 (q1 x q2, sparse CSR);
    ``Z22``: Z2'Z2 (sparse); ``V``: [Z'y, Z'X] (q x (1 + K)); ``XtX``, ``Xty``, ``yty``.
    """

    N: int
    K: int
    REML: bool
    B: np.ndarray
    T: sparse.csr_matrix
    Z22: sparse.csr_matrix
    V: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    layout: CrossedLayout = field(repr=False)
    pairs: "GramPairs | None" = field(default=None, repr=False)

    # ---------------------------------------------------------------- evaluator
    def _first_block(self, lam1: np.ndarray) -> tuple:
        """The largest factor's part at ``lam1`` (M1 x M1, or a stack (P, M1, M1) of them):
        log|A11|, A11^-1 per level, v1 = Lambda1' V1, x1 = A11^-1 v1, and V1' Lambda1 A11^-1 Lambda1' V1."""
        lay = self.layout
        M1, L1 = lay.M1, lay.L1
        lam1T = np.swapaxes(lam1, -1, -2)[..., None, :, :]  # (..., 1, M1, M1)
        if M1 == 1:
            l2 = lam1[..., 0, 0, None] ** 2
            a11 = l2 * self.B[:, 0, 0] + 1.0  # (..., L1)
            logdet1 = np.sum(np.log(a11), axis=-1)
            ainv = (1.0 / a11)[..., None, None]
        else:
            A11 = lam1T @ self.B @ np.swapaxes(lam1T, -1, -2) + np.eye(M1)  # positive definite
            logdet1 = np.sum(np.linalg.slogdet(A11)[1], axis=-1)
            ainv = np.linalg.inv(A11)
        V1 = self.V[:lay.q1].reshape(L1, M1, -1)
        v1 = lam1T @ V1
        x1 = ainv @ v1
        c = V1.shape[-1]
        Q = np.swapaxes(v1.reshape(*v1.shape[:-3], lay.q1, c), -1, -2) @ x1.reshape(*x1.shape[:-3], lay.q1, c)
        return logdet1, ainv, v1, x1, Q

    def _profiled(self, Q: np.ndarray) -> tuple:
        """Fixed effects and r^2 profiled out given the quadratic forms ``Q`` of [y, X]
        ((1 + K) x (1 + K), or a stack): (X'V^-1X, log|X'V^-1X|, beta, r^2)."""
        XtVX = self.XtX - Q[..., 1:, 1:]
        XtVX = (XtVX + np.swapaxes(XtVX, -1, -2)) / 2
        Xty = self.Xty - Q[..., 1:, 0]
        sign, logdetX = np.linalg.slogdet(XtVX)
        if np.any(sign <= 0):
            raise np.linalg.LinAlgError("X' V^-1 X is not positive definite")
        beta = np.linalg.solve(XtVX, Xty[..., None])[..., 0]
        r2 = self.yty - Q[..., 0, 0] - np.sum(Xty * beta, axis=-1)
        return XtVX, logdetX, beta, r2

    def _criterion(self, logdet, r2, logdetX):
        """lme4's profiled deviance / REML criterion from its pieces (scalars or arrays)."""
        n = self.N - self.K if self.REML else self.N
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = logdet + n * (1 + np.log(2 * np.pi * r2 / n)) + (logdetX if self.REML else 0.0)
        return np.where(r2 > 0, dev, np.inf)

    def deviance_batch(self, thetas: np.ndarray) -> np.ndarray:
        """:meth:`deviance` at each row of ``thetas`` in one vectorized pass (one grouping
        factor: q2 = 0), e.g. all the points of a finite-difference gradient."""
        lay = self.layout
        if lay.q2:
            return np.array([self.deviance(t) for t in thetas])
        thetas = np.asarray(thetas, float)
        lam1 = np.zeros((len(thetas), lay.M1, lay.M1))
        slot = lay.slots[0]
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            lam1[:, i, j] = thetas[:, k]
        logdet1, _, _, _, Q = self._first_block(lam1)
        try:
            _, logdetX, _, r2 = self._profiled(Q)
        except np.linalg.LinAlgError:
            return np.array([self.deviance(t) for t in thetas])
        return self._criterion(logdet1, r2, logdetX)

    def factor(self, theta: np.ndarray) -> dict[str, Any]:
        """Blocked factorization of A = Lambda'Z'Z Lambda + I at ``theta`` and the
        profiled quantities: beta, r^2, log|A|, RX'RX (``XtVX``), the solves needed later."""
        lay = self.layout
        theta = np.asarray(theta, float)
        lam1 = lay.term_lambda(lay.slots[0], theta)
        M1, L1 = lay.M1, lay.L1
        logdet1, ainv, v1, x1, Q = self._first_block(lam1)
        logdet1 = float(logdet1)
        q2 = lay.q2
        lam2 = lay.Lambda2(theta)
        if q2 == 0:  # one grouping factor: A is block-diagonal, no Schur complement
            P, CS, logdet = None, np.zeros((0, 0)), logdet1
        else:
            P = np.einsum("ij,ljk,mk->lim", lam1, ainv, lam1)  # Lambda1 A11^-1 Lambda1', per level
            if M1 == 1 and self.pairs is not None:
                TPT = self.pairs.weighted_gram(P[:, 0, 0], q2)
            elif M1 == 1:
                TPT = (self.T.T.multiply(P[:, 0, 0][None, :]) @ self.T)
            else:
                Pm = sparse.block_diag(list(P), format="csr")
                TPT = self.T.T @ Pm @ self.T
            W = self.Z22.toarray()
            W -= TPT.toarray() if sparse.issparse(TPT) else TPT
            if lay.lambda2_diagonal:
                d2 = lam2.diagonal()
                S = W * d2[:, None] * d2[None, :]
            else:
                L2d = lam2.toarray()
                S = L2d.T @ W @ L2d
            S[np.diag_indices(q2)] += 1.0
            CS = sla.cholesky(S, lower=True, check_finite=False)
            logdet = logdet1 + 2 * float(np.sum(np.log(np.diag(CS))))
            g = np.einsum("ij,ljc->lic", lam1, x1).reshape(lay.q1, -1)  # Lambda1 A11^-1 v1
            rhs2 = lam2.T @ (self.V[lay.q1:] - self.T.T @ g)
            y2 = sla.solve_triangular(CS, rhs2, lower=True, check_finite=False)
            Q = Q + y2.T @ y2
        XtVX, logdetX, beta, r2 = self._profiled(Q)
        r2 = float(r2)
        return dict(theta=theta, lam1=lam1, ainv=ainv, P=P, lam2=lam2, CS=CS, logdet=logdet,
                    XtVX=XtVX, logdetX=float(logdetX), beta=beta, r2=r2)

    def deviance(self, theta: np.ndarray) -> float:
        """Profiled deviance (ML) or REML criterion at ``theta`` (lme4's ``devfun``)."""
        try:
            f = self.factor(theta)
        except (np.linalg.LinAlgError, sla.LinAlgError, ValueError):
            return math.inf
        return self._deviance(f)

    def _deviance(self, f: dict) -> float:
        return float(self._criterion(f["logdet"], f["r2"], f["logdetX"]))

    def sigma2(self, f: dict) -> float:
        return f["r2"] / (self.N - self.K if self.REML else self.N)

    # ---------------------------------------------------------------- conditional modes
    def modes(self, f: dict) -> np.ndarray:
        """Conditional modes b = Lambda A^-1 Lambda' Z'(y - X beta) (all q effects)."""
        lay = self.layout
        lam1, lam2, ainv = f["lam1"], f["lam2"], f["ainv"]
        r = self.V[:, 0] - self.V[:, 1:] @ f["beta"]
        v1 = np.einsum("ji,lj->li", lam1, r[:lay.q1].reshape(lay.L1, lay.M1))
        x1 = np.einsum("lij,lj->li", ainv, v1)
        if lay.q2 == 0:
            return np.einsum("ij,lj->li", lam1, x1).reshape(-1)
        g = np.einsum("ij,lj->li", lam1, x1).reshape(-1)
        rhs2 = lam2.T @ (r[lay.q1:] - self.T.T @ g)
        u2 = sla.cho_solve((f["CS"], True), rhs2, check_finite=False)
        # u1 = A11^-1 (v1 - A12 u2), A12 = Lambda1' T Lambda2
        a12u2 = np.einsum("ji,lj->li", lam1, (self.T @ (lam2 @ u2)).reshape(lay.L1, lay.M1))
        u1 = np.einsum("lij,lj->li", ainv, v1 - a12u2)
        b1 = np.einsum("ij,lj->li", lam1, u1).reshape(-1)
        return np.concatenate([b1, lam2 @ u2])

    def solve_spherical(self, f: dict, g: np.ndarray) -> np.ndarray:
        """A^-1 g with A = Lambda'Z'Z Lambda + I factored in ``f`` (blocked substitution)."""
        lay = self.layout
        lam1, lam2, ainv = f["lam1"], f["lam2"], f["ainv"]
        g1 = g[:lay.q1].reshape(lay.L1, lay.M1)
        x1 = np.einsum("lij,lj->li", ainv, g1)
        if lay.q2 == 0:
            return x1.reshape(-1)
        rhs2 = g[lay.q1:] - lam2.T @ (self.T.T @ np.einsum("ij,lj->li", lam1, x1).reshape(-1))
        u2 = sla.cho_solve((f["CS"], True), rhs2, check_finite=False)
        a12u2 = np.einsum("ji,lj->li", lam1, (self.T @ (lam2 @ u2)).reshape(lay.L1, lay.M1))
        u1 = np.einsum("lij,lj->li", ainv, g1 - a12u2)
        return np.concatenate([u1.reshape(-1), u2])

    def mode_covariances(self, f: dict, sigma2: float) -> dict[int, np.ndarray]:
        """Per term, (L, M, M) diagonal blocks of sigma^2 Lambda A^-1 Lambda'."""
        lay = self.layout
        lam1, lam2, ainv, CS = f["lam1"], f["lam2"], f["ainv"], f["CS"]
        L1, M1 = lay.L1, lay.M1
        if lay.q2 == 0:
            return {lay.slots[0].index: sigma2 * np.einsum("ij,ljk,mk->lim", lam1, ainv, lam1)}
        # (A^-1)_11 = A11^-1 + A11^-1 A12 S^-1 A21 A11^-1; F = CS^-1 A21 A11^-1 (q2 x q1)
        A21 = (lam2.T @ self.T.T.tocsr())  # q2 x q1 before Lambda1
        A21 = A21.toarray().reshape(lay.q2, L1, M1)
        A21 = np.einsum("kla,ab->klb", A21, lam1)
        F = np.einsum("klb,lbc->klc", A21, ainv).reshape(lay.q2, lay.q1)
        F = sla.solve_triangular(CS, F, lower=True, check_finite=False).reshape(lay.q2, L1, M1)
        inner = ainv + np.einsum("kla,klb->lab", F, F)
        out = {lay.slots[0].index: sigma2 * np.einsum("ij,ljk,mk->lim", lam1, inner, lam1)}
        Sinv = sla.cho_solve((CS, True), np.eye(lay.q2), check_finite=False)
        cov2 = (lam2 @ sparse.csr_matrix(Sinv) @ lam2.T).toarray() if not lay.lambda2_diagonal else \
            Sinv * lam2.diagonal()[:, None] * lam2.diagonal()[None, :]
        for slot in lay.slots[1:]:
            c0 = slot.col - lay.q1
            blocks = np.empty((slot.L, slot.M, slot.M))
            for lev in range(slot.L):
                s = c0 + lev * slot.M
                blocks[lev] = cov2[s:s + slot.M, s:s + slot.M]
            out[slot.index] = sigma2 * blocks
        return out


#: Largest number of (level, column pair) products kept for :class:`GramPairs` (about 12 bytes each).
MAX_GRAM_PAIRS = 150_000_000


@dataclass(frozen=True, eq=False)
class GramPairs:
    """T' diag(p) T for a fixed sparse T (q1 x q2) and varying weights p, without a sparse
    matrix product per call: every product t_jk t_jm (k <= m) that a row j contributes is
    listed once, sorted by its place in the output, so that the weighted sum is a gather of
    p and one sequential segment sum over ``sum_j nnz_j (nnz_j + 1) / 2`` terms (1e6 for
    InstEval, 5e7 for 1,000,000 rows with 10,000 x 2,000 levels; scipy's general sparse
    product takes 10 s there, a random-access ``bincount`` 8 s)."""

    row: np.ndarray  #: (n_pairs,) row j of each product, sorted by output place
    values: np.ndarray | None  #: t_jk t_jm in the same order, or None when every entry of T is 1
    starts: np.ndarray  #: first product of each distinct output place
    place: np.ndarray  #: flat output index k * q2 + m (k <= m) of each segment
    #: positions in ``T.data`` of the two factors of each product (``entries=True``: T's values vary)
    ia: np.ndarray | None = None
    ib: np.ndarray | None = None

    @classmethod
    def build(cls, T: sparse.csr_matrix, max_pairs: int = MAX_GRAM_PAIRS,
              entries: bool = False) -> "GramPairs | None":
        T = T.tocsr()
        T.sort_indices()
        nnz = np.diff(T.indptr)
        if int(np.sum(nnz * (nnz + 1) // 2)) > max_pairs:
            return None
        q1, q2 = T.shape
        key_t = np.int32 if q2 * q2 < 2 ** 31 else np.int64
        row_t = np.int32 if q1 < 2 ** 31 else np.int64
        ones = bool(np.all(T.data == 1.0))
        keys, rows, vals, ias, ibs = [], [], [], [], []
        for n in np.unique(nnz[nnz > 0]):
            sel = np.flatnonzero(nnz == n)
            pos = T.indptr[sel][:, None] + np.arange(n)[None, :]
            iu, ju = np.triu_indices(n)
            cols = T.indices[pos].astype(key_t)
            keys.append((cols[:, iu] * key_t(q2) + cols[:, ju]).ravel())
            rows.append(np.repeat(sel.astype(row_t), len(iu)))
            if entries:
                ias.append(pos[:, iu].ravel())
                ibs.append(pos[:, ju].ravel())
            if not ones:
                v = T.data[pos]
                vals.append((v[:, iu] * v[:, ju]).ravel())
        key = np.concatenate(keys)
        del keys
        order = np.argsort(key)
        key = key[order]
        row = np.concatenate(rows)[order]
        values = None if ones else np.concatenate(vals)[order]
        ia = np.concatenate(ias)[order] if entries else None
        ib = np.concatenate(ibs)[order] if entries else None
        del order
        starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        return cls(row=row, values=values, starts=starts, place=key[starts].astype(np.int64), ia=ia, ib=ib)

    def weighted_gram(self, p: np.ndarray, q2: int, data: np.ndarray | None = None) -> np.ndarray:
        """Dense T' diag(p) T (q2 x q2); ``data``: T's values now (built with ``entries=True``)."""
        w = p[self.row]
        if data is not None:
            w *= data[self.ia] * data[self.ib]
        elif self.values is not None:
            w *= self.values
        U = np.zeros(q2 * q2)
        U[self.place] = np.add.reduceat(w, self.starts)
        U = U.reshape(q2, q2)
        out = U + U.T
        out[np.diag_indices(q2)] -= np.diag(U)
        return out


def first_block_gram(design: Design, lay: CrossedLayout, w: np.ndarray | None = None) -> np.ndarray:
    """(L1, M1, M1) diagonal blocks of Z1' W Z1 (the largest term's, one per level; W = I by default)."""
    first = design.terms[lay.slots[0].index]
    J1, Z1 = first.J, first.Z
    Zw = Z1 if w is None else Z1 * w[:, None]
    B = np.empty((lay.L1, lay.M1, lay.M1))
    for a in range(lay.M1):
        for b in range(lay.M1):
            B[:, a, b] = np.bincount(J1, Zw[:, a] * Z1[:, b], minlength=lay.L1)
    return B


def crossed_problem(design: Design, lay: CrossedLayout, REML: bool) -> CrossedLMM:
    """Cross-products of the design split into the blocks of :class:`CrossedLMM`."""
    X, y = design.X, design.y
    Z = z_matrix(design, lay)
    ZtZ = (Z.T @ Z).tocsr()
    q1 = lay.q1
    B = first_block_gram(design, lay)
    T = ZtZ[:q1, q1:].tocsr()
    Z22 = ZtZ[q1:, q1:].tocsr()
    V = np.asarray(Z.T @ np.column_stack([y, X]))
    return CrossedLMM(N=design.N, K=X.shape[1], REML=bool(REML), B=B, T=T, Z22=Z22, V=V,
                      XtX=(X.T @ X + (X.T @ X).T) / 2, Xty=X.T @ y, yty=float(y @ y), layout=lay,
                      pairs=GramPairs.build(T) if lay.M1 == 1 and lay.q2 else None)


def blocks_problem(problem: Any, lay: CrossedLayout) -> CrossedLMM:
    """:class:`CrossedLMM` from the stacked/per-group problem's cross-products (``ml_lmm.stan``'s
    data, exact sums that Dask and pandas data give bit for bit), reordered into the blocked layout."""
    cp, slay = problem.crossproducts, problem.layout
    G, qb, K = cp.ZtX.shape
    # blocked index of every (block, column) of the stacked layout
    where = np.empty((G, qb), dtype=np.int64)
    crossed_slot = {s.index: s for s in lay.slots}
    for slot in slay.slots:
        cs = crossed_slot[slot.index]
        m = np.arange(slot.M)
        if slay.layout == "blocks":  # block g = level g; the term's columns slot.col ... + M
            where[:, slot.col + m] = cs.col + np.arange(G)[:, None] * slot.M + m
        else:  # one block: the term's levels one after another
            lev = np.arange(slot.L)
            where[0, (slot.col + lev[:, None] * slot.M + m).ravel()] = (cs.col + lev[:, None] * slot.M + m).ravel()
    rows = np.broadcast_to(where[:, :, None], (G, qb, qb))
    cols = np.broadcast_to(where[:, None, :], (G, qb, qb))
    ZtZ = np.asarray(cp.ZtZ, float)
    nz = ZtZ != 0
    full = sparse.csr_matrix((ZtZ[nz], (rows[nz], cols[nz])), shape=(lay.q, lay.q))
    V = np.empty((lay.q, 1 + K))
    V[where.ravel()] = np.concatenate([cp.Zty[:, :, None], cp.ZtX], axis=2).reshape(G * qb, 1 + K)
    q1, M1, L1 = lay.q1, lay.M1, lay.L1
    # the first block is block-diagonal: scatter its entries into (L1, M1, M1) blocks
    first = full[:q1, :q1].tocoo()
    B = np.zeros((L1, M1, M1))
    np.add.at(B, (first.row // M1, first.row % M1, first.col % M1), first.data)
    T = full[:q1, q1:].tocsr()
    return CrossedLMM(N=problem.N, K=K, REML=problem.REML, B=B, T=T, Z22=full[q1:, q1:].tocsr(), V=V,
                      XtX=np.asarray(cp.XtX, float), Xty=np.asarray(cp.Xty, float), yty=float(cp.yty),
                      layout=lay, pairs=GramPairs.build(T) if M1 == 1 and lay.q2 else None)


# --------------------------------------------------------------------------- Stan program and data
@dataclass(frozen=True)
class StanProgramText:
    """The Stan program that defines a fit evaluated elsewhere: its text, not compiled
    during the fit (``compile()`` compiles it, cached by text, e.g. for :meth:`CrossedMerFit.stan_check`)."""

    code: str
    backend: str = "none (program not compiled during the fit)"
    cache_hit: bool = False
    compile_seconds: float = 0.0

    def compile(self, backend: str = "auto", progress: bool = False):
        from ..backends import get_backend

        return get_backend(backend).compile(self.code, progress=progress)


def crossed_stan_program() -> str:
    """The Stan code of the crossed layout (depends on nothing else).

    >>> "blocked_gaussian_lpdf" in crossed_stan_program()
    True
    """
    return render("ml_lmm_crossed.stan")


def crossed_stan_data(prob: CrossedLMM) -> dict:
    """Data of ``ml_lmm_crossed.stan`` (cross-products in the blocked layout, CSR for sparse parts)."""
    lay = prob.layout
    L1, M1, q1, q2, K = lay.L1, lay.M1, lay.q1, lay.q2, prob.K
    # T grouped by level of the first factor: the union of its M1 rows' columns
    Tc = prob.T.tocoo()
    level = Tc.row // M1
    key = level.astype(np.int64) * q2 + Tc.col
    uniq, inv = np.unique(key, return_inverse=True)
    t_val = np.zeros((len(uniq), M1))
    np.add.at(t_val, (inv, Tc.row % M1), Tc.data)
    t_level, t_col = uniq // q2, uniq % q2
    t_ptr = np.searchsorted(t_level, np.arange(L1 + 1)) + 1
    Z22 = prob.Z22.tocsr()
    Z22.sort_indices()
    sel1 = lay.lam_row <= M1  # the first term's pattern (level 0)
    sel2 = lay.lam_row > q1
    V = prob.V
    return dict(
        N=prob.N, K=K, REML=int(prob.REML), XtX=prob.XtX, Xty=prob.Xty, yty=prob.yty,
        L1=L1, M1=M1, ZtZ1=prob.B, q2=q2,
        n_t=len(uniq), t_ptr=t_ptr.astype(int), t_col=(t_col + 1).astype(int), t_val=t_val,
        n_z22=int(Z22.nnz), z22_w=Z22.data, z22_v=(Z22.indices + 1).astype(int),
        z22_u=(Z22.indptr + 1).astype(int),
        Zty1=V[:q1, 0].reshape(L1, M1), ZtX1=V[:q1, 1:].reshape(L1, M1, K),
        Zty2=V[q1:, 0], ZtX2=V[q1:, 1:],
        n_theta=lay.n_theta,
        n_lam1=int(sel1.sum()), lam1_row=lay.lam_row[sel1], lam1_col=lay.lam_col[sel1],
        lam1_par=lay.lam_par[sel1],
        n_lam2=int(sel2.sum()), lam2_row=lay.lam_row[sel2] - q1, lam2_col=lay.lam_col[sel2] - q1,
        lam2_par=lay.lam_par[sel2], lambda2_diagonal=int(lay.lambda2_diagonal),
    )


# --------------------------------------------------------------------------- optimizer
#: Largest Schur complement for which the evaluator is cheap (well under a millisecond) and the
#: optimizer is L-BFGS-B on central-difference gradients; beyond it, COBYQA (one evaluation per
#: step, but about 5 ms of its own work per step).
MAX_QUICK_Q2 = 300


def lower_bounds(lay: CrossedLayout) -> np.ndarray:
    """lme4's lower bounds on theta: 0 on Lambda's diagonal, none elsewhere."""
    low = np.full(lay.n_theta, -np.inf)
    for slot in lay.slots:
        for (i, j), k in zip(slot.pairs, slot.theta_index):
            if i == j:
                low[k] = 0.0
    return low


def fd_gradient(fun, x: np.ndarray, lower: np.ndarray, f0: float | None = None,
                rel: float = 1e-6, many=None, with_value: bool = False):
    """Central differences of ``fun`` at ``x``, forward where a lower bound is within the step.
    ``many``: evaluates a stack of points at once (else ``fun`` point by point); ``f0``: the
    value at ``x`` when known (else evaluated with the other points); ``with_value``: return
    (value at x, gradient)."""
    h = rel * np.maximum(1.0, np.abs(x))
    forward = x - h < lower
    n = len(x)
    E = np.diag(h)
    points = np.concatenate([x + E, x - E[~forward]] + ([x[None, :]] if f0 is None else []))
    vals = np.asarray(many(points) if many is not None else [fun(p) for p in points], float)
    if f0 is None:
        f0 = vals[-1]
    fp = vals[:n]
    fm = np.full(n, np.nan)
    fm[~forward] = vals[n:n + int(np.sum(~forward))]
    g = np.where(forward, (fp - f0) / h, (fp - fm) / (2 * h))
    return (float(f0), g) if with_value else g


def minimize_bounded(fun, x0: np.ndarray, lower: np.ndarray, *, tol: float, quick: bool,
                     max_evals: int = 5000, many=None) -> tuple[np.ndarray, float, bool, str, np.ndarray]:
    """Minimize ``fun`` subject to ``x >= lower``: returns (x, f, ok, message, projected gradient).

    ``quick`` (cheap evaluations): L-BFGS-B on central-difference gradients. Otherwise COBYQA
    (Powell's derivative-free trust-region method with bounds, a successor of lme4's BOBYQA),
    which needs fewer evaluations but spends milliseconds per step itself. The returned
    gradient (projected on the bounds) is for diagnostics. ``many``: ``fun`` at a stack of
    points in one call (see :func:`fd_gradient`).
    """
    x0 = np.maximum(np.asarray(x0, float), lower)
    upper = np.full(len(x0), np.inf)
    if quick:
        def fg(x):
            if many is not None:  # the value and the differences in one call
                f, g = fd_gradient(fun, x, lower, many=many, with_value=True)
                return (f, g) if np.isfinite(f) and np.all(np.isfinite(g)) else (np.inf, np.zeros_like(x))
            f = fun(x)
            return (f, np.zeros_like(x)) if not np.isfinite(f) else (f, fd_gradient(fun, x, lower, f))

        res = sopt.minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=sopt.Bounds(lower, upper),
                            options={"maxfun": max_evals, "ftol": 1e-12, "gtol": 1e-6,
                                     "maxcor": 20})
    else:
        res = sopt.minimize(fun, x0, method="COBYQA", bounds=sopt.Bounds(lower, upper),
                            options={"initial_tr_radius": 0.2, "final_tr_radius": tol, "maxfev": max_evals})
    x = np.maximum(res.x, lower)
    f0 = float(fun(x))
    g = fd_gradient(fun, x, lower, f0, rel=1e-5, many=many)
    h = 1e-5 * np.maximum(1.0, np.abs(x))
    proj = np.where((x - lower <= h) & (g > 0), 0.0, g)
    ok = bool(np.isfinite(f0) and (res.success or np.max(np.abs(proj)) < 1e-2))
    return x, f0, ok, str(res.message), proj


def _optimize(prob: CrossedLMM, tol: float, start: np.ndarray | None = None
              ) -> tuple[np.ndarray, float, int, bool, str, np.ndarray]:
    """Minimize the profiled deviance over theta (diagonal of Lambda >= 0) from lme4's start
    (identity Lambda) or ``start`` (see :func:`minimize_bounded`)."""
    lay = prob.layout
    lower = lower_bounds(lay)
    x0 = np.where(np.isfinite(lower), 1.0, 0.0) if start is None else np.asarray(start, float)
    count = {"n": 0}

    def fun(x):
        count["n"] += 1
        return prob.deviance(x)

    def many(xs):
        count["n"] += len(xs)
        return prob.deviance_batch(xs)

    x, f0, ok, message, proj = minimize_bounded(fun, x0, lower, tol=tol, quick=lay.q2 <= MAX_QUICK_Q2,
                                                max_evals=2000, many=many)
    return x, f0, count["n"], ok, message, proj


# --------------------------------------------------------------------------- the Stan definition
class PermutedDensity(LogDensity):
    """A Stan log density read with the parameters in another order: ``x_stan = x[order]``
    (the blocked layout orders the terms by levels, the stacked programs by the formula)."""

    def __init__(self, base: LogDensity, order: np.ndarray) -> None:
        self.base, self.order = base, np.asarray(order, int)
        self.n_params = base.n_params

    def log_prob_grad(self, theta: np.ndarray, jacobian: bool = False) -> tuple[float, np.ndarray]:
        lp, g = self.base.log_prob_grad(np.asarray(theta, float)[self.order], jacobian)
        out = np.empty(len(self.order))
        out[self.order] = g
        return lp, out

    def log_prob_grad_many(self, thetas: np.ndarray, jacobian: bool = False) -> tuple[np.ndarray, np.ndarray]:
        lps, gs = self.base.log_prob_grad_many(np.atleast_2d(thetas)[:, self.order], jacobian)
        out = np.empty_like(gs)
        out[:, self.order] = gs
        return lps, out

    def constrain(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return self.base.constrain(np.asarray(theta, float)[self.order])


class StanDefined:
    """What the fits of the numpy evaluators share: the Stan program that defines the model.

    Within the stacked layout (``stacked_problem`` set) that is ``ml_lmm.stan`` /
    ``ml_glmm.stan`` on :func:`~stanhier.ml.problem.lmm_problem`'s or ``glmm_problem``'s data;
    :attr:`density` compiles it on first use (``confint()``, :meth:`stan_check`) and reads it
    with this fit's parameter order (the blocked layout's)."""

    #: (kind, REML, family, nAGQ) of the stacked layout's problem, None beyond that layout
    stacked_args: Any = None
    _density: Any = None

    @cached_property
    def stacked_problem(self):
        """The stacked layout's Stan problem (built on first use), or None beyond that layout."""
        return None if self.stacked_args is None else stacked_problem_of(self.design, *self.stacked_args)

    @property
    def density(self):
        """The Stan program's log density (compiled on first use); None beyond the stacked layout."""
        if self._density is None and self.stacked_problem is not None:
            # the fit's backend argument (a run record of this fit names none: the program did not run)
            backend = self.call.backend if self.call.backend in ("pystan", "cmdstanpy") else "auto"
            compiled = self.model.compile(backend) if isinstance(self.model, StanProgramText) else self.model
            base = compiled.log_density(self.stacked_problem.standata())
            order = self._stan_order()
            self._density = base if np.array_equal(order, np.arange(len(order))) else PermutedDensity(base, order)
        return self._density

    @density.setter
    def density(self, value) -> None:
        self._density = value

    def _stan_order(self) -> np.ndarray:
        """x_stan = x[order]: theta moved from the blocked layout's order to the program's."""
        K, T = self.problem.K, self.problem.n_theta
        stan_slots = {s.index: s for s in self.stacked_problem.layout.slots}
        theta_order = np.empty(T, int)
        for slot in self.layout.slots:
            for k_fit, k_stan in zip(slot.theta_index, stan_slots[slot.index].theta_index):
                theta_order[k_stan] = K + k_fit
        return np.concatenate([np.arange(K), theta_order, np.arange(K + T, self.problem.n_params)])

    def stan_check(self, backend: str = "auto") -> tuple[float, float]:
        """(Stan program's log density, the evaluator's log-likelihood) at the optimum.

        Compiles the program (cached by its text) and evaluates it at (beta, theta, aux);
        the two agree to rounding when both define the same model.
        """
        x = np.concatenate([self.fixef().to_numpy(), self.theta, self.aux])
        compiled = self.model.compile(backend) if isinstance(self.model, StanProgramText) else self.model
        if self.stacked_problem is None:
            return float(compiled.log_density(self.standata()).log_prob(x)), self.logLik()
        base = compiled.log_density(self.stacked_problem.standata())
        return float(base.log_prob(x[self._stan_order()])), self.logLik()

    def standata(self) -> dict:
        """The data of the Stan program that defines this fit (:meth:`stancode`)."""
        if self.stacked_problem is not None:
            return self.stacked_problem.standata()
        return self._blocked_standata()

    def _blocked_standata(self) -> dict:
        raise NotImplementedError

    def evaluator_line(self, lines: list[str]) -> list[str]:
        """The summary's lines with ``Evaluator: ...`` after ``Data:``."""
        at = next((i for i, s in enumerate(lines) if s.startswith("   Data:")), 1)
        lines.insert(at + 1, f"Evaluator: {self.evaluator.split(';')[0]}")
        return lines


def within_stacked(design: Design, kind: str) -> bool:
    """True when the stacked/per-group layout of ``ml_lmm.stan``/``ml_glmm.stan`` holds the design."""
    from .problem import MAX_DENSE_CELLS

    q = sum(gt.n_levels * gt.M for gt in design.terms)
    same = len({gt.term.group for gt in design.terms}) == 1
    return same or not (q > MAX_STACKED_Q or (kind == "glmm" and design.N * q > MAX_DENSE_CELLS))


def stacked_problem_of(design: Design, kind: str, REML: bool = False, family: Family | None = None,
                       nAGQ: int = 1):
    """The stacked layout's Stan problem for a design within it (:func:`within_stacked`)."""
    from .layout import build_layout
    from .problem import glmm_problem, lmm_problem

    lay = build_layout(design)
    return lmm_problem(design, lay, REML) if kind == "lmm" else glmm_problem(design, lay, family, nAGQ)


# --------------------------------------------------------------------------- fit
class CrossedMerFit(StanDefined, MerFit):
    """A :class:`~stanhier.ml.fit.MerFit` whose optimum came from the blocked evaluator.

    Same accessors; conditional modes, their variances and ``vcov`` come from the
    blocked factorization at the optimum (lme4's formulas). ``evaluator`` names what ran;
    :meth:`stan_check` evaluates the Stan program at the optimum.
    """

    evaluator: str = EVALUATOR

    def __init__(self, *, crossed: CrossedLMM, factorization: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crossed = crossed
        self._factorization = factorization

    def refit_response(self, y: np.ndarray) -> np.ndarray | None:
        """The optimum (beta, theta, log sigma) of this model refitted to the response ``y`` on
        this evaluator, started at this fit's theta (parametric bootstrap); None if it fails."""
        import dataclasses

        design = dataclasses.replace(self.design, y=np.asarray(y, float))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = fit_crossed_lmm(self.call, design, start={"theta": self.theta})
        return np.asarray(new.optimum.theta, float) if new.converged else None

    def ml_refit(self) -> "CrossedMerFit":
        """The ML fit of this model (itself for an ML fit), started at this optimum (for profiles)."""
        if not self.REML:
            return self
        import dataclasses

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_crossed_lmm(dataclasses.replace(self.call, REML=False), self.design,
                                   start={"theta": self.theta})

    @property
    def factorization(self) -> dict:
        """The blocked factorization at the optimum (see :meth:`CrossedLMM.factor`)."""
        return self._factorization

    @cached_property
    def _vcov(self) -> np.ndarray:
        self.vcov_method = "sigma^2 (RX' RX)^-1 at the optimum (lme4's formula, blocked factorization)"
        cov = self.residual_variance() * np.linalg.inv(self._factorization["XtVX"])
        return (cov + cov.T) / 2

    @cached_property
    def _modes(self):
        with single_threaded_blas():
            b = self.crossed.modes(self._factorization)[None, :]
            cov = self.crossed.mode_covariances(self._factorization, self.residual_variance())
        return CrossedModes(b=b, cov=cov)

    def _blocked_standata(self) -> dict:
        """The data of the Stan program ``ml_lmm_crossed.stan`` (blocked cross-products)."""
        return crossed_stan_data(self.crossed)

    def summary(self, *args: Any, **kwargs: Any) -> str:
        return "\n".join(self.evaluator_line(super().summary(*args, **kwargs).split("\n")))


@dataclass(frozen=True, eq=False)
class CrossedModes:
    """Conditional modes (all q effects) and per-term conditional covariances."""

    b: np.ndarray  #: (1, q)
    cov: dict  #: slot index -> (L, M, M)


def fit_crossed_lmm(call: MLCall, design: Design, *, tol: float = 1e-6, start: dict | None = None,
                    optimum: np.ndarray | None = None) -> CrossedMerFit:
    """Fit a Gaussian LMM by the blocked evaluator (see module doc): crossed/nested terms, or
    one grouping factor (then A is block-diagonal). ``start``: ``{"theta": [...]}``;
    ``optimum``: a recorded (beta, theta, log sigma), evaluated without optimizing."""
    t0 = time.perf_counter()
    REML = bool(call.REML)
    lay = build_crossed_layout(design)
    stacked = within_stacked(design, "lmm") and not needs_crossed(design)
    if stacked:  # ml_lmm.stan's data (one owner of the cross-products), reordered
        stacked_problem = stacked_problem_of(design, "lmm", REML)
        prob = blocks_problem(stacked_problem, lay)
    else:
        stacked_problem = None
        prob = crossed_problem(design, lay, REML)
    K = prob.K
    with single_threaded_blas():
        if optimum is not None:
            optimum = checked_optimum(optimum, K + lay.n_theta + 1)
            theta = optimum[K:K + lay.n_theta]
            dev, n_evals, message = prob.deviance(theta), 1, "converged"
            grad = fd_gradient(prob.deviance, theta, lower_bounds(lay), dev, rel=1e-5,
                               many=prob.deviance_batch)
            ok = bool(np.isfinite(dev) and np.max(np.abs(np.where(theta <= 1e-5, np.minimum(grad, 0), grad)))
                      < 1e-2)
        else:
            theta, dev, n_evals, ok, message, grad = _optimize(prob, tol, _start_theta(start, lay.n_theta))
        f = prob.factor(theta)
    sigma = math.sqrt(prob.sigma2(f))
    x = optimum if optimum is not None else np.concatenate([f["beta"], theta, [math.log(sigma)]])
    info = OptimumInfo(theta=x, lp=-0.5 * dev, grad=-0.5 * grad, hessian=None, converged=ok,
                       message="converged" if ok else message, n_evals=n_evals, n_starts=1,
                       seconds=time.perf_counter() - t0)
    problem = ProblemSizes(kind="lmm", K=prob.K, n_theta=lay.n_theta, n_aux=1)
    fit = CrossedMerFit(crossed=prob, factorization=f, call=call, design=design,
                        layout=lay, family=get_family("gaussian"), problem=problem,
                        model=StanProgramText(stan_program("lmm") if stacked else crossed_stan_program()),
                        density=None, optimum=info)
    fit.stacked_args = ("lmm", REML) if stacked else None
    fit.evaluator = evaluator_text(lay, "stanhier.ml.crossed", "ml_lmm.stan" if stacked else "ml_lmm_crossed.stan")
    if stacked_problem is not None:
        fit.stacked_problem = stacked_problem  # (a cached property: built once)
    if not ok:
        warnings.warn(f"Model failed to converge: {message} (max |gradient| {np.max(np.abs(grad)):.2g}); "
                      "rescale predictors or simplify the random effects.", StanhierWarning, stacklevel=3)
    if fit.is_singular():
        warnings.warn("boundary (singular) fit: a variance is ~0 or a correlation ~±1 (fit.is_singular())", StanhierWarning, stacklevel=3)
    return fit


def evaluator_text(lay: CrossedLayout, module: str, program: str, what: str = "numpy blocked Cholesky") -> str:
    """``fit.evaluator``: what ran (the summary shows the part before ';') and the program that defines it."""
    how = ("one block per level of the grouping factor" if lay.q2 == 0
           else "diagonal block of the largest factor + dense Schur complement")
    return f"{what}: {how} ({module}); Stan program {program} defines the same log-likelihood"


def checked_optimum(optimum: Any, n: int) -> np.ndarray:
    from ..errors import ArgumentError

    optimum = np.asarray(optimum, float)
    if optimum.shape != (n,):
        raise ArgumentError(f"optimum must have {n} values (beta, theta, auxiliary), not {optimum.size}.")
    return optimum


def _start_theta(start: dict | None, n_theta: int) -> np.ndarray | None:
    """``start={"theta": [...]}`` for the evaluators that profile beta out."""
    from ..errors import ArgumentError

    if not start:
        return None
    unknown = set(start) - {"theta", "beta", "fixef"}
    theta = np.atleast_1d(np.asarray(start.get("theta", np.nan), float))
    if unknown or ("theta" in start and len(theta) != n_theta):
        raise ArgumentError(f"start accepts 'theta' (length {n_theta}) and 'beta'; got {sorted(start)}.")
    return theta if "theta" in start else None


@dataclass(frozen=True, eq=False)
class ProblemSizes:
    """The sizes MerFit reads from a problem (the Stan data are built on demand)."""

    kind: str
    K: int
    n_theta: int
    n_aux: int

    @property
    def n_params(self) -> int:
        return self.K + self.n_theta + self.n_aux


def lmer_crossed(formula: str, data: Any, REML: bool = True, *, na_action: str = "drop",
                 collinear: str = "drop") -> CrossedMerFit:
    """``lmer`` through the blocked evaluator whatever the number of random effects
    (``lmer`` dispatches here by itself beyond the stacked limit)."""
    design = make_design(parse_formula(formula), data, na_action=na_action, collinear=collinear)
    check_gaussian_groups(design)
    if len({gt.term.group for gt in design.terms}) < 2:
        raise DataError(f"lmer_crossed needs random terms in at least two grouping factors; {formula!r} "
                        "has fewer: use lmer().")
    call = MLCall(kind="lmm", formula=formula, REML=bool(REML), na_action=na_action, collinear=collinear,
                  data_name=data_label(data))
    return fit_crossed_lmm(call, design)
