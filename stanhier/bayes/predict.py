"""The prediction engine of Bayesian fits: linear predictor, expected values, new draws.

:class:`Predictor` works on a model (:class:`~stanhier.stan.codegen.ModelSpec`) and its
posterior draws (:class:`~stanhier.stan.names.PosteriorDraws`), not on a fit, so it can
be built before the fit exists (the fit's pointwise log-likelihood uses it) and
:class:`~stanhier.bayes.fit.BrmsFit` only composes it. It computes brms's prediction
family with numpy: draws of the linear predictor (``"linpred"``, optionally with the
inverse link), of the expected response (``"epred"``) and of new observations
(``"predict"``), as full ``(draws, rows)`` arrays, summaries, or row chunks
(:meth:`Predictor.iter_draws`).

The arguments (``re_formula``, ``allow_new_levels``, ``sample_new_levels``, ``ndraws``,
``summary``, ``probs``, ``robust``, ``chunk_size``) are brms's; see :class:`Predictor`.

Example
-------
>>> import numpy as np, pandas as pd
>>> from stanhier.stan.codegen import build_model
>>> from stanhier.stan.names import make_names, PosteriorDraws
>>> spec = build_model("y ~ x", pd.DataFrame({"y": [1.0, 2.0, 4.0], "x": [0.0, 1.0, 2.0]}))
>>> draws = {"b_Intercept": np.array([[1.0, 0.9]]), "b": np.array([[[1.5], [1.4]]]),
...          "sigma": np.array([[0.5, 0.6]])}
>>> engine = Predictor(spec, PosteriorDraws(draws, make_names(spec)))
>>> engine.compute("epred", pd.DataFrame({"x": [2.0]})).round(6).tolist()
[[4.0], [3.7]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from formulaic import model_matrix

from ..errors import ArgumentError, DataError
from ..model.design import as_dataframe
from ..model.formula import formula_variables, no_random_effects, parse_formula
from ..stan.names import PosteriorDraws
from .summary import check_probs, summarise_draws, summary_frame

if TYPE_CHECKING:  # pragma: no cover
    from ..stan.codegen import ModelSpec

__all__ = ["Predictor", "Prepared", "re_selection", "CHUNK_ELEMENTS", "KINDS"]

#: Number of (draw x row) elements processed at once when chunking (about 16 MB per array).
CHUNK_ELEMENTS: int = 2_000_000

_NEW_LEVEL_METHODS = ("uncertainty", "gaussian", "old_levels")
Kind = Literal["linpred", "epred", "predict"]
KINDS: tuple[str, ...] = ("linpred", "epred", "predict")


# --------------------------------------------------------------------------- re_formula


def re_selection(design: Any, re_formula: Any) -> dict[int, np.ndarray]:
    """Which random terms (and which of their coefficients) ``re_formula`` keeps.

    Returns ``{term index: boolean mask over the term's coefficients}``; ``None`` keeps
    every term, ``"NA"``/``"~0"``/NaN none, and ``"~ (1 | g)"`` only the intercept of
    the terms grouped by ``g`` (brms's semantics).

    >>> from stanhier.model.design import make_design
    >>> from stanhier.model.formula import parse_formula
    >>> df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 1], "g": list("aabb")})
    >>> d = make_design(parse_formula("y ~ x + (x | g)"), df)
    >>> re_selection(d, "~ (1 | g)"), re_selection(d, "NA")
    ({0: array([ True, False])}, {})
    """
    terms = design.terms
    if re_formula is None:
        return {k: np.ones(gt.M, bool) for k, gt in enumerate(terms)}
    if no_random_effects(re_formula):
        return {}
    if not isinstance(re_formula, str):
        raise ArgumentError(
            f"re_formula must be None (all group-level terms), 'NA' (none) or a formula string "
            f"such as '~ (1 | g)', not {type(re_formula).__name__}."
        )
    text = re_formula.strip()
    if not text.startswith("~"):
        text = "~ " + text
    try:
        parsed = parse_formula("y__ " + text)
    except Exception as exc:
        raise ArgumentError(f"re_formula {re_formula!r} does not parse: {exc}") from None
    if not parsed.random:
        return {}
    out: dict[int, np.ndarray] = {}
    known = {gt.term.group for gt in terms}
    for rt in parsed.random:
        if rt.group not in known:
            raise ArgumentError(
                f"re_formula {re_formula!r} names grouping factor {':'.join(rt.group)!r}, which is not "
                f"in the model (grouping factors: {', '.join(':'.join(g) for g in known)})."
            )
        try:
            cols = list(model_matrix(rt.expr, design.data,
                                     na_action="ignore").model_spec.column_names)
        except Exception as exc:
            raise ArgumentError(f"Cannot read term {rt.text!r} of re_formula: {exc}") from None
        matched = False
        for k, gt in enumerate(terms):
            if gt.term.group != rt.group:
                continue
            mask = np.array([c in cols for c in gt.coef_formulaic])
            if mask.any():
                out[k] = out.get(k, np.zeros(gt.M, bool)) | mask
                matched = True
        if not matched:
            raise ArgumentError(
                f"Term {rt.text!r} of re_formula has no coefficient that the model's terms for "
                f"{rt.group_name!r} have; use a subset of the model's group-level terms."
            )
    return out


# --------------------------------------------------------------------------- preparation
@dataclass(eq=False)
class Prepared:
    """Everything needed to compute predictions for a set of rows, chunk by chunk."""

    X: np.ndarray  #: (N, K)
    Z: list[np.ndarray]  #: per term (N, M), masked by re_formula
    J: list[np.ndarray]  #: per term (N,), -1: no (old-level) effect
    J_new: list[np.ndarray]  #: per term (N,), index into r_new[k] or -1
    trials: np.ndarray | None
    beta: np.ndarray  #: (S, K)
    r: list[np.ndarray | None]  #: per term (S, L, M) or None when not used
    r_new: list[np.ndarray | None]  #: per term (S, n_new, M) or None
    aux: dict[str, np.ndarray]  #: (S,) each
    draw_ids: np.ndarray  #: 0-based draw indices used (chains concatenated)
    index: pd.Index

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def S(self) -> int:
        return self.beta.shape[0]

    def eta(self, rows: slice) -> np.ndarray:
        """(S, n) linear predictor for ``rows``."""
        eta = self.beta @ self.X[rows].T
        for k, r in enumerate(self.r):
            if r is None:
                continue
            Z, J = self.Z[k][rows], self.J[k][rows]
            old = np.flatnonzero(J >= 0)
            if old.size:
                eta[:, old] += np.einsum("snm,nm->sn", r[:, J[old], :], Z[old])
            rn = self.r_new[k]
            if rn is not None:
                Jn = self.J_new[k][rows]
                new = np.flatnonzero(Jn >= 0)
                if new.size:
                    eta[:, new] += np.einsum("snm,nm->sn", rn[:, Jn[new], :], Z[new])
        return eta


def _draw_ids(total: int, ndraws: int | None, draw_ids: Sequence[int] | None,
              rng: np.random.Generator) -> np.ndarray:
    if draw_ids is not None:
        ids = np.asarray(draw_ids, dtype=int).ravel()
        if ids.size == 0 or ids.min() < 0 or ids.max() >= total:
            raise ArgumentError(f"draw_ids must be 0-based indices below the number of draws ({total}).")
        return ids
    if ndraws is None:
        return np.arange(total)
    if not isinstance(ndraws, (int, np.integer)) or ndraws < 1:
        raise ArgumentError(f"ndraws must be a positive integer, not {ndraws!r}.")
    if ndraws > total:
        raise ArgumentError(f"ndraws={ndraws} is more than the {total} posterior draws of the fit.")
    return np.sort(rng.choice(total, size=int(ndraws), replace=False))


def _cor_matrices(cor: np.ndarray, M: int) -> np.ndarray:
    """(S, M(M-1)/2) correlations in brms's order -> (S, M, M) matrices."""
    S = cor.shape[0]
    C = np.broadcast_to(np.eye(M), (S, M, M)).copy()
    idx = 0
    for j2 in range(M):
        for j1 in range(j2):
            C[:, j1, j2] = C[:, j2, j1] = cor[:, idx]
            idx += 1
    return C


