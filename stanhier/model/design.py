"""Stage 2 of the pipeline: turn a parsed formula and a data frame into numbers.

:func:`make_design` returns a :class:`Design`: the response, the fixed-effects
matrix ``X`` (formulaic, treatment coding), and one :class:`GroupTerm` per random
term with its ``Z`` block, 0-based group index ``J`` and level names. The formulaic
model specs are kept so that new data is encoded exactly as the fit's data
(:meth:`Design.new_data`).

Example
-------
>>> import pandas as pd
>>> from stanhier.model.formula import parse_formula
>>> from stanhier.model.design import make_design
>>> df = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "x": [0.0, 1.0, 0.0, 1.0], "g": list("aabb")})
>>> d = make_design(parse_formula("y ~ x + (x | g)"), df)
>>> d.X.shape, d.terms[0].Z.shape, d.terms[0].level_labels()
((4, 2), (4, 2), ('a', 'b'))
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import DataError, FormulaError, StanhierWarning
from .formula import ParsedFormula, RandomTerm, formula_variables

__all__ = ["GroupTerm", "Design", "NewDesign", "make_design", "as_dataframe", "r_name", "brms_name",
           "check_gaussian_groups", "data_label", "dependent_columns_gram",
           "check_columns", "check_grouping", "level_label", "level_sort_key", "model_matrix_of",
           "response_values", "response_variables", "trials_of", "used_columns"]


# --------------------------------------------------------------------------- names
_LEVEL = re.compile(r"\[(?:T\.)?([^\]]*)\]")
_CALL_C = re.compile(r"\bC\(\s*([^,()]+?)\s*(?:,[^()]*)?\)")


def r_name(formulaic_name: str) -> str:
    """R's column name for a formulaic column (``weather[T.sunny]`` -> ``weathersunny``).

    >>> r_name("Intercept"), r_name("C(g)[T.b]:x")
    ('(Intercept)', 'gb:x')
    """
    if formulaic_name == "Intercept":
        return "(Intercept)"
    name = _CALL_C.sub(r"\1", formulaic_name)
    name = _LEVEL.sub(r"\1", name)
    return name.replace("`", "")


_BRMS_CHARS = {" ": "", "(": "", ")": "", "[": "", "]": "", ",": "", '"': "", "'": "",
               "?": "", "+": "P", "-": "M", "*": "MU", "/": "D", "^": "E", "=": "EQ",
               "!": "", "<": "", ">": "", "&": "", "|": "", "$": "", "~": "", "{": "", "}": ""}


def brms_name(formulaic_name: str) -> str:
    """brms's coefficient name (``(Intercept)`` -> ``Intercept``, ``log(x)`` -> ``logx``).

    >>> brms_name("np.log(x)"), brms_name("Intercept")
    ('np.logx', 'Intercept')
    """
    if formulaic_name == "Intercept":
        return "Intercept"
    return "".join(_BRMS_CHARS.get(ch, ch) for ch in r_name(formulaic_name))


# --------------------------------------------------------------------------- data
def as_dataframe(data: Any) -> pd.DataFrame:
    """Accept a pandas DataFrame, a dict of columns, or anything pandas can wrap."""
    if isinstance(data, pd.DataFrame):
        return data
    if data is None:
        raise DataError("No data given: pass a pandas DataFrame (or a dict of columns) as data=.")
    if hasattr(data, "to_pandas"):  # polars, pyarrow
        try:
            return data.to_pandas()
        except Exception as exc:  # pragma: no cover - depends on optional libraries
            raise DataError(f"Could not convert {type(data).__name__} to pandas: {exc}") from None
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame(dict(data))
        except ValueError as exc:
            raise DataError(f"Could not build a data frame from the dict given as data: {exc}") from None
    raise DataError(
        f"data must be a pandas DataFrame or a dict of columns, not {type(data).__name__}."
    )


def data_label(data: Any) -> str:
    """The name printed after ``Data:`` in summaries: a DataFrame's ``attrs["name"]`` if set.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1.0]}); df.attrs["name"] = "sleepstudy"; data_label(df)
    'sleepstudy'
    """
    attrs = getattr(data, "attrs", None)
    if isinstance(attrs, dict) and isinstance(attrs.get("name"), str):
        return attrs["name"]
    return _caller_name(data) or "data"


def _caller_name(data: Any) -> str | None:
    """The name the calling code (the first frame outside stanhier) gives ``data``, as R's
    ``deparse(substitute(data))``: ``sh.lmer(f, sleepstudy)`` prints ``Data: sleepstudy``.
    None when no single variable of that frame holds this very object."""
    import os
    import sys

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = sys._getframe(1)
    try:
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
            frame = frame.f_back
        if frame is None:
            return None
        for scope in (frame.f_locals, frame.f_globals):
            names = [k for k, v in scope.items() if v is data and k.isidentifier() and not k.startswith("_")]
            if len(names) == 1:
                return names[0]
            if names:
                return None
        return None
    finally:
        del frame


def check_columns(names: list[str], df: pd.DataFrame, where: str) -> None:
    for name in names:
        if name not in df.columns:
            close = difflib.get_close_matches(name, [str(c) for c in df.columns], n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise FormulaError(
                f"Column {name!r} used in {where} is not in the data.{hint} "
                f"Available columns: {', '.join(map(str, df.columns[:20]))}."
            )


def model_matrix_of(expr: str, df: pd.DataFrame, where: str):
    from formulaic import model_matrix

    try:
        return model_matrix(expr, df, na_action="ignore", ensure_full_rank=True)
    except Exception as exc:
        raise FormulaError(f"Cannot build the design matrix for {where} {expr!r}: {exc}") from None


def level_sort_key(values: pd.Series) -> list:
    """Levels in R's order: categorical order, else sorted (numbers numerically)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.unique())
        return [c for c in values.cat.categories if c in present]
    uniq = pd.unique(values)
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def level_label(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True, eq=False)
class GroupTerm:
    """The numbers of one random term ``(expr | group)``."""

    term: RandomTerm
    coef_formulaic: tuple[str, ...]  #: formulaic column names of Z
    levels: tuple[tuple[str, ...], ...]  #: one tuple of group-column values per level
    Z: np.ndarray  #: (N, M) design of the term's coefficients
    J: np.ndarray  #: (N,) 0-based level index of every observation
    spec: Any = field(repr=False)  #: formulaic ModelSpec of Z

    @property
    def M(self) -> int:
        return self.Z.shape[1]

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def correlated(self) -> bool:
        """Whether the term has a correlation matrix (``|`` with two or more coefficients)."""
        return self.term.correlated and self.M > 1

    @property
    def coef_names(self) -> tuple[str, ...]:
        """brms names (``Intercept``, ``temperature``)."""
        return tuple(brms_name(c) for c in self.coef_formulaic)

    @property
    def coef_names_r(self) -> tuple[str, ...]:
        """lme4 names (``(Intercept)``, ``temperature``)."""
        return tuple(r_name(c) for c in self.coef_formulaic)

    def level_labels(self, sep: str = "_") -> tuple[str, ...]:
        """Level names; interaction groups joined with ``sep`` (brms ``_``, lme4 ``:``)."""
        return tuple(sep.join(parts) for parts in self.levels)


