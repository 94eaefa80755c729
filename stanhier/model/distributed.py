"""Designs on data that stay where they are: Dask DataFrames and Parquet files read with Dask.

:func:`make_dask_design` returns the same frozen :class:`~stanhier.model.design.Design` as
:func:`~stanhier.model.design.make_design` -- same formulaic specs, column names, level
tables in R's order, checks and error messages -- except that its row arrays (``y``,
``X``, every ``Z`` and ``J``) have zero rows and ``design.source`` is a :class:`DaskSource`.
It is built from

1. one *scan* pass: rows, missing values per column, infinite values, the distinct values
   of every factor and grouping column (the categories), and a small sample of rows;
2. the formulaic specs built on that sample with every factor given all its categories;
3. one *moments* pass: ``N``, ``X'X``, ``X'y``, ``y'y``, column sums / minima / maxima of
   ``X`` (the constant / collinear checks and the starting values use them) and the
   family's check of the response.

Later stages ask the source for the sums they need (``lmer``'s per-group cross-products,
``brm``'s centred ones) with :meth:`DaskSource.reduce`: every partition is encoded with
the frozen specs into an ordinary pandas :class:`Design` (:meth:`PartitionEncoder.encode`)
and handed to the same function the pandas path runs on the whole data
(:func:`stanhier.model.crossprod.grouped_crossprod` underneath); the partial sums are added
in a tree (``split_every`` = 8) on the workers, so the client receives only the reduced
statistics, whose size does not grow with the number of rows. Whatever cluster the
current Dask client points at runs the passes (the local threaded scheduler when none).

Example
-------
>>> import numpy as np, pandas as pd, dask.dataframe as dd          # doctest: +SKIP
>>> from stanhier.model.formula import parse_formula                # doctest: +SKIP
>>> df = pd.DataFrame({"y": np.arange(8.0), "x": [0., 1] * 4, "g": list("aabbccdd")})  # doctest: +SKIP
>>> d = make_dask_design(parse_formula("y ~ x + (1 | g)"), dd.from_pandas(df, npartitions=3))  # doctest: +SKIP
>>> d.N, d.X.shape, d.terms[0].level_labels()                       # doctest: +SKIP
(8, (0, 2), ('a', 'b', 'c', 'd'))
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import DataError, FormulaError, StanhierWarning
from .crossprod import add_exact, crossprod, exact_column_sums
from .design import (Design, GroupTerm, check_grouping, dependent_columns_gram, level_label, level_sort_key,
                     model_matrix_of, r_name, response_values, trials_of, used_columns)
from .formula import ParsedFormula

__all__ = ["is_dask", "as_lazy", "make_dask_design", "DaskSource", "PartitionEncoder", "tree_reduce",
           "add_stats", "exact_order_statistics", "exact_quantiles", "SPLIT_EVERY", "row_moments",
           "design_moments"]

#: partial results combined per node of the reduction tree
SPLIT_EVERY = 8
#: rows each partition contributes to the sample the formulaic specs are built on
SAMPLE_ROWS_PER_PARTITION = 20
#: size of that sample
SAMPLE_ROWS = 2000
#: most values one pass of :func:`exact_order_statistics` brings to the client
MAX_BRACKET_VALUES = 2_000_000


# --------------------------------------------------------------------------- inputs
def _dask_dataframe():
    try:
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - depends on the optional extra
        raise DataError("Dask input needs the optional extra: pip install 'stanhier[dask]' "
                        "(dask[dataframe] and distributed).") from None
    return dd


def is_dask(data: Any) -> bool:
    """True for a Dask DataFrame (checked without importing Dask)."""
    return (type(data).__module__.split(".")[0] == "dask" and hasattr(data, "to_delayed")
            and hasattr(data, "columns"))


def as_lazy(data: Any):
    """``data`` as a Dask DataFrame if it is one or names Parquet data, else None.

    A string or path is read with ``dask.dataframe.read_parquet`` when it ends in
    ``.parquet``, contains a glob wildcard, is a directory or a URL (``s3://...``).
    """
    if is_dask(data):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if path.endswith(".parquet") or any(c in path for c in "*?[") or os.path.isdir(path) or "://" in path:
            dd = _dask_dataframe()
            try:
                return dd.read_parquet(path)
            except Exception as exc:
                raise DataError(f"Could not read the Parquet data {path!r} with Dask: {exc}") from None
        raise DataError(
            f"data={path!r} is a string: pass a DataFrame, a Dask DataFrame, or a Parquet path "
            "(a .parquet file, a directory of them, or a glob such as 'data/*.parquet')."
        )
    return None


# --------------------------------------------------------------------------- the reduction
def add_stats(a: Any, b: Any) -> Any:
    """Sum two partial results: dicts key by key, arrays and numbers by ``+``; None is zero."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict):
        return {k: add_stats(a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b])}
    return a + b


