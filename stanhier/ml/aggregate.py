"""Exact aggregation of count data for ``glmer`` (Poisson, binomial, Bernoulli).

A Poisson or binomial likelihood depends on the rows only through the sums of the
responses (and trials) within each *pattern* -- a unique combination of the
fixed-effect row ``x``, the group level(s) and the random-effect row ``z``. Rows of one
pattern share the linear predictor ``eta``, so

* Poisson: ``sum_i y_i ~ Poisson(c * exp(eta))`` over the ``c`` rows of the pattern,
  fitted with the count ``c`` as exposure (``log c`` added to ``eta``; the GLMM program
  reads the exposure from its ``trials`` array, which is 1 for unaggregated rows);
* binomial / Bernoulli: ``sum_i s_i ~ binomial(sum_i n_i, p)``.

The aggregated likelihood differs from the raw one by a constant (the Poisson
``log y!`` and exposure terms, the binomial coefficients), computed here and added back
to ``logLik`` so that it matches lme4's on the raw rows. The optimum, the Hessian and
the conditional modes are those of the raw rows: the aggregation is exact.

``glmer`` aggregates automatically when it shrinks the data at least ``MIN_SHRINK``
times (``aggregate=None``; ``True`` forces it, ``False`` never), and says so in the
summary. Dask data are aggregated on the cluster (a ``groupby`` per partition, partial
tables combined in a tree), so only the pattern table reaches the client.

Example
-------
>>> import pandas as pd
>>> from stanhier.model.formula import parse_formula
>>> from stanhier.model.design import make_design
>>> from stanhier.families import get_family
>>> df = pd.DataFrame({"y": [0, 1, 2, 1, 0, 3], "x": list("abaabb"), "g": list("ppqqqq")})
>>> agg = aggregate_counts(make_design(parse_formula("y ~ x + (1 | g)"), df), get_family("poisson"))
>>> agg.n_rows, agg.n_patterns, agg.design.y.tolist(), agg.design.trials.tolist()
(6, 4, [0.0, 3.0, 1.0, 3.0], [1.0, 2.0, 1.0, 2.0])
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pandas as pd
from scipy import special

from ..errors import DataError
from ..families import Family, get_family
from ..model.design import Design

__all__ = ["AGGREGATABLE", "MIN_SHRINK", "MAX_DASK_PATTERNS", "Aggregation", "pattern_table", "aggregate_counts"]

#: families whose likelihood aggregates exactly
AGGREGATABLE = ("poisson", "binomial", "bernoulli")
#: shrink factor from which glmer aggregates automatically
MIN_SHRINK = 5
#: most patterns a Dask aggregation brings to the client
MAX_DASK_PATTERNS = 5_000_000


@dataclass(frozen=True, eq=False)
class Aggregation:
    """The aggregated design and what the fit needs to report raw-row quantities."""

    design: Design  #: one row per pattern: y = summed responses, trials = summed trials (Poisson: rows)
    family: Family  #: the family whose likelihood the aggregated rows follow (Bernoulli -> binomial)
    n_rows: int
    n_patterns: int
    loglik_offset: float  #: raw log-likelihood minus the aggregated one (a constant)

    @property
    def shrink(self) -> float:
        return self.n_rows / max(self.n_patterns, 1)

    def describe(self) -> str:
        return (f"{self.n_rows:,} rows aggregated exactly into {self.n_patterns:,} patterns "
                f"({self.shrink:.1f}x fewer; logLik includes the constants of the raw rows)")


def _key_columns(d: Design) -> list[str]:
    cols = [f"x{j}" for j in range(d.X.shape[1])]
    for k, gt in enumerate(d.terms):
        cols.append(f"J{k}")
        cols += [f"z{k}_{m}" for m in range(gt.M)]
    return cols


def pattern_table(d: Design, family: Family) -> pd.DataFrame:
    """Rows of ``d`` summed per pattern: key columns (``x*``, ``J*``, ``z*``), the summed
    response ``y``, trials ``n``, row count ``count`` and the rows' likelihood constants ``const``."""
    y = np.asarray(d.y, float)
    if family.name == "binomial":
        n = np.asarray(d.trials, float)
        const = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
    elif family.name == "bernoulli":
        n, const = np.ones_like(y), np.zeros_like(y)
    else:  # poisson
        n, const = np.ones_like(y), -special.gammaln(y + 1)
    data = {f"x{j}": d.X[:, j] for j in range(d.X.shape[1])}
    for k, gt in enumerate(d.terms):
        data[f"J{k}"] = gt.J
        for m in range(gt.M):
            data[f"z{k}_{m}"] = gt.Z[:, m]
    frame = pd.DataFrame({**data, "y": y, "n": n, "count": np.ones_like(y), "const": const})
    return frame.groupby(_key_columns(d), sort=True, as_index=False).sum()


def _combine_tables(a: pd.DataFrame | None, b: pd.DataFrame | None, keys: list[str]) -> pd.DataFrame | None:
    if a is None or b is None:
        return a if b is None else b
    out = pd.concat([a, b], ignore_index=True).groupby(keys, sort=True, as_index=False).sum()
    if len(out) > MAX_DASK_PATTERNS:
        raise DataError(
            f"The data have more than {MAX_DASK_PATTERNS:,} distinct patterns of (predictors, groups): "
            "exact aggregation does not shrink them enough to fit on the client. Use categorical "
            "(or rounded) predictors, or fit a sample."
        )
    return out


def aggregate_counts(design: Design, family: Family) -> Aggregation:
    """Aggregate ``design``'s rows into patterns (pandas ``groupby``, or on the Dask cluster)."""
    if family.name not in AGGREGATABLE:
        raise DataError(f"Exact aggregation needs family poisson, binomial or bernoulli, not {family.name!r}.")
    keys = _key_columns(design)
    if design.distributed:
        table = design.source.reduce(f"patterns_{family.name}", partial(pattern_table, family=family),
                                     partial(_combine_tables, keys=keys))
    else:
        table = pattern_table(design, family)
    Y, n, count = (table[c].to_numpy(float) for c in ("y", "n", "count"))
    if family.name == "poisson":
        agg_const = special.gammaln(Y + 1) - Y * np.log(count)
        trials = count  # exposure
        agg_family = family
    else:
        agg_const = -(special.gammaln(n + 1) - special.gammaln(Y + 1) - special.gammaln(n - Y + 1))
        trials = n
        agg_family = get_family("binomial").with_link(family.link)
    offset = float(table["const"].sum() + agg_const.sum())
    X = table[[f"x{j}" for j in range(design.X.shape[1])]].to_numpy(float).reshape(len(table), -1)
    terms = tuple(replace(gt, J=table[f"J{k}"].to_numpy(np.int64),
                          Z=table[[f"z{k}_{m}" for m in range(gt.M)]].to_numpy(float))
                  for k, gt in enumerate(design.terms))
    agg = replace(design, data=design.data.iloc[:0], y=Y, trials=trials, X=X, terms=terms, n_obs=None, source=None)
    return Aggregation(design=agg, family=agg_family, n_rows=int(design.N), n_patterns=len(table),
                       loglik_offset=offset)