@dataclass(frozen=True, eq=False)
class NewDesign:
    """New data encoded with a fit's formula state (see :meth:`Design.new_data`)."""

    X: np.ndarray
    Z: tuple[np.ndarray, ...]
    J: tuple[np.ndarray, ...]  #: level index per term; -1 marks a level not seen in the fit
    new_levels: tuple[tuple[str, ...], ...]  #: per term, the labels of unseen levels (joined by ':')
    J_new: tuple[np.ndarray, ...]  #: per term, index into new_levels (-1 for old levels)
    trials: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Design:
    """Everything numeric the later stages need; built once per fit."""

    formula: ParsedFormula
    data: pd.DataFrame  #: the rows used (after dropping missing values)
    y: np.ndarray
    trials: np.ndarray | None
    X: np.ndarray  #: (N, K) including the intercept column if any
    fixed_formulaic: tuple[str, ...]
    has_intercept: bool
    fixed_spec: Any = field(repr=False)
    terms: tuple[GroupTerm, ...] = ()
    n_dropped: int = 0
    #: positions (in ``fixed_spec``'s columns) of the columns of X; ``None``: all of them.
    #: ``collinear="drop"`` keeps a subset, and new data is encoded to that subset.
    fixed_kept: tuple[int, ...] | None = None
    #: number of rows when the rows are not held here (Dask input: ``y``, ``X``, ``Z``, ``J``
    #: then have zero rows and :attr:`source` computes every statistic where the data live)
    n_obs: int | None = None
    #: the lazy data and their reduced statistics (:class:`stanhier.model.distributed.DaskSource`)
    source: Any = field(default=None, repr=False)

    @property
    def N(self) -> int:
        return len(self.y) if self.n_obs is None else int(self.n_obs)

    @property
    def distributed(self) -> bool:
        """True when the rows stay where they are (a Dask DataFrame): only reduced statistics are here."""
        return self.source is not None

    @property
    def fixed_names(self) -> tuple[str, ...]:
        """brms names of the columns of X (``Intercept``, ``temperature``)."""
        return tuple(brms_name(c) for c in self.fixed_formulaic)

    @property
    def fixed_names_r(self) -> tuple[str, ...]:
        """lme4 names of the columns of X (``(Intercept)``, ``temperature``)."""
        return tuple(r_name(c) for c in self.fixed_formulaic)

    def new_data(self, newdata: Any, *, re_terms: tuple[int, ...] | None = None,
                 allow_new_levels: bool = False, need_response: bool = False) -> NewDesign:
        """Encode ``newdata`` with the fit's formulaic specs and level tables.

        ``re_terms``: indices of the random terms to encode (default all).
        A level not seen in the fit raises :class:`DataError` unless ``allow_new_levels``.
        """
        df = as_dataframe(newdata)
        if re_terms is None:
            re_terms = tuple(range(len(self.terms)))
        needed = formula_variables(self.formula.fixed)
        for k in re_terms:
            needed += formula_variables(self.terms[k].term.expr) + list(self.terms[k].term.group)
        check_columns(sorted(set(needed)), df, "the formula (newdata)")
        try:
            X = np.asarray(self.fixed_spec.get_model_matrix(df, na_action="ignore"), dtype=float)
        except Exception as exc:
            raise DataError(f"Could not encode newdata for {self.formula.fixed!r}: {exc}") from None
        if self.fixed_kept is not None:
            X = X[:, list(self.fixed_kept)]
        Zs, Js, news, Jn = [], [], [], []
        for k, gt in enumerate(self.terms):
            if k not in re_terms:
                Zs.append(np.zeros((len(df), gt.M)))
                Js.append(np.full(len(df), -1))
                news.append(())
                Jn.append(np.full(len(df), -1))
                continue
            Z = np.asarray(gt.spec.get_model_matrix(df, na_action="ignore"), dtype=float)
            index = {parts: i for i, parts in enumerate(gt.levels)}
            keys = list(zip(*[df[c].map(level_label) for c in gt.term.group]))
            J = np.array([index.get(key, -1) for key in keys], dtype=int)
            unseen = list(dict.fromkeys(key for key, j in zip(keys, J) if j < 0))
            if unseen and not allow_new_levels:
                shown = ", ".join(":".join(u) for u in unseen[:5])
                raise DataError(
                    f"newdata has levels of grouping factor {gt.term.group_name!r} not in the fit "
                    f"({shown}{', ...' if len(unseen) > 5 else ''}); pass allow_new_levels=True "
                    "to predict for new groups."
                )
            new_index = {key: i for i, key in enumerate(unseen)}
            Zs.append(Z)
            Js.append(J)
            news.append(tuple(":".join(u) for u in unseen))
            Jn.append(np.array([new_index.get(key, -1) for key in keys], dtype=int))
        trials = None
        resp = self.formula.response
        if resp.kind != "plain" and all(v in df.columns for part in resp.columns
                                        for v in response_variables(part)):
            trials = trials_of(self.formula, df)
        return NewDesign(X=X, Z=tuple(Zs), J=tuple(Js), new_levels=tuple(news), J_new=tuple(Jn),
                         trials=trials)