def _combine_chunk(combine: Callable[[Any, Any], Any], *items: Any) -> Any:
    out = items[0]
    for item in items[1:]:
        out = combine(out, item)
    return out


def tree_reduce(ddf: Any, func: Callable[[pd.DataFrame], Any], combine: Callable[[Any, Any], Any] = add_stats,
                split_every: int = SPLIT_EVERY) -> Any:
    """``func`` on every partition of ``ddf``, results combined in a tree on the workers.

    Partitions are combined in their order (``combine(left, right)``), so order-aware
    results (first positions, samples) are those of the whole data. Only the final
    result reaches the client.
    """
    import dask

    # pure=False: random task keys; hashing the function's arguments (the encoder's specs and
    # level tables) for every task would cost the client more than the whole pass
    mapper = dask.delayed(func, pure=False, traverse=False)
    level = [mapper(part) for part in ddf.to_delayed()]
    if not level:
        raise DataError("The data has zero partitions: nothing to fit.")
    combiner = dask.delayed(partial(_combine_chunk, combine), pure=False, traverse=False)
    while len(level) > 1:
        level = [combiner(*level[i:i + split_every]) for i in range(0, len(level), split_every)]
    return dask.compute(level[0])[0]


# --------------------------------------------------------------------------- scan pass
@dataclass(frozen=True)
class _ScanSpec:
    used: tuple[str, ...]
    numeric: tuple[str, ...]  #: numeric (not bool) used columns: infinite values are counted
    level_cols: tuple[str, ...]  #: columns whose distinct values are needed
    pair_terms: tuple[tuple[str, ...], ...]  #: grouping factors of several columns (a:b)


def _scan(pdf: pd.DataFrame, spec: _ScanSpec) -> dict:
    na = pdf[list(spec.used)].isna()
    missing = na.any(axis=1).to_numpy()
    kept = pdf.loc[~missing, list(spec.used)]
    inf = {}
    for c in spec.numeric:
        bad = np.isinf(kept[c].to_numpy(dtype=float))
        inf[c] = (int(bad.sum()), int(np.flatnonzero(bad)[0]) if bad.any() else -1)
    return {
        "n": len(pdf), "n_na": int(missing.sum()), "na_cols": {c: int(na[c].sum()) for c in spec.used},
        "kept": len(kept), "inf": inf,
        "uniques": {c: kept[c].drop_duplicates().reset_index(drop=True) for c in spec.level_cols},
        "pairs": {cols: kept[list(cols)].drop_duplicates().reset_index(drop=True) for cols in spec.pair_terms},
        "sample": pdf.loc[~missing].head(SAMPLE_ROWS_PER_PARTITION),
    }


def _combine_scan(a: dict, b: dict) -> dict:
    inf = {}
    for c, (na, fa) in a["inf"].items():
        nb, fb = b["inf"][c]
        inf[c] = (na + nb, fa if fa >= 0 else (a["kept"] + fb if fb >= 0 else -1))
    return {
        "n": a["n"] + b["n"], "n_na": a["n_na"] + b["n_na"],
        "na_cols": {c: a["na_cols"][c] + b["na_cols"][c] for c in a["na_cols"]},
        "kept": a["kept"] + b["kept"], "inf": inf,
        "uniques": {c: pd.concat([a["uniques"][c], b["uniques"][c]]).drop_duplicates().reset_index(drop=True)
                    for c in a["uniques"]},
        "pairs": {k: pd.concat([a["pairs"][k], b["pairs"][k]]).drop_duplicates().reset_index(drop=True)
                  for k in a["pairs"]},
        "sample": pd.concat([a["sample"], b["sample"]]).head(SAMPLE_ROWS),
    }


