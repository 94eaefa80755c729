"""Summaries of posterior draws, and brms's printed summary of a Bayesian fit.

The lowest module of :mod:`stanhier.bayes`: it imports no other part of the package, so
the prediction engine, model comparison and the fit all use the same summaries.

Example
-------
>>> import numpy as np
>>> summarise_draws(np.array([[0.0], [1.0], [2.0]]), probs=[0.5]).round(2).tolist()
[[1.0, 1.0, 1.0]]
>>> summary_frame(np.array([[1.0, 0.1, 0.8, 1.2]]), (0.025, 0.975), pd.Index(["R2"])).columns.tolist()
['Estimate', 'Est.Error', 'Q2.5', 'Q97.5']
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError
from .parameterization import summary_lines

__all__ = ["format_brms_summary", "format_table", "summary_stats", "column_summary", "summarise_draws",
           "summary_frame", "quantile_names", "check_probs"]


# ------------------------------------------------------------------ summaries of draws
def summary_stats(values: np.ndarray) -> dict[str, float]:
    """brms's columns for one (chain, draw) array: rank-normalised Rhat, bulk/tail ESS."""
    import arviz as az

    flat = values.reshape(-1)
    out = {"Estimate": float(np.mean(flat)), "Est.Error": float(np.std(flat, ddof=1)),
           "l-95% CI": float(np.quantile(flat, 0.025)), "u-95% CI": float(np.quantile(flat, 0.975))}
    if values.shape[0] * values.shape[1] > 3 and np.ptp(flat) > 0:
        # ArviZ logs a "Shape validation failed" warning for one chain; brms's ESS of one chain is
        # computed without comment, so ArviZ's log is kept below warnings here (ArviZ's logger is
        # its own object, ``arviz._log``, not registered with ``logging``)
        arviz_log = getattr(az, "_log", None) or logging.getLogger("arviz")
        level = arviz_log.level
        arviz_log.setLevel(logging.ERROR)
        try:
            out["Rhat"] = float(az.rhat(values, method="rank")) if values.shape[1] >= 4 else float("nan")
            out["Bulk_ESS"] = float(az.ess(values, method="bulk"))
            out["Tail_ESS"] = float(az.ess(values, method="tail"))
        finally:
            arviz_log.setLevel(level)
    else:
        out.update({"Rhat": float("nan"), "Bulk_ESS": float("nan"), "Tail_ESS": float("nan")})
    return out