def response_variables(expr: str) -> list[str]:
    """Columns an lme4 response part reads: a column name, or an expression such as ``n - y``."""
    if not any(op in expr for op in "+-*/()"):
        return [expr]
    return formula_variables(f"0 + I({expr})")


def response_values(df: pd.DataFrame, expr: str, role: str) -> np.ndarray:
    """Values of a response part; expressions (``cbind(y, n - y)``) are evaluated by formulaic."""
    if expr in df.columns:
        return _numeric(df, expr, role)
    values = np.asarray(model_matrix_of(f"0 + I({expr})", df, f"the {role}"), dtype=float)[:, 0]
    if not np.all(np.isfinite(values)):
        raise DataError(f"The {role} {expr!r} has non-finite values.")
    return values


def trials_of(formula: ParsedFormula, df: pd.DataFrame) -> np.ndarray:
    resp = formula.response
    if resp.kind == "cbind":
        return response_values(df, resp.column, "response") + response_values(df, resp.column2, "failures")
    return response_values(df, resp.column2, "trials")


def _numeric(df: pd.DataFrame, col: str, role: str) -> np.ndarray:
    values = df[col]
    if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
        raise DataError(f"The {role} column {col!r} must be numeric, but has dtype {values.dtype}.")
    out = values.to_numpy(dtype=float)
    if not np.all(np.isfinite(out)):
        bad = int(np.sum(~np.isfinite(out)))
        raise DataError(f"The {role} column {col!r} has {bad} infinite value(s): remove or replace them.")
    return out