# --------------------------------------------------------------------------- encoder
def _is_factor_dtype(dtype: Any) -> bool:
    """Columns formulaic encodes as factors (everything but numbers and booleans)."""
    return not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


@dataclass(frozen=True, eq=False)
class PartitionEncoder:
    """Turns one partition (pandas) into an ordinary :class:`Design` with the fit's specs and
    level tables (global level indices ``J``), so that per-partition statistics are computed
    by exactly the functions the pandas path runs. Holds no rows and no Dask object."""

    base: Design  #: the fit's design with zero rows (specs, names, level tables)
    used: tuple[str, ...]
    categories: dict  #: factor columns -> their categories (formulaic's and R's order)
    orders: tuple[tuple[list, ...], ...]  #: per term, per grouping column: its levels in R's order
    present: tuple[np.ndarray, ...]  #: per term: sorted combined codes of the levels that occur

    def frame(self, pdf: pd.DataFrame) -> pd.DataFrame:
        """The partition's rows without missing values, factor columns as categoricals."""
        df = pdf.loc[~pdf[list(self.used)].isna().any(axis=1).to_numpy()].reset_index(drop=True)
        for c, cats in self.categories.items():
            df[c] = pd.Categorical(df[c], categories=cats)
        return df

    def encode(self, pdf: pd.DataFrame) -> Design | None:
        """The partition's design (None for a partition without usable rows)."""
        df = self.frame(pdf)
        if len(df) == 0:
            return None
        d = self.base
        resp = d.formula.response
        y = response_values(df, resp.column, "response")
        trials = trials_of(d.formula, df) if resp.kind != "plain" else None
        X = np.asarray(d.fixed_spec.get_model_matrix(df, na_action="ignore"), dtype=float)
        if d.fixed_kept is not None:
            X = X[:, list(d.fixed_kept)]
        terms = []
        for gt, orders, present in zip(d.terms, self.orders, self.present):
            Z = np.asarray(gt.spec.get_model_matrix(df, na_action="ignore"), dtype=float)
            codes = [pd.Categorical(np.asarray(df[c].astype(object)) if isinstance(df[c].dtype, pd.CategoricalDtype)
                                    else df[c], categories=o).codes.astype(np.int64)
                     for c, o in zip(gt.term.group, orders)]
            combined = np.ravel_multi_index(codes, [len(o) for o in orders]) if len(codes) > 1 else codes[0]
            terms.append(replace(gt, Z=Z, J=np.searchsorted(present, combined)))
        return replace(d, data=df, y=y, trials=trials, X=X, terms=tuple(terms), n_obs=None, source=None)


def _encoded(pdf: pd.DataFrame, encoder: PartitionEncoder, func: Callable[[Design], Any]) -> Any:
    d = encoder.encode(pdf)
    return None if d is None else func(d)


# --------------------------------------------------------------------------- moments pass
def row_moments(d: Design) -> dict:
    """What exact, partition-independent sums need from the rows of ``d``: ``n``, column minima
    and maxima of X, exact column sums of X and y (:func:`~stanhier.model.crossprod.exact_column_sums`),
    max |y| and, per term, the column maxima of |Z|. A Dask design's moments pass returns the
    same numbers for the whole data (``design.source.moments``)."""
    X, y = d.X, d.y
    return {"n": d.N, "colmin": X.min(axis=0), "colmax": X.max(axis=0), "colsum_exact": exact_column_sums(X),
            "ysum_exact": exact_column_sums(y[:, None])[0], "ymax": float(np.max(np.abs(y))),
            "zmax": tuple(np.max(np.abs(gt.Z), axis=0) for gt in d.terms)}


def design_moments(d: Design) -> dict:
    """:func:`row_moments` of a design: its rows', or the reduced ones of a Dask design."""
    return d.source.moments if d.distributed else row_moments(d)