def column_summary(name: str, v: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """brms's per-level columns (Estimate, Est.Error, Q2.5, Q97.5) of (draws, levels) draws.

    >>> sorted(column_summary("x", np.zeros((3, 2))))[0]
    ('x', 'Est.Error')
    """
    return {(name, "Estimate"): v.mean(0), (name, "Est.Error"): v.std(0, ddof=1),
            (name, "Q2.5"): np.quantile(v, 0.025, axis=0), (name, "Q97.5"): np.quantile(v, 0.975, axis=0)}


def quantile_names(probs: Sequence[float]) -> list[str]:
    """brms's quantile column names: ``Q2.5``, ``Q97.5``.

    >>> quantile_names([0.025, 0.5, 0.975])
    ['Q2.5', 'Q50', 'Q97.5']
    """
    return [f"Q{100 * p:g}" for p in probs]


def check_probs(probs: Sequence[float]) -> list[float]:
    """``probs`` as floats in [0, 1], or :class:`~stanhier.errors.ArgumentError`.

    >>> check_probs((0.05, 0.95))
    [0.05, 0.95]
    """
    out = [float(p) for p in probs]
    if not out or any(not (0 <= p <= 1) for p in out):
        raise ArgumentError(f"probs must be probabilities in [0, 1], not {list(probs)!r}.")
    return out


def summarise_draws(draws: np.ndarray, probs: Sequence[float] = (0.025, 0.975),
                    robust: bool = False) -> np.ndarray:
    """(S, n) draws -> (n, 2 + len(probs)): Estimate, Est.Error, quantiles (brms's ``posterior_summary``).

    ``robust=True`` uses the median and the MAD (scaled by 1.4826) as brms.

    >>> summarise_draws(np.array([[0.0], [1.0], [5.0]]), probs=[0.5], robust=True).round(3).tolist()
    [[1.0, 1.483, 1.0]]
    """
    if robust:
        est = np.median(draws, axis=0)
        err = 1.4826 * np.median(np.abs(draws - est), axis=0)
    else:
        est = draws.mean(axis=0)
        err = draws.std(axis=0, ddof=1) if draws.shape[0] > 1 else np.full(draws.shape[1], np.nan)
    q = np.quantile(draws, probs, axis=0)
    return np.column_stack([est, err, *q])


def summary_frame(values: np.ndarray, probs: Sequence[float], index: pd.Index) -> pd.DataFrame:
    """brms's summary table (Estimate, Est.Error, quantiles) of :func:`summarise_draws` output."""
    return pd.DataFrame(values, columns=["Estimate", "Est.Error", *quantile_names(probs)], index=index)


# ------------------------------------------------------------------ the printed summary

_COLS = ["Estimate", "Est.Error", "l-95% CI", "u-95% CI", "Rhat", "Bulk_ESS", "Tail_ESS"]


def _fmt_cell(col: str, value: float) -> str:
    if not np.isfinite(value):
        return "NA"
    if col == "Rhat":
        return f"{value:.2f}"
    if col in ("Bulk_ESS", "Tail_ESS"):
        return f"{int(round(value))}"
    return f"{value:.2f}"


def format_table(rows: pd.DataFrame, labels: list[str]) -> str:
    """Right-aligned table with brms's column names and rounding."""
    cells = [[_fmt_cell(c, float(v)) for c, v in zip(_COLS, r)] for r in rows[_COLS].to_numpy()]
    label_w = max([len(x) for x in labels] + [0])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLS)]
    header = " " * label_w + " " + " ".join(c.rjust(w) for c, w in zip(_COLS, widths))
    lines = [header]
    for lab, row in zip(labels, cells):
        lines.append(lab.ljust(label_w) + " " + " ".join(v.rjust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def _links(fit: Any) -> str:
    fam = fit.spec.family
    parts = [f"mu = {fam.link}"] + [f"{a} = identity" for a in fam.aux]
    return "; ".join(parts)


def format_brms_summary(fit: Any) -> str:
    """brms's printed summary of a Bayesian fit (its public ``spec``, ``raw``, ``names``,
    ``summary_table()``, ``diagnostic_messages()``, ``backend`` and ``data_name``)."""
    spec, s = fit.spec, fit.raw.settings
    d = spec.design
    table = fit.summary_table()
    total = s.chains * s.draws_per_chain
    out = [
        f" Family: {spec.family.name} ",
        f"  Links: {_links(fit)} ",
        f"Formula: {d.formula.text} ",
        f"   Data: {fit.data_name} (Number of observations: {d.N}) ",
        f"  Draws: {s.chains} chains, each with iter = {s.iter}; warmup = {s.warmup}; thin = {s.thin};",
        f"         total post-warmup draws = {total}",
        *summary_lines(spec),  # how each group-level term was sampled (integrated out / centred / not)
        "",
    ]
    if fit.names.groups:
        out.append("Group-Level Effects: ")
        for g, _items, levels in fit.names.groups:
            rows = table[(table.block == "random") & (table.group == g)]
            out.append(f"~{g} (Number of levels: {len(levels)}) ")
            out.append(format_table(rows, list(rows["label"])))
            out.append("")
    fixed = table[table.block == "fixed"]
    if len(fixed):
        out.append("Population-Level Effects: ")
        out.append(format_table(fixed, list(fixed["label"])))
        out.append("")
    fam = table[table.block == "family"]
    if len(fam):
        out.append("Family Specific Parameters: ")
        out.append(format_table(fam, list(fam["label"])))
        out.append("")
    out += [
        f"Draws were sampled using sampling(NUTS) with the {fit.backend} backend. For each parameter,",
        "Bulk_ESS and Tail_ESS are effective sample size measures, and Rhat is the potential",
        "scale reduction factor on split chains (at convergence, Rhat = 1).",
    ]
    msgs = fit.diagnostic_messages()
    if msgs:
        out.append("")
        out += [f"Warning: {m}" for m in msgs]
    return "\n".join(out)
