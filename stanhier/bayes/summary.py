"""brms's printed summary of a Bayesian fit.

Example
-------
>>> print(fit)            # doctest: +SKIP
 Family: poisson
  Links: mu = log
...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .parameterization import summary_lines

if TYPE_CHECKING:  # pragma: no cover
    from .fit import BrmsFit

__all__ = ["format_brms_summary", "format_table"]

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


def _links(fit: "BrmsFit") -> str:
    fam = fit.spec.family
    parts = [f"mu = {fam.link}"] + [f"{a} = identity" for a in fam.aux]
    return "; ".join(parts)


def format_brms_summary(fit: "BrmsFit") -> str:
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
        *summary_lines(spec),  # [parameterization] how each group-level term was sampled
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