def _check_missing(df: pd.DataFrame, columns: Sequence[str]) -> None:
    for c in columns:
        if c in df.columns and df[c].isna().any():
            n = int(df[c].isna().sum())
            raise DataError(
                f"newdata column {c!r} has {n} missing value(s): predictions need complete rows; "
                "drop or impute them first."
            )



# --------------------------------------------------------------------------- the engine
class Predictor:
    """brms's predictions from a model ``spec`` and its posterior ``draws``.

    Arguments follow brms: ``newdata`` (``None``: the model's data), ``re_formula``
    (``None``: every group-level term; ``"NA"``, ``"~0"`` or ``float("nan")``: population
    level only, see :func:`~stanhier.model.formula.no_random_effects`; a formula such as
    ``"~ (1 | Subject)"``: only the terms, and within a term only the coefficients, it
    names), ``allow_new_levels``, ``sample_new_levels`` (``"uncertainty"``, brms's
    default; ``"gaussian"``; ``"old_levels"``), ``ndraws``, ``draw_ids``, ``summary``,
    ``probs``, ``robust``.

    Memory: summaries (``summary=True``) are computed chunk by chunk over rows, so memory
    stays at ``O(draws x chunk_size)`` plus the result table, whatever the number of rows
    (1,000,000 rows x 4,000 draws would be 32 GB as one array).
    """

    def __init__(self, spec: "ModelSpec", draws: PosteriorDraws) -> None:
        self.spec = spec
        self.draws = draws

    # ------------------------------------------------------------------ preparation
    def _new_level_effects(self, k: int, r: np.ndarray, n_new: int, ids: np.ndarray, method: str,
                           rng: np.random.Generator, shared: dict[tuple, np.ndarray]) -> np.ndarray:
        """(S, n_new, M) group-level effects of new levels for term ``k``."""
        S, L, M = r.shape
        gt = self.spec.design.terms[k]
        if method == "uncertainty":
            # each draw: a randomly chosen existing level per new level (brms), shared within a factor
            key = ("u", gt.term.group, n_new)
            if key not in shared:
                shared[key] = rng.integers(L, size=(S, n_new))
            return np.take_along_axis(r, shared[key][:, :, None], axis=1)
        if method == "old_levels":
            key = ("o", gt.term.group, n_new)
            if key not in shared:
                shared[key] = rng.integers(L, size=n_new)
            return r[:, shared[key], :]
        # gaussian: N(0, Sigma) with this draw's sd and correlation
        sd = self.draws.sds(k, ids)
        z = rng.standard_normal((S, n_new, M))
        cor = self.draws.cors(k, ids)
        if cor is not None:
            Lc = np.linalg.cholesky(_cor_matrices(cor, M) + 1e-12 * np.eye(M))
            return np.einsum("sm,smj,snj->snm", sd, Lc, z)
        return z * sd[:, None, :]

    def prepare(self, newdata: Any = None, *, re_formula: Any = None, allow_new_levels: bool = False,
                sample_new_levels: str = "uncertainty", ndraws: int | None = None,
                draw_ids: Sequence[int] | None = None, need_trials: bool = False,
                rng: np.random.Generator | None = None) -> Prepared:
        """Encode ``newdata`` with the model's formula state and select the draws to use."""
        if sample_new_levels not in _NEW_LEVEL_METHODS:
            raise ArgumentError(
                f"sample_new_levels must be one of {', '.join(map(repr, _NEW_LEVEL_METHODS))}, "
                f"not {sample_new_levels!r}."
            )
        rng = rng if rng is not None else np.random.default_rng()
        spec, d = self.spec, self.spec.design
        sel = re_selection(d, re_formula)
        ids = _draw_ids(self.draws.n_draws, ndraws, draw_ids, rng)
        beta = self.draws.fixed(ids)

        if newdata is None:
            X = d.X
            Zs = [gt.Z * sel[k] if k in sel else gt.Z[:, :0] for k, gt in enumerate(d.terms)]
            Js = [gt.J if k in sel else np.full(d.N, -1) for k, gt in enumerate(d.terms)]
            Jn = [np.full(d.N, -1) for _ in d.terms]
            n_new = [0 for _ in d.terms]
            trials = d.trials
            index: pd.Index = pd.RangeIndex(d.N)
        else:
            df = as_dataframe(newdata)
            needed = formula_variables(d.formula.fixed)
            for k in sel:
                needed += formula_variables(d.terms[k].term.expr) + list(d.terms[k].term.group)
            _check_missing(df, list(dict.fromkeys(needed)))
            nd = d.new_data(df, re_terms=tuple(sorted(sel)), allow_new_levels=allow_new_levels)
            X = nd.X
            Zs = [nd.Z[k] * sel[k] if k in sel else nd.Z[k][:, :0] for k in range(len(d.terms))]
            Js = list(nd.J)
            Jn = list(nd.J_new)
            n_new = [len(v) for v in nd.new_levels]
            trials = nd.trials
            index = df.index
        if X.shape[1] != beta.shape[1]:  # pragma: no cover - formulaic guarantees the columns
            raise DataError(f"newdata encodes to {X.shape[1]} population-level columns, the fit has {beta.shape[1]}.")
        if need_trials and spec.family.uses_trials and trials is None:
            col = d.formula.response.column2
            raise DataError(
                f"newdata needs the number of trials (column {col!r}) to predict binomial responses; "
                "add it, or use posterior_linpred for the success probability."
            )

        r: list[np.ndarray | None] = []
        r_new: list[np.ndarray | None] = []
        shared: dict[tuple, np.ndarray] = {}
        for k in range(len(d.terms)):
            if k not in sel:
                r.append(None)
                r_new.append(None)
                continue
            rk = self.draws.group_effects(k, ids)
            r.append(rk)
            r_new.append(self._new_level_effects(k, rk, n_new[k], ids, sample_new_levels, rng, shared)
                         if n_new[k] else None)
        aux = {a: self.draws.aux(a, ids) for a in spec.family.aux}
        return Prepared(X=X, Z=Zs, J=Js, J_new=Jn, trials=trials, beta=beta, r=r, r_new=r_new, aux=aux,
                        draw_ids=ids, index=index)

    def iter_prepared(self, prep: Prepared, kind: str = "epred", transform: bool = False,
                      chunk_size: int | None = None,
                      rng: np.random.Generator | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, (S, len(rows)) draws of kind)`` for the rows of ``prep``, chunk by chunk."""
        if chunk_size is None:
            chunk_size = max(1, CHUNK_ELEMENTS // max(prep.S, 1))
        elif not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ArgumentError(f"chunk_size must be a positive integer (rows per chunk), not {chunk_size!r}.")
        rng = rng if rng is not None else np.random.default_rng()
        fam = self.spec.family
        aux = {a: v[:, None] for a, v in prep.aux.items()}
        for start in range(0, prep.N, int(chunk_size)):
            rows = slice(start, min(start + int(chunk_size), prep.N))
            eta = prep.eta(rows)
            tr = None if prep.trials is None else prep.trials[rows][None, :]
            if kind == "linpred":
                out = fam.inverse_link(eta) if transform else eta
            elif kind == "epred":
                out = fam.mean(eta, aux, tr)
            else:
                out = fam.rng(eta, aux, rng, tr)
            yield rows, out

    # ------------------------------------------------------------------ results
    def iter_draws(self, kind: Kind = "epred", newdata: Any = None, *, re_formula: Any = None,
                   allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                   ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                   transform: bool = False, chunk_size: int | None = None,
                   seed: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, draws)`` chunks: ``draws`` is the ``(S, len(rows))`` array of ``kind``."""
        if kind not in KINDS:
            raise ArgumentError(f"kind must be 'linpred', 'epred' or 'predict', not {kind!r}.")
        rng = np.random.default_rng(seed)
        prep = self.prepare(newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                            sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                            need_trials=kind != "linpred", rng=rng)
        yield from self.iter_prepared(prep, kind, transform, chunk_size, rng)

    def compute(self, kind: Kind, newdata: Any = None, *, re_formula: Any = None,
                allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                transform: bool = False, summary: bool = False, probs: Sequence[float] = (0.025, 0.975),
                robust: bool = False, chunk_size: int | None = None,
                seed: int | None = None) -> np.ndarray | pd.DataFrame:
        """The ``(draws, rows)`` array of ``kind``, or (``summary=True``) its summary table."""
        if kind not in KINDS:
            raise ArgumentError(f"kind must be 'linpred', 'epred' or 'predict', not {kind!r}.")
        probs = check_probs(probs)
        rng = np.random.default_rng(seed)
        prep = self.prepare(newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                            sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                            need_trials=kind != "linpred", rng=rng)
        if summary:
            out = np.empty((prep.N, 2 + len(probs)))
            for rows, block in self.iter_prepared(prep, kind, transform, chunk_size, rng):
                out[rows] = summarise_draws(block, probs, robust)
            return summary_frame(out, probs, prep.index)
        full = np.empty((prep.S, prep.N))
        for rows, block in self.iter_prepared(prep, kind, transform, chunk_size, rng):
            full[:, rows] = block
        return full

    def log_lik(self) -> np.ndarray:
        """(chain, draw, N) pointwise log-likelihood of the model's data."""
        d = self.spec.design
        prep = self.prepare()
        eta = prep.eta(slice(None))  # (S, N): every group-level term, all draws
        aux = {k: v[:, None] for k, v in prep.aux.items()}
        ll = self.spec.family.loglik(d.y[None, :], eta, aux, None if d.trials is None else d.trials[None, :])
        chains, per_chain = self.draws.shape
        return ll.reshape(chains, per_chain, d.N)