def _dependent_columns(X: np.ndarray, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Columns that are constant (besides the intercept) or linearly dependent on earlier ones."""
    if X.shape[1] == 0:
        return []
    # one pass over the data; the rest works on the K x K Gram matrix
    return dependent_columns_gram(X.T @ X, np.ptp(X, axis=0) == 0, names)


def dependent_columns_gram(G: np.ndarray, const: np.ndarray, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """:func:`_dependent_columns` from the Gram matrix ``X'X`` and a per-column constant flag
    (what a distributed pass returns)."""
    out: list[tuple[str, str]] = []
    kept: list[int] = []
    for j, name in enumerate(names):
        if name != "Intercept" and const[j] and "Intercept" in names:
            out.append((name, "constant"))
            continue
        resid = G[j, j]
        if kept:
            g = G[kept, j]
            resid = G[j, j] - g @ np.linalg.lstsq(G[np.ix_(kept, kept)], g, rcond=None)[0]
        if resid <= 1e-10 * max(G[j, j], 1e-300):
            out.append((name, "collinear with " + ", ".join(repr(r_name(names[i])) for i in kept[-3:])))
            continue
        kept.append(j)
    return out


def check_grouping(term: RandomTerm, columns: list[pd.Series], n_levels: int, n_rows: int) -> None:
    if n_levels < 2:
        raise DataError(
            f"Grouping factor {term.group_name!r} in {term.text!r} has a single level: a group-level "
            "effect needs at least two groups. Drop the term or use a fixed effect."
        )
    for col in columns:
        if pd.api.types.is_float_dtype(col) and not np.all(np.mod(col.to_numpy(), 1) == 0) \
                and col.nunique() > 0.5 * n_rows:
            warnings.warn(
                f"Grouping variable {col.name!r} in {term.text!r} looks continuous ({col.nunique()} distinct "
                f"values in {n_rows} rows): each value becomes a group. Did you mean it as a predictor?",
                StanhierWarning, stacklevel=4)


def check_gaussian_groups(design: "Design") -> None:
    """Warn when a grouping factor has a level per observation in a model with sigma."""
    for gt in design.terms:
        if gt.n_levels >= design.N:
            warnings.warn(
                f"Grouping factor {gt.term.group_name!r} has as many levels as observations ({design.N}): "
                "with a residual SD (sigma) its SD is not identifiable. Drop the term or use a "
                "family without sigma.", StanhierWarning, stacklevel=3)


def used_columns(formula: Any, frame: Any, na_action: str, collinear: str) -> list[str]:
    """Check the options and that ``frame`` (pandas or Dask) has every column ``formula`` names;
    the columns used, response first, in the formula's order."""
    if na_action not in ("drop", "raise"):
        raise DataError(f"na_action must be 'drop' or 'raise', got {na_action!r}.")
    if collinear not in ("error", "drop"):
        raise DataError(f"collinear must be 'error' or 'drop', got {collinear!r}.")
    fixed_vars = formula_variables(formula.fixed)
    resp_vars = [v for part in formula.response.columns for v in response_variables(part)]
    check_columns(resp_vars, frame, f"the response of {formula.text!r}")
    check_columns(fixed_vars, frame, f"the population-level part {formula.fixed!r}")
    used = resp_vars + fixed_vars
    for term in formula.random:
        check_columns(formula_variables(term.expr) + list(term.group), frame, f"term {term.text!r}")
        used += formula_variables(term.expr) + list(term.group)
    return list(dict.fromkeys(used))


def make_design(formula: ParsedFormula, data: Any, *, na_action: str = "drop",
                collinear: str = "error") -> Design:
    """Build the :class:`Design` of ``formula`` on ``data``.

    ``na_action="drop"`` drops rows with missing values in any used column (with a
    warning stating how many, as brms does); ``"raise"`` raises :class:`DataError`.
    ``collinear="error"`` raises for constant or linearly dependent population-level
    columns (naming them); ``"drop"`` drops them with a warning, as lme4.

    (Dask DataFrames and Parquet paths: :func:`stanhier.model.distributed.make_dask_design`,
    which reuses this module's checks.)
    """
    df = as_dataframe(data)
    used = used_columns(formula, df, na_action, collinear)
    if len(df) == 0:
        raise DataError("The data has zero rows: nothing to fit.")
    resp = formula.response
    missing = df[used].isna().any(axis=1).to_numpy()
    n_dropped = int(missing.sum())
    if n_dropped:
        if na_action == "raise":
            cols = [c for c in used if df[c].isna().any()]
            raise DataError(f"{n_dropped} row(s) have missing values in column(s) {cols}.")
        if n_dropped == len(df):
            raise DataError(f"Every row has a missing value in one of the columns {used}.")
        warnings.warn(
            f"Rows containing NAs were excluded from the model: {n_dropped} of {len(df)} rows dropped.",
            StanhierWarning, stacklevel=3,
        )
        df = df.loc[~missing]
    df = df.reset_index(drop=True)
    for col in used:
        values = df[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            n_inf = int(np.isinf(values.to_numpy(dtype=float)).sum())
            if n_inf:
                raise DataError(
                    f"Column {col!r} has {n_inf} infinite value(s) (first at row "
                    f"{int(np.flatnonzero(np.isinf(values.to_numpy(dtype=float)))[0])}): remove or replace them."
                )

    y = response_values(df, resp.column, "response")
    trials = trials_of(formula, df) if resp.kind != "plain" else None

    mm = model_matrix_of(formula.fixed, df, "the population-level part")
    X = np.asarray(mm, dtype=float)
    if not np.all(np.isfinite(X)):
        raise DataError(f"The population-level design {formula.fixed!r} has infinite values.")
    names = tuple(mm.model_spec.column_names)
    fixed_spec = mm.model_spec
    dependent = _dependent_columns(X, names)
    kept: tuple[int, ...] | None = None
    if dependent:
        described = ", ".join(f"{r_name(n)!r} ({why})" for n, why in dependent)
        if collinear == "drop":
            warnings.warn(
                f"Population-level design is rank deficient: dropping column(s) {described}.",
                StanhierWarning, stacklevel=3)
            keep = [i for i, n in enumerate(names) if n not in dict(dependent)]
            kept = tuple(keep)
            X = X[:, keep]
            names = tuple(names[i] for i in keep)
        else:
            raise DataError(
                f"Population-level column(s) {described} cannot be estimated: they are constant or "
                "a linear combination of other columns. Remove them from the formula, or pass "
                "collinear='drop' to drop them (as lme4 does)."
            )

    terms = []
    for term in formula.random:
        zm = model_matrix_of(term.expr, df, f"term {term.text!r}")
        Z = np.asarray(zm, dtype=float)
        if Z.shape[1] == 0:
            raise FormulaError(f"Term {term.text!r} has no coefficients: write '(1 | g)' for an intercept.")
        columns = [df[c] for c in term.group]
        orders = [level_sort_key(c) for c in columns]  # each column's levels in R's order
        codes = [pd.Categorical(c, categories=o).codes.astype(np.int64) for c, o in zip(columns, orders)]
        # an interaction a:b is ordered by a's level, then b's (lme4's order); only observed pairs
        combined = np.ravel_multi_index(codes, [len(o) for o in orders]) if len(codes) > 1 else codes[0]
        present, J = np.unique(combined, return_inverse=True)
        parts = np.unravel_index(present, [len(o) for o in orders])
        levels = tuple(tuple(level_label(orders[j][parts[j][i]]) for j in range(len(orders)))
                       for i in range(len(present)))
        check_grouping(term, columns, len(levels), len(df))
        terms.append(GroupTerm(term=term, coef_formulaic=tuple(zm.model_spec.column_names),
                               levels=levels, Z=Z, J=J, spec=zm.model_spec))

    return Design(formula=formula, data=df, y=y, trials=trials, X=X, fixed_formulaic=names,
                  has_intercept="Intercept" in names, fixed_spec=fixed_spec,
                  terms=tuple(terms), n_dropped=n_dropped, fixed_kept=kept)