def _moments(d: Design, family: Any = None) -> dict:
    resp = d.formula.response
    if family is not None:
        family.check_response(d.y, resp.column, d.trials, resp.column2 if resp.kind == "trials" else None)
    X, y = d.X, d.y
    out = {"sum_y": float(y.sum()), "yty": float(y @ y), "XtX": crossprod(X), "Xty": crossprod(X, y),
           "colsum": X.sum(axis=0), "n_nonfinite_X": int(np.sum(~np.isfinite(X)))}
    return {**out, **row_moments(d)}


_EXTREMES = ("colmin", "colmax", "colsum_exact", "ysum_exact", "ymax", "zmax")


def _combine_moments(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a if b is None else b
    out = add_stats({k: v for k, v in a.items() if k not in _EXTREMES},
                    {k: v for k, v in b.items() if k not in _EXTREMES})
    out["colmin"] = np.minimum(a["colmin"], b["colmin"])
    out["colmax"] = np.maximum(a["colmax"], b["colmax"])
    out["colsum_exact"] = add_exact(a["colsum_exact"], b["colsum_exact"])
    out["ysum_exact"] = add_exact([a["ysum_exact"]], [b["ysum_exact"]])[0]
    out["ymax"] = max(a["ymax"], b["ymax"])
    out["zmax"] = tuple(np.maximum(za, zb) for za, zb in zip(a["zmax"], b["zmax"]))
    return out


class DaskSource:
    """The lazy rows of a design and the statistics reduced from them (cached by key).

    ``moments``: ``n``, ``sum_y``, ``yty``, ``XtX``, ``Xty``, ``colsum``, ``colmin``, ``colmax``
    of the used rows and kept columns.
    """

    def __init__(self, ddf: Any, encoder: PartitionEncoder, moments: dict, n_rows: int,
                 sample: pd.DataFrame | None = None) -> None:
        self.ddf = ddf
        self.sample = sample  #: a few rows (at most SAMPLE_ROWS): guesses for exact quantiles
        self.encoder = encoder
        self.moments = moments
        self.n_rows = int(n_rows)  #: rows before dropping missing values
        self.cache: dict[str, Any] = {}
        #: wall seconds of each pass over the data ("scan", "moments", then one per reduce key)
        self.timings: dict[str, float] = {}

    @property
    def npartitions(self) -> int:
        return int(self.ddf.npartitions)

    def reduce(self, key: str, func: Callable[[Design], Any], combine: Callable[[Any, Any], Any] = add_stats) -> Any:
        """``func`` (a picklable function of a partition's :class:`Design`) summed over all
        partitions, computed once per ``key``."""
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = tree_reduce(self.ddf, partial(_encoded, encoder=self.encoder, func=func), combine)
            self.timings[key] = time.perf_counter() - start
        return self.cache[key]

    def map_partitions(self, func: Callable[[Design], np.ndarray], name: str = "value"):
        """A lazy Dask Series of ``func(partition design)`` (one value per used row)."""
        meta = pd.Series([], dtype=float, name=name)
        return self.ddf.map_partitions(partial(_per_row, encoder=self.encoder, func=func, name=name), meta=meta)


def _per_row(pdf: pd.DataFrame, encoder: PartitionEncoder, func: Callable, name: str) -> pd.Series:
    d = encoder.encode(pdf)
    return pd.Series([] if d is None else np.asarray(func(d), float), dtype=float, name=name)


# --------------------------------------------------------------------------- exact quantiles
def _bracket(d: Design, func: Callable[[Design], np.ndarray], lo: float, hi: float, cap: int) -> dict:
    v = np.asarray(func(d), float)
    inside = v[(v >= lo) & (v <= hi)]
    return {"below": int(np.sum(v < lo)), "n_in": len(inside), "values": [inside] if len(inside) <= cap else None}


def _combine_bracket(a: dict, b: dict) -> dict:
    values = None if a["values"] is None or b["values"] is None else a["values"] + b["values"]
    n_in = a["n_in"] + b["n_in"]
    if values is not None and n_in > MAX_BRACKET_VALUES:
        values = None
    return {"below": a["below"] + b["below"], "n_in": n_in, "values": values}


def exact_order_statistics(source: DaskSource, func: Callable[[Design], np.ndarray], ks: list[int],
                           guess: np.ndarray, key: str) -> list[float]:
    """The ``ks``-th smallest (0-based) of ``func``'s values over all rows, exactly.

    Each pass brackets the wanted ranks by values (``guess``: a sample of the values) and
    brings back only the values inside the bracket; a bracket that misses or holds too many
    values is moved or narrowed and the pass repeated (usually one pass suffices).
    """
    guess = np.sort(np.asarray(guess, float))
    n = source.moments["n"]
    lo_k, hi_k = min(ks), max(ks)
    if len(guess):
        spread = 4 * math.sqrt(0.25 / len(guess)) + 5.0 / len(guess)
        lo = float(np.quantile(guess, max(lo_k / n - spread, 0.0)))
        hi = float(np.quantile(guess, min(hi_k / n + spread, 1.0)))
    else:
        lo, hi = -np.inf, np.inf
    for attempt in range(80):
        res = tree_reduce(source.ddf, partial(_encoded, encoder=source.encoder,
                                              func=partial(_bracket, func=func, lo=lo, hi=hi, cap=MAX_BRACKET_VALUES)),
                          _combine_bracket)
        below, n_in = res["below"], res["n_in"]
        if lo_k < below:  # the bracket starts too high
            hi, lo = lo, (-np.inf if attempt > 2 else lo - 4 * max(hi - lo, abs(lo) * 1e-3, 1e-12))
            continue
        if hi_k >= below + n_in:  # the bracket ends too low
            lo, hi = hi, (np.inf if attempt > 2 else hi + 4 * max(hi - lo, abs(hi) * 1e-3, 1e-12))
            continue
        if res["values"] is not None:
            values = np.sort(np.concatenate(res["values"]))
            return [float(values[k - below]) for k in ks]
        # too many values inside: halve the bracket around the wanted ranks by counting
        mid = (lo + hi) / 2 if np.isfinite(lo) and np.isfinite(hi) else (0.0 if not np.isfinite(lo) else lo + 1.0)
        left = tree_reduce(source.ddf, partial(_encoded, encoder=source.encoder,
                                               func=partial(_bracket, func=func, lo=-np.inf, hi=mid, cap=0)),
                           _combine_bracket)["n_in"]
        if hi_k < left:
            hi = mid
        elif lo_k >= left:
            lo = np.nextafter(mid, np.inf)
        else:  # wanted ranks on both sides of mid: shrink both ends towards it
            lo, hi = (lo + mid) / 2 if np.isfinite(lo) else mid - 1.0, (hi + mid) / 2 if np.isfinite(hi) else mid + 1.0
    raise DataError(f"Could not compute the exact order statistics of {key} on the Dask data.")  # pragma: no cover


def _extremes(d: Design, func: Callable[[Design], np.ndarray]) -> dict:
    v = np.asarray(func(d), float)
    return {"min": v.min(), "max": v.max()}


def _combine_extremes(a: dict, b: dict) -> dict:
    return {"min": min(a["min"], b["min"]), "max": max(a["max"], b["max"])}


def exact_quantiles(source: DaskSource, func: Callable[[Design], np.ndarray], probs: list[float],
                    key: str) -> np.ndarray:
    """``np.quantile(values, probs)`` (linear interpolation) of ``func``'s values over all rows,
    exactly: one pass for the extremes, :func:`exact_order_statistics` for the others."""
    n = int(source.moments["n"])
    guess = np.zeros(0)
    if source.sample is not None and len(source.sample):
        d = source.encoder.encode(source.sample)
        guess = np.asarray(func(d), float) if d is not None else guess
    out = np.empty(len(probs))
    inner = [i for i, p in enumerate(probs) if 0 < p < 1]
    if len(inner) < len(probs):
        ext = tree_reduce(source.ddf, partial(_encoded, encoder=source.encoder, func=partial(_extremes, func=func)),
                          _combine_extremes)
        for i, p in enumerate(probs):
            if p <= 0:
                out[i] = ext["min"]
            elif p >= 1:
                out[i] = ext["max"]
    for i in inner:
        pos = probs[i] * (n - 1)
        k0, k1 = int(math.floor(pos)), min(int(math.floor(pos)) + 1, n - 1)
        v0, v1 = exact_order_statistics(source, func, [k0, k1], guess, key)
        out[i] = v0 + (pos - k0) * (v1 - v0)
    return out


# --------------------------------------------------------------------------- the design
def _check_no_state(spec: Any, expr: str) -> None:
    state = getattr(spec, "transform_state", None) or {}
    if state:
        raise DataError(
            f"{', '.join(map(repr, state))} in {expr!r} learn(s) a value from the data (a stateful transform); "
            "with Dask data the design is built from a sample, so compute such columns first "
            "(e.g. ddf['xc'] = ddf['x'] - ddf['x'].mean()) and use them in the formula."
        )


def make_dask_design(formula: ParsedFormula, ddf: Any, *, na_action: str = "drop", collinear: str = "error",
                     family: Any = None) -> Design:
    """The :class:`Design` of ``formula`` on the Dask DataFrame ``ddf`` (see the module docstring).

    Same checks and errors as :func:`~stanhier.model.design.make_design`; ``family`` (optional)
    checks the response's support in the moments pass.
    """
    used = used_columns(formula, ddf, na_action, collinear)
    resp = formula.response
    dtypes = ddf.dtypes
    group_cols = [c for term in formula.random for c in term.group]
    factor_cols = [c for c in used if _is_factor_dtype(dtypes[c])]
    spec = _ScanSpec(
        used=tuple(used),
        numeric=tuple(c for c in used if pd.api.types.is_numeric_dtype(dtypes[c])
                      and not pd.api.types.is_bool_dtype(dtypes[c])),
        level_cols=tuple(dict.fromkeys(factor_cols + group_cols)),
        pair_terms=tuple(dict.fromkeys(tuple(t.group) for t in formula.random if len(t.group) > 1)),
    )
    # ---- pass 1: rows, missing and infinite values, categories, a sample
    t_scan = time.perf_counter()
    scan = tree_reduce(ddf, partial(_scan, spec=spec), _combine_scan)
    t_scan = time.perf_counter() - t_scan
    n_rows = scan["n"]
    if n_rows == 0:
        raise DataError("The data has zero rows: nothing to fit.")
    n_dropped = scan["n_na"]
    if n_dropped:
        if na_action == "raise":
            cols = [c for c in used if scan["na_cols"][c]]
            raise DataError(f"{n_dropped} row(s) have missing values in column(s) {cols}.")
        if n_dropped == n_rows:
            raise DataError(f"Every row has a missing value in one of the columns {used}.")
        warnings.warn(
            f"Rows containing NAs were excluded from the model: {n_dropped} of {n_rows} rows dropped.",
            StanhierWarning, stacklevel=4,
        )
    for col in spec.numeric:
        n_inf, first = scan["inf"][col]
        if n_inf:
            raise DataError(f"Column {col!r} has {n_inf} infinite value(s) (first at row {first}): "
                            "remove or replace them.")
    n_kept = scan["kept"]

    # ---- the specs, on a sample in which every factor has all its categories
    def categories_of(col: str) -> list:
        dtype = dtypes[col]
        if isinstance(dtype, pd.CategoricalDtype) and getattr(ddf[col].cat, "known", False):
            return list(dtype.categories)
        return level_sort_key(pd.Series(np.asarray(scan["uniques"][col].astype(object))))

    categories = {c: categories_of(c) for c in factor_cols}
    sample = scan["sample"].reset_index(drop=True)
    for c, cats in categories.items():
        sample[c] = pd.Categorical(np.asarray(sample[c].astype(object)), categories=cats)
    response_values(sample, resp.column, "response")  # dtype errors, as for pandas input
    if resp.kind != "plain":
        trials_of(formula, sample)
    mm = model_matrix_of(formula.fixed, sample, "the population-level part")
    fixed_spec = mm.model_spec
    _check_no_state(fixed_spec, formula.fixed)
    names = tuple(fixed_spec.column_names)
    terms, orders_all, present_all = [], [], []
    for term in formula.random:
        zm = model_matrix_of(term.expr, sample, f"term {term.text!r}")
        if zm.shape[1] == 0:
            raise FormulaError(f"Term {term.text!r} has no coefficients: write '(1 | g)' for an intercept.")
        _check_no_state(zm.model_spec, term.expr)
        columns = []
        for c in term.group:
            u = scan["uniques"][c]
            if c in categories and isinstance(dtypes[c], pd.CategoricalDtype):
                u = pd.Series(pd.Categorical(np.asarray(u.astype(object)), categories=categories[c]), name=c)
            elif c in categories:
                u = pd.Series(np.asarray(u.astype(object)), name=c)
            columns.append(u.rename(c))
        orders = [level_sort_key(u) for u in columns]
        if len(term.group) == 1:
            present = np.arange(len(orders[0]), dtype=np.int64)
        else:
            pairs = scan["pairs"][tuple(term.group)]
            codes = [pd.Categorical(np.asarray(pairs[c].astype(object)) if c in categories else pairs[c],
                                    categories=o).codes.astype(np.int64) for c, o in zip(term.group, orders)]
            present = np.unique(np.ravel_multi_index(codes, [len(o) for o in orders]))
        parts = np.unravel_index(present, [len(o) for o in orders])
        levels = tuple(tuple(level_label(orders[j][parts[j][i]]) for j in range(len(orders)))
                       for i in range(len(present)))
        check_grouping(term, columns, len(levels), n_kept)
        terms.append(GroupTerm(term=term, coef_formulaic=tuple(zm.model_spec.column_names), levels=levels,
                               Z=np.empty((0, zm.shape[1])), J=np.empty(0, dtype=np.int64), spec=zm.model_spec))
        orders_all.append(tuple(orders))
        present_all.append(present)
    base = Design(formula=formula, data=sample.iloc[:0], y=np.empty(0),
                  trials=None if resp.kind == "plain" else np.empty(0), X=np.empty((0, len(names))),
                  fixed_formulaic=names, has_intercept="Intercept" in names, fixed_spec=fixed_spec,
                  terms=tuple(terms), n_dropped=n_dropped)
    encoder = PartitionEncoder(base=base, used=tuple(used), categories=categories, orders=tuple(orders_all),
                               present=tuple(present_all))

    # ---- pass 2: moments (collinearity, starting values) and the family's check of the response
    t_moments = time.perf_counter()
    moments = tree_reduce(ddf, partial(_encoded, encoder=encoder, func=partial(_moments, family=family)),
                          _combine_moments)
    t_moments = time.perf_counter() - t_moments
    if moments["n_nonfinite_X"]:
        raise DataError(f"The population-level design {formula.fixed!r} has infinite values.")
    kept: tuple[int, ...] | None = None
    dependent = dependent_columns_gram(moments["XtX"], moments["colmax"] - moments["colmin"] == 0, names) \
        if names else []
    if dependent:
        described = ", ".join(f"{r_name(n)!r} ({why})" for n, why in dependent)
        if collinear == "drop":
            warnings.warn(f"Population-level design is rank deficient: dropping column(s) {described}.",
                          StanhierWarning, stacklevel=4)
            kept = tuple(i for i, n in enumerate(names) if n not in dict(dependent))
            idx = list(kept)
            moments = {**moments, "XtX": moments["XtX"][np.ix_(idx, idx)], "Xty": moments["Xty"][idx],
                       "colsum": moments["colsum"][idx], "colmin": moments["colmin"][idx],
                       "colmax": moments["colmax"][idx],
                       "colsum_exact": [moments["colsum_exact"][i] for i in idx]}
            names = tuple(names[i] for i in kept)
            base = replace(base, X=np.empty((0, len(names))), fixed_formulaic=names,
                           has_intercept="Intercept" in names, fixed_kept=kept)
            encoder = replace(encoder, base=base)
        else:
            raise DataError(
                f"Population-level column(s) {described} cannot be estimated: they are constant or "
                "a linear combination of other columns. Remove them from the formula, or pass "
                "collinear='drop' to drop them (as lme4 does)."
            )
    source = DaskSource(ddf, encoder, moments, n_rows, sample=scan["sample"])
    source.timings.update(scan=t_scan, moments=t_moments)
    return replace(base, n_obs=int(moments["n"]), source=source)
