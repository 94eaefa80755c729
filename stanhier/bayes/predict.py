"""Post-estimation for Bayesian fits: prediction, model checking and comparison.

:class:`BayesPostestimation` is mixed into :class:`stanhier.fit.BrmsFit`. It adds brms's
prediction family, computed with numpy from the posterior draws:

* :meth:`~BayesPostestimation.posterior_linpred` - draws of the linear predictor
  (``transform=True``: inverse link applied);
* :meth:`~BayesPostestimation.posterior_epred` / :meth:`~BayesPostestimation.fitted` -
  draws / summaries of the expected value of the response;
* :meth:`~BayesPostestimation.posterior_predict` / :meth:`~BayesPostestimation.predict` -
  draws / summaries of new observations;
* :meth:`~BayesPostestimation.iter_draws` - the same draws as a generator of row chunks,
  for new data too large to hold ``draws x rows`` in memory;

and thin wrappers around :mod:`stanhier.compare` (``loo``, ``waic``, ``bayes_R2``,
``hypothesis``) and :mod:`stanhier.plots` (``plot``, ``pp_check``,
``conditional_effects``, ``plot_ranef``).

Arguments follow brms: ``newdata`` (``None``: the fit's data), ``re_formula``
(``None``: every group-level term; ``"NA"``, ``"~0"`` or ``float("nan")``: population
level only; a formula such as ``"~ (1 | Subject)"``: only the terms, and within a term
only the coefficients, it names), ``allow_new_levels``, ``sample_new_levels``
(``"uncertainty"``, brms's default; ``"gaussian"``; ``"old_levels"``), ``ndraws``,
``summary``, ``probs``, ``robust``.

Memory: summaries (``summary=True``) are computed chunk by chunk over rows, so memory
stays at ``O(draws x chunk_size)`` plus the result table, whatever the number of rows
(1,000,000 rows x 4,000 draws would be 32 GB as one array). ``summary=False`` returns
the full ``(draws, rows)`` array: use ``ndraws=`` or :meth:`iter_draws` for large data.

Example
-------
>>> fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep)          # doctest: +SKIP
>>> fit.fitted(newdata=pd.DataFrame({"Days": [0, 5]}), re_formula="NA")      # doctest: +SKIP
     Estimate  Est.Error        Q2.5       Q97.5
0  251.40...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from .fit import BrmsFit

__all__ = ["BayesPostestimation", "Prepared", "prepare", "re_selection", "summarise_draws",
           "quantile_names", "CHUNK_ELEMENTS"]

#: Number of (draw x row) elements processed at once when chunking (about 16 MB per array).
CHUNK_ELEMENTS: int = 2_000_000

_NEW_LEVEL_METHODS = ("uncertainty", "gaussian", "old_levels")
Kind = Literal["linpred", "epred", "predict"]


# --------------------------------------------------------------------------- re_formula
def _is_na(re_formula: Any) -> bool:
    if re_formula is None:
        return False
    if isinstance(re_formula, float) and math.isnan(re_formula):
        return True
    if re_formula is pd.NA:
        return True
    if isinstance(re_formula, str):
        text = re_formula.replace(" ", "")
        return text in ("NA", "~0", "0", "~NA", "~-1", "")
    return False


def re_selection(design: Any, re_formula: Any) -> dict[int, np.ndarray]:
    """Which random terms (and which of their coefficients) ``re_formula`` keeps.

    Returns ``{term index: boolean mask over the term's coefficients}``; ``None`` keeps
    every term, ``"NA"``/``"~0"``/NaN none, and ``"~ (1 | g)"`` only the intercept of
    the terms grouped by ``g`` (brms's semantics).

    >>> re_selection(fit.spec.design, "~ (1 | Subject)")                   # doctest: +SKIP
    {0: array([ True, False])}
    """
    terms = design.terms
    if re_formula is None:
        return {k: np.ones(gt.M, bool) for k, gt in enumerate(terms)}
    if _is_na(re_formula):
        return {}
    if not isinstance(re_formula, str):
        raise ArgumentError(
            f"re_formula must be None (all group-level terms), 'NA' (none) or a formula string "
            f"such as '~ (1 | g)', not {type(re_formula).__name__}."
        )
    from formulaic import model_matrix

    from ..model.formula import parse_formula

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


def _flat(arr: np.ndarray) -> np.ndarray:
    """(chain, draw, ...) -> (chain*draw, ...)."""
    return arr.reshape((-1,) + arr.shape[2:])


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


def _new_level_effects(fit: "BrmsFit", k: int, r: np.ndarray, n_new: int, ids: np.ndarray,
                       method: str, rng: np.random.Generator,
                       shared: dict[tuple, np.ndarray]) -> np.ndarray:
    """(S, n_new, M) group-level effects of new levels for term ``k``."""
    S, L, M = r.shape
    gt = fit.spec.design.terms[k]
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
    sd = _flat(fit.raw.draws[f"sd_{k + 1}"])[ids].reshape(S, M)
    z = rng.standard_normal((S, n_new, M))
    if gt.correlated and f"cor_{k + 1}" in fit.raw.draws:
        C = _cor_matrices(_flat(fit.raw.draws[f"cor_{k + 1}"])[ids].reshape(S, -1), M)
        Lc = np.linalg.cholesky(C + 1e-12 * np.eye(M))
        return np.einsum("sm,smj,snj->snm", sd, Lc, z)
    return z * sd[:, None, :]


def _check_missing(df: pd.DataFrame, columns: Sequence[str]) -> None:
    for c in columns:
        if c in df.columns and df[c].isna().any():
            n = int(df[c].isna().sum())
            raise DataError(
                f"newdata column {c!r} has {n} missing value(s): predictions need complete rows; "
                "drop or impute them first."
            )


def prepare(fit: "BrmsFit", newdata: Any = None, *, re_formula: Any = None,
            allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
            ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
            seed: int | np.random.Generator | None = None, need_trials: bool = False,
            rng: np.random.Generator | None = None) -> Prepared:
    """Encode ``newdata`` with the fit's formula state and select the draws to use."""
    from ..model.design import _formula_variables, as_dataframe

    if sample_new_levels not in _NEW_LEVEL_METHODS:
        raise ArgumentError(
            f"sample_new_levels must be one of {', '.join(map(repr, _NEW_LEVEL_METHODS))}, "
            f"not {sample_new_levels!r}."
        )
    rng = rng if rng is not None else np.random.default_rng(seed)
    d = fit.spec.design
    sel = re_selection(d, re_formula)
    total = fit.raw.draws["lprior"].size if "lprior" in fit.raw.draws else fit._fixed_draws().shape[0]
    ids = _draw_ids(total, ndraws, draw_ids, rng)
    beta = fit._fixed_draws()[ids]

    if newdata is None:
        X = d.X
        Zs = [gt.Z * sel[k] if k in sel else gt.Z[:, :0] for k, gt in enumerate(d.terms)]
        Js = [gt.J if k in sel else np.full(d.N, -1) for k, gt in enumerate(d.terms)]
        Jn = [np.full(d.N, -1) for _ in d.terms]
        n_new = [0 for _ in d.terms]
        trials = d.trials
        index = pd.RangeIndex(d.N)
    else:
        df = as_dataframe(newdata)
        needed = _formula_variables(d.formula.fixed)
        for k in sel:
            needed += _formula_variables(d.terms[k].term.expr) + list(d.terms[k].term.group)
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
    if need_trials and fit.spec.family.uses_trials and trials is None:
        col = d.formula.response.column2
        raise DataError(
            f"newdata needs the number of trials (column {col!r}) to predict binomial responses; "
            "add it, or use posterior_linpred for the success probability."
        )

    r: list[np.ndarray | None] = []
    r_new: list[np.ndarray | None] = []
    shared: dict[tuple, np.ndarray] = {}
    for k, gt in enumerate(d.terms):
        if k not in sel:
            r.append(None)
            r_new.append(None)
            continue
        rk = _flat(fit.raw.draws[f"r_{k + 1}"])[ids]
        r.append(rk)
        r_new.append(_new_level_effects(fit, k, rk, n_new[k], ids, sample_new_levels, rng, shared)
                     if n_new[k] else None)
    aux = {a: _flat(fit.raw.draws[a]).reshape(-1)[ids] for a in fit.spec.family.aux}
    return Prepared(X=X, Z=Zs, J=Js, J_new=Jn, trials=trials, beta=beta, r=r, r_new=r_new, aux=aux,
                    draw_ids=ids, index=index)


# --------------------------------------------------------------------------- summaries
def quantile_names(probs: Sequence[float]) -> list[str]:
    """brms's quantile column names: ``Q2.5``, ``Q97.5``.

    >>> quantile_names([0.025, 0.5, 0.975])
    ['Q2.5', 'Q50', 'Q97.5']
    """
    return [f"Q{100 * p:g}" for p in probs]


def _check_probs(probs: Sequence[float]) -> list[float]:
    out = [float(p) for p in probs]
    if not out or any(not (0 <= p <= 1) for p in out):
        raise ArgumentError(f"probs must be probabilities in [0, 1], not {list(probs)!r}.")
    return out


def summarise_draws(draws: np.ndarray, probs: Sequence[float] = (0.025, 0.975),
                    robust: bool = False) -> np.ndarray:
    """(S, n) draws -> (n, 2 + len(probs)): Estimate, Est.Error, quantiles (brms's ``posterior_summary``).

    ``robust=True`` uses the median and the MAD (scaled by 1.4826) as brms.

    >>> summarise_draws(np.array([[0.0], [1.0], [2.0]]), probs=[0.5]).round(2).tolist()
    [[1.0, 1.0, 1.0]]
    """
    if robust:
        est = np.median(draws, axis=0)
        err = 1.4826 * np.median(np.abs(draws - est), axis=0)
    else:
        est = draws.mean(axis=0)
        err = draws.std(axis=0, ddof=1) if draws.shape[0] > 1 else np.full(draws.shape[1], np.nan)
    q = np.quantile(draws, probs, axis=0)
    return np.column_stack([est, err, *q])


def _summary_frame(values: np.ndarray, probs: Sequence[float], index: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(values, columns=["Estimate", "Est.Error", *quantile_names(probs)], index=index)


# --------------------------------------------------------------------------- the mixin
class BayesPostestimation:
    """Methods mixed into :class:`~stanhier.fit.BrmsFit`: prediction, checking, comparison, plots.

    >>> fit.posterior_epred(re_formula="NA").shape                          # doctest: +SKIP
    (4000, 180)
    """

    # ------------------------------------------------------------------ engine
    def iter_draws(self: Any, kind: Kind = "epred", newdata: Any = None, *, re_formula: Any = None,
                   allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                   ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                   transform: bool = False, chunk_size: int | None = None,
                   seed: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, draws)`` chunks: ``draws`` is the ``(S, len(rows))`` array of ``kind``.

        ``kind``: ``"linpred"`` (``transform=True`` applies the inverse link), ``"epred"``
        or ``"predict"``. Only one chunk is in memory at a time (``chunk_size`` rows, by
        default about ``CHUNK_ELEMENTS / draws``), so any number of rows can be processed:
        write each chunk to disk, or reduce it, before asking for the next.

        >>> for rows, d in fit.iter_draws("predict", big, chunk_size=10_000):  # doctest: +SKIP
        ...     np.save(f"pp_{rows.start}.npy", d)
        """
        if kind not in ("linpred", "epred", "predict"):
            raise ArgumentError(f"kind must be 'linpred', 'epred' or 'predict', not {kind!r}.")
        rng = np.random.default_rng(seed)
        prep = prepare(self, newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                       sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                       need_trials=kind != "linpred", rng=rng)
        yield from _iter_prepared(self, prep, kind, transform, chunk_size, rng)

    def _compute(self: Any, kind: Kind, newdata: Any, *, re_formula: Any, allow_new_levels: bool,
                 sample_new_levels: str, ndraws: int | None, draw_ids: Sequence[int] | None,
                 transform: bool, summary: bool, probs: Sequence[float], robust: bool,
                 chunk_size: int | None, seed: int | None) -> np.ndarray | pd.DataFrame:
        probs = _check_probs(probs)
        rng = np.random.default_rng(seed)
        prep = prepare(self, newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                       sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                       need_trials=kind != "linpred", rng=rng)
        if summary:
            out = np.empty((prep.N, 2 + len(probs)))
            for rows, block in _iter_prepared(self, prep, kind, transform, chunk_size, rng):
                out[rows] = summarise_draws(block, probs, robust)
            return _summary_frame(out, probs, prep.index)
        full = np.empty((prep.S, prep.N))
        for rows, block in _iter_prepared(self, prep, kind, transform, chunk_size, rng):
            full[:, rows] = block
        return full

    # ------------------------------------------------------------------ brms's API
    def posterior_linpred(self, newdata: Any = None, *, re_formula: Any = None, transform: bool = False,
                          allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                          ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                          summary: bool = False, probs: Sequence[float] = (0.025, 0.975),
                          robust: bool = False, chunk_size: int | None = None,
                          seed: int | None = None) -> np.ndarray | pd.DataFrame:
        """Draws of the linear predictor, ``(draws, rows)`` (brms's ``posterior_linpred``).

        ``transform=True`` applies the inverse link. ``summary=True`` returns a DataFrame
        (Estimate, Est.Error, Q2.5, Q97.5) computed chunk by chunk.

        >>> fit.posterior_linpred(re_formula="NA").shape                    # doctest: +SKIP
        (4000, 180)
        """
        return self._compute("linpred", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                             sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                             transform=transform, summary=summary, probs=probs, robust=robust,
                             chunk_size=chunk_size, seed=seed)

    def posterior_epred(self, newdata: Any = None, *, re_formula: Any = None,
                        allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                        ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                        summary: bool = False, probs: Sequence[float] = (0.025, 0.975),
                        robust: bool = False, chunk_size: int | None = None,
                        seed: int | None = None) -> np.ndarray | pd.DataFrame:
        """Draws of the expected response ``E[y]``, ``(draws, rows)`` (brms's ``posterior_epred``).

        Binomial: expected successes (probability x trials, so newdata needs the trials).

        >>> fit.posterior_epred(newdata=pd.DataFrame({"Days": [0, 9], "Subject": [308, 308]})).shape  # doctest: +SKIP
        (4000, 2)
        """
        return self._compute("epred", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                             sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                             transform=False, summary=summary, probs=probs, robust=robust,
                             chunk_size=chunk_size, seed=seed)

    def posterior_predict(self, newdata: Any = None, *, re_formula: Any = None,
                          allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                          ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                          summary: bool = False, probs: Sequence[float] = (0.025, 0.975),
                          robust: bool = False, chunk_size: int | None = None,
                          seed: int | None = None) -> np.ndarray | pd.DataFrame:
        """Draws of new observations, ``(draws, rows)`` (brms's ``posterior_predict``).

        For large ``newdata`` use ``summary=True`` (chunked, bounded memory), ``ndraws=``,
        or :meth:`iter_draws` with ``kind="predict"``.

        >>> yrep = fit.posterior_predict(ndraws=100, seed=1)                 # doctest: +SKIP
        """
        return self._compute("predict", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                             sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                             transform=False, summary=summary, probs=probs, robust=robust,
                             chunk_size=chunk_size, seed=seed)

    def fitted(self, newdata: Any = None, *, re_formula: Any = None, scale: str = "response",
               allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
               ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
               summary: bool = True, probs: Sequence[float] = (0.025, 0.975), robust: bool = False,
               chunk_size: int | None = None, seed: int | None = None) -> np.ndarray | pd.DataFrame:
        """Summaries of :meth:`posterior_epred` (``scale="linear"``: of the linear predictor).

        Columns Estimate, Est.Error, Q2.5, Q97.5, one row per row of ``newdata``;
        ``summary=False`` gives the ``(draws, rows)`` array. Rows are processed in chunks.

        >>> fit.fitted(newdata=pd.DataFrame({"Days": [0, 5]}), re_formula="NA")  # doctest: +SKIP
        """
        if scale not in ("response", "linear"):
            raise ArgumentError(f"scale must be 'response' or 'linear', not {scale!r}.")
        kind: Kind = "epred" if scale == "response" else "linpred"
        return self._compute(kind, newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                             sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                             transform=False, summary=summary, probs=probs, robust=robust,
                             chunk_size=chunk_size, seed=seed)

    def predict(self, newdata: Any = None, *, re_formula: Any = None,
                allow_new_levels: bool = False, sample_new_levels: str = "uncertainty",
                ndraws: int | None = None, draw_ids: Sequence[int] | None = None,
                summary: bool = True, probs: Sequence[float] = (0.025, 0.975), robust: bool = False,
                chunk_size: int | None = None, seed: int | None = None) -> np.ndarray | pd.DataFrame:
        """Summaries of :meth:`posterior_predict` (brms's ``predict``), chunked over rows.

        Memory is ``O(draws x chunk_size)``: 1,000,000 rows x 4,000 draws need a few
        hundred MB, not the 32 GB of the full array.

        >>> fit.predict(newdata=pd.DataFrame({"Days": [3], "Subject": ["new"]}),
        ...             allow_new_levels=True)                              # doctest: +SKIP
        """
        return self._compute("predict", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                             sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                             transform=False, summary=summary, probs=probs, robust=robust,
                             chunk_size=chunk_size, seed=seed)

    # ------------------------------------------------------------------ comparison (compare.py)
    def loo(self, **kwargs: Any):
        """PSIS-LOO (ArviZ ``ELPDData``); Pareto-k problems are warned about. See :func:`stanhier.compare.loo`."""
        from .compare import loo

        return loo(self, **kwargs)

    def waic(self, **kwargs: Any):
        """WAIC (ArviZ ``ELPDData``). See :func:`stanhier.compare.waic`."""
        from .compare import waic

        return waic(self, **kwargs)

    def bayes_R2(self, **kwargs: Any):  # noqa: N802 - brms's name
        """Bayesian R² (Gelman et al. 2019), as brms. See :func:`stanhier.compare.bayes_R2`."""
        from .compare import bayes_R2

        return bayes_R2(self, **kwargs)

    def hypothesis(self, hypothesis: str | Sequence[str], alpha: float = 0.05) -> pd.DataFrame:
        """Posterior tests of linear statements of fixed effects, e.g. ``"Days > 0"``.

        See :func:`stanhier.compare.hypothesis`.
        """
        from .compare import hypothesis as _hyp

        return _hyp(self, hypothesis, alpha=alpha)

    # ------------------------------------------------------------------ plots (plots.py)
    def plot(self, variables: Sequence[str] | None = None, *, path: Any = None, **kwargs: Any):
        """Trace and density plots of the summary parameters (ArviZ). Returns the figure."""
        from .plots import plot_trace

        return plot_trace(self, variables, path=path, **kwargs)

    def pp_check(self, type: str | None = None, *, ndraws: int = 10, path: Any = None, **kwargs: Any):
        """Posterior predictive check plot (density overlay, or bars for counts). Returns the figure."""
        from .plots import pp_check

        return pp_check(self, type=type, ndraws=ndraws, path=path, **kwargs)

    def conditional_effects(self, effects: str, **kwargs: Any):
        """Conditional effect of a predictor with credible bands. Returns the figure."""
        from .plots import conditional_effects

        return conditional_effects(self, effects, **kwargs)

    def plot_ranef(self, *, path: Any = None, **kwargs: Any):
        """Caterpillar plot of the group-level effects. Returns the figure."""
        from .plots import plot_ranef

        return plot_ranef(self, path=path, **kwargs)


def _iter_prepared(fit: Any, prep: Prepared, kind: str, transform: bool, chunk_size: int | None,
                   rng: np.random.Generator) -> Iterator[tuple[slice, np.ndarray]]:
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(prep.S, 1))
    elif not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ArgumentError(f"chunk_size must be a positive integer (rows per chunk), not {chunk_size!r}.")
    fam = fit.spec.family
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
