"""Plots of fits (matplotlib; ArviZ where it already does the job).

* :func:`plot_trace` - trace and density of the summary parameters (``fit.plot()``);
* :func:`pp_check` - posterior predictive check: density overlay, or bars for counts;
* :func:`conditional_effects` - expected response against one predictor with credible
  bands, optionally by the levels of a categorical predictor or grouping factor;
* :func:`plot_ranef` - caterpillar plot of group-level effects (Bayesian and ML fits).

Every function returns the matplotlib ``Figure``, saves it when ``path=`` is given,
and attaches the plotted numbers as ``fig.stanhier_data`` so they can be checked.
Fits are taken duck-typed, through their public API only (``posterior_epred``,
``group_draws``, ``idata``, ``names``, ``spec``/``design``; ML fits: ``predict``,
``ranef``), so this module imports no fit class.

Example
-------
>>> fig = sh.conditional_effects(fit, "Days", path="days.png")               # doctest: +SKIP
>>> fig.stanhier_data.head()                                                # doctest: +SKIP
   Days  estimate__  se__  lower__  upper__
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError, StanhierWarning, user_stacklevel
from ..model.formula import formula_variables

__all__ = ["plot_trace", "pp_check", "conditional_effects", "plot_ranef", "distinct_colors"]


def _save(fig: Any, path: Any) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.parent.exists():
        raise ArgumentError(f"Cannot save the plot to {str(p)!r}: the folder {str(p.parent)!r} does not exist.")
    fig.savefig(p, dpi=100, bbox_inches="tight")


def _is_bayes(fit: Any) -> bool:
    return hasattr(fit, "raw") and hasattr(fit, "posterior_epred")


def _design(fit: Any):
    return fit.spec.design if hasattr(fit, "spec") else fit.design


# --------------------------------------------------------------------------- trace
def plot_trace(fit: Any, variables: Sequence[str] | None = None, *, path: Any = None,
               **kwargs: Any):
    """Trace and density plots of the summary parameters (brms's ``plot(fit)``), via ArviZ.

    ``variables``: brms names (default: every parameter of ``summary()``: ``b_*``,
    ``sd_*``, ``cor_*``, family parameters). Extra keyword arguments go to
    ``az.plot_trace``.

    >>> fig = fit.plot(path="trace.png")                                      # doctest: +SKIP
    """
    import arviz as az

    if not _is_bayes(fit):
        raise ArgumentError("plot() draws traces of posterior draws: it needs a Bayesian fit from brm().")
    names = [e.name for e in fit.names.entries]
    if variables is None:
        variables = [n for n in names if not n.startswith("cor_")] + [n for n in names if n.startswith("cor_")]
        variables = list(dict.fromkeys(sorted(variables, key=names.index)))
    else:
        variables = [variables] if isinstance(variables, str) else list(variables)
        unknown = [v for v in variables if v not in fit.idata.posterior]
        if unknown:
            raise ArgumentError(f"Unknown variable(s) {unknown} for plot(); available: {', '.join(names)}.")
    with warnings.catch_warnings():  # arviz 0.23 + matplotlib 3.11 deprecation noise
        warnings.simplefilter("ignore", DeprecationWarning)
        axes = az.plot_trace(fit.idata, var_names=variables, compact=False, **kwargs)
    fig = np.asarray(axes).ravel()[0].figure
    fig.stanhier_data = {v: np.asarray(fit.idata.posterior[v]) for v in variables}
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------- pp_check
def pp_check(fit: Any, type: str | None = None, *, ndraws: int = 10, seed: int | None = 1,
             path: Any = None, ax: Any = None):
    """Posterior predictive check (brms's ``pp_check``).

    ``type="dens_overlay"`` (default for continuous responses): kernel density of the
    observed ``y`` (dark) over the densities of ``ndraws`` replicated data sets
    ``yrep`` (light). ``type="bars"`` (default for count/binary responses): bars of the
    observed counts of each value, with the mean and 95% interval of ``yrep``'s counts.
    ``fig.stanhier_data`` holds ``x``, ``y`` (the observed curve or bar heights) and
    ``yrep`` (per draw curves, or per-value mean/lower/upper).

    >>> fig = fit.pp_check(ndraws=20, path="ppc.png")                         # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    if not _is_bayes(fit):
        raise ArgumentError("pp_check needs a Bayesian fit from brm() (draws of replicated data).")
    fam = fit.spec.family
    if type is None:
        type = "bars" if fam.is_discrete else "dens_overlay"
    if type not in ("dens_overlay", "bars"):
        raise ArgumentError(f"pp_check type must be 'dens_overlay' or 'bars', not {type!r}.")
    y = fit.spec.design.y
    yrep = fit.posterior_predict(ndraws=ndraws, seed=seed)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    if type == "dens_overlay":
        lo = min(y.min(), np.quantile(yrep, 0.001))
        hi = max(y.max(), np.quantile(yrep, 0.999))
        grid = np.linspace(lo, hi, 512)
        curves = np.array([gaussian_kde(row)(grid) for row in yrep])
        dens_y = gaussian_kde(y)(grid)
        for c in curves:
            ax.plot(grid, c, color="#b3cde0", lw=0.7, alpha=0.8)
        ax.plot(grid, dens_y, color="#011f4b", lw=2, label="y")
        ax.plot([], [], color="#b3cde0", label="y_rep")
        data = {"x": grid, "y": dens_y, "yrep": curves}
    else:
        vals = np.arange(int(min(y.min(), yrep.min())), int(max(y.max(), yrep.max())) + 1)
        obs = np.array([(y == v).sum() for v in vals], dtype=float)
        rep = np.array([[(row == v).sum() for v in vals] for row in yrep], dtype=float)
        mean, lower, upper = rep.mean(0), np.quantile(rep, 0.025, 0), np.quantile(rep, 0.975, 0)
        ax.bar(vals, obs, color="#b3cde0", edgecolor="#6497b1", label="y")
        ax.errorbar(vals, mean, yerr=[mean - lower, upper - mean], fmt="o", color="#011f4b", ms=3,
                    label="y_rep")
        data = {"x": vals, "y": obs, "yrep": pd.DataFrame({"mean": mean, "lower": lower, "upper": upper},
                                                         index=vals)}
    ax.set_xlabel(fit.spec.design.formula.response.column)
    ax.legend()
    fig.stanhier_data = data
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------- conditional effects
def distinct_colors(n: int) -> list:
    """``n`` different colours: matplotlib's colour cycle while it lasts (10), then tab20's
    dark and light halves (20), then evenly spaced hues.

    >>> tuple(len(set(distinct_colors(n))) for n in (3, 12, 30))
    (3, 12, 30)
    """
    import matplotlib
    from matplotlib import colors as mcolors

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if n <= len(cycle):
        return [mcolors.to_rgba(c) for c in cycle[:n]]
    if n <= 20:
        tab = matplotlib.colormaps["tab20"].colors
        return [tuple(tab[k]) + (1.0,) for k in list(range(0, 20, 2)) + list(range(1, 20, 2))][:n]
    return [tuple(float(c) for c in mcolors.hsv_to_rgb((h, 0.75, 0.85))) + (1.0,) for h in np.arange(n) / n]


def _typical(series: pd.Series) -> Any:
    """brms's value for a predictor held constant: mean of numbers, first level otherwise."""
    if pd.api.types.is_bool_dtype(series):
        return bool(series.mode().iloc[0])
    if pd.api.types.is_numeric_dtype(series):
        return float(series.mean())
    return _levels(series)[0]


def _levels(series: pd.Series) -> list:
    if isinstance(series.dtype, pd.CategoricalDtype):
        return [c for c in series.cat.categories if c in set(series.unique())]
    uniq = pd.unique(series.dropna())
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def conditional_effects(fit: Any, effects: str, *, by: str | None = None, re_formula: Any = "NA",
                        conditions: dict[str, Any] | None = None, resolution: int = 100,
                        prob: float = 0.95, by_levels: Sequence[Any] | None = None,
                        max_levels: int = 12, path: Any = None, ax: Any = None):
    """Expected response against one predictor (brms's ``conditional_effects``).

    ``effects``: a predictor (``"temperature"``) or ``"x:by"``; ``by=`` names a
    categorical predictor or a grouping factor whose levels get one line each (numeric
    ``by``: mean and mean ± SD, as brms). Other predictors are held at their mean
    (numbers) or first level (categories), or at ``conditions``. ``re_formula`` defaults
    to ``"NA"`` (population level, as brms); when ``by`` is a grouping factor it
    defaults to ``None`` so the lines show the group-level effects of each level.
    ``by_levels`` chooses the levels drawn; otherwise the first ``max_levels`` (12) are,
    with a warning and a note in the legend's title when ``by`` has more. Each level gets
    its own colour (:func:`distinct_colors`); the legend sits beside the axes.

    Bayesian fits: the line is the posterior mean of :meth:`posterior_epred` at each x,
    the band its central ``prob`` interval. ML fits: the line is the point prediction
    (``predict(type="response")``), no band. ``fig.stanhier_data`` is the plotted table
    (the effect columns, ``estimate__``, ``se__``, ``lower__``, ``upper__``).

    >>> fig = sh.conditional_effects(fit, "Days", by="Subject", path="ce.png")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if not isinstance(effects, str) or not effects.strip():
        raise ArgumentError("effects must name a predictor, e.g. 'temperature' or 'temperature:weather'.")
    parts = [p.strip() for p in effects.split(":")]
    if len(parts) > 2 or (len(parts) == 2 and by is not None):
        raise ArgumentError(f"effects {effects!r}: give one predictor, optionally ':by' (or by=), not more.")
    x = parts[0]
    by = parts[1] if len(parts) == 2 else by
    d = _design(fit)
    data = d.data
    fixed_vars = formula_variables(d.formula.fixed)
    group_cols = [c for gt in d.terms for c in gt.term.group]
    term_vars = [v for gt in d.terms for v in formula_variables(gt.term.expr)]
    for name in [x] + ([by] if by else []):
        if name not in data.columns:
            raise ArgumentError(f"conditional_effects: {name!r} is not a column of the fit's data "
                                f"(predictors: {', '.join(fixed_vars)}).")
    if x not in fixed_vars + term_vars:
        raise ArgumentError(f"conditional_effects: {x!r} is not a predictor of the model "
                            f"(predictors: {', '.join(fixed_vars)}).")
    by_is_group = by is not None and by in group_cols and by not in fixed_vars
    if by_is_group and isinstance(re_formula, str) and re_formula == "NA":
        re_formula = None
    if not 0 < prob < 1:
        raise ArgumentError(f"prob must be in (0, 1), not {prob!r}.")

    # the grid
    xs = data[x]
    x_numeric = pd.api.types.is_numeric_dtype(xs) and not pd.api.types.is_bool_dtype(xs)
    x_grid = np.linspace(xs.min(), xs.max(), int(resolution)) if x_numeric else _levels(xs)
    by_note = ""  # said in the legend's title when not every level is drawn
    if by is None:
        by_vals: list[Any] = [None]
    elif by_levels is not None:
        by_vals = list(by_levels)
    elif pd.api.types.is_numeric_dtype(data[by]) and not by_is_group and by not in group_cols:
        m, s = float(data[by].mean()), float(data[by].std())
        by_vals = [m + s, m, m - s]
    else:
        all_levels = _levels(data[by])
        by_vals = all_levels[:max_levels]
        if len(all_levels) > len(by_vals):
            warnings.warn(f"conditional_effects: {by!r} has {len(all_levels)} levels; the plot draws the first "
                          f"{len(by_vals)} (max_levels={max_levels}). Choose the levels with by_levels=[...] "
                          "or draw more with max_levels=.", StanhierWarning, stacklevel=user_stacklevel())
            by_note = f"{len(by_vals)} of {len(all_levels)} levels"
    needed = list(dict.fromkeys(fixed_vars + (term_vars + group_cols if re_formula is not None
                                              and not (isinstance(re_formula, str) and re_formula == "NA")
                                              else [])))
    base = {c: _typical(data[c]) for c in needed if c not in (x, by)}
    if conditions:
        unknown = [c for c in conditions if c not in data.columns]
        if unknown:
            raise ArgumentError(f"conditions name column(s) {unknown} that the data does not have.")
        base.update(conditions)
    frames = []
    for bv in by_vals:
        f = pd.DataFrame({x: x_grid})
        for c, v in base.items():
            f[c] = v
        if by is not None:
            f[by] = bv
        frames.append(f)
    grid = pd.concat(frames, ignore_index=True)
    for c in needed:
        if isinstance(data[c].dtype, pd.CategoricalDtype) and c in grid:
            grid[c] = pd.Categorical(grid[c], categories=data[c].cat.categories)

    lo_q, hi_q = (1 - prob) / 2, 1 - (1 - prob) / 2
    if _is_bayes(fit):
        ep = fit.posterior_epred(grid, re_formula=re_formula)
        est, se = ep.mean(0), ep.std(0, ddof=1)
        lower, upper = np.quantile(ep, lo_q, axis=0), np.quantile(ep, hi_q, axis=0)
    else:
        est = np.asarray(fit.predict(grid, re_formula=re_formula, type="response"), float)
        se = lower = upper = np.full(len(est), np.nan)
    table = grid[[x] + ([by] if by else [])].copy()
    table["estimate__"], table["se__"], table["lower__"], table["upper__"] = est, se, lower, upper

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    colors = distinct_colors(len(by_vals))
    for i, bv in enumerate(by_vals):
        sub = table if by is None else table[table[by] == bv]
        col = colors[i]
        label = None if by is None else f"{bv:.3g}" if isinstance(bv, float) else str(bv)  # title: by
        if x_numeric:
            ax.plot(sub[x].to_numpy(), sub["estimate__"].to_numpy(), color=col, label=label)
            if np.isfinite(sub["lower__"]).all():
                ax.fill_between(sub[x].to_numpy(float), sub["lower__"].to_numpy(), sub["upper__"].to_numpy(),
                                color=col, alpha=0.2 if by is None else 0.1, lw=0)
        else:
            pos = np.arange(len(sub)) + (i - (len(by_vals) - 1) / 2) * 0.1
            err = None
            if np.isfinite(sub["lower__"]).all():
                err = [sub["estimate__"] - sub["lower__"], sub["upper__"] - sub["estimate__"]]
            ax.errorbar(pos, sub["estimate__"].to_numpy(), yerr=err, fmt="o", color=col, label=label)
            ax.set_xticks(np.arange(len(sub)), [str(v) for v in sub[x]])
    ax.set_xlabel(x)
    ax.set_ylabel(d.formula.response.column)
    if by is not None:  # beside the axes, where it hides no line
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  title=f"{by} ({by_note})" if by_note else by, title_fontsize="small",
                  ncols=1 + len(by_vals) // 25)
    fig.stanhier_data = table.reset_index(drop=True)
    _save(fig, path)
    return fig


# --------------------------------------------------------------------------- caterpillar
def _ranef_long(fit: Any, prob: float) -> pd.DataFrame:
    """Long table (group, coef, level, estimate, lower, upper) of the group-level effects."""
    rows = []
    if _is_bayes(fit):
        lo_q, hi_q = (1 - prob) / 2, 1 - (1 - prob) / 2
        for g, (arr, coefs, levels) in fit.group_draws().items():
            flat = arr.reshape((-1,) + arr.shape[2:])
            for m, c in enumerate(coefs):
                v = flat[:, :, m]
                est = v.mean(0)
                lo, hi = np.quantile(v, lo_q, axis=0), np.quantile(v, hi_q, axis=0)
                for j, lev in enumerate(levels):
                    rows.append((g, c, lev, est[j], lo[j], hi[j]))
    else:
        from scipy.stats import norm

        z = norm.ppf(1 - (1 - prob) / 2)
        frame = fit.ranef(as_frame=True)
        for r in frame.itertuples(index=False):
            rows.append((r.grpvar, r.term, r.grp, r.condval, r.condval - z * r.condsd, r.condval + z * r.condsd))
    return pd.DataFrame(rows, columns=["group", "coef", "level", "estimate", "lower", "upper"])


def plot_ranef(fit: Any, group: str | None = None, *, prob: float = 0.95, path: Any = None):
    """Caterpillar plot: each level's group-level effect with its interval, sorted.

    Bayesian fits: posterior means with central ``prob`` intervals of ``r_<group>``.
    ML fits: conditional modes ± z·(conditional SD) (lme4's ``dotplot(ranef(fit,
    condVar=TRUE))``). One panel per (grouping factor, coefficient).
    ``fig.stanhier_data`` is the long table (group, coef, level, estimate, lower, upper).

    >>> fig = sh.plot_ranef(fit, path="ranef.png")                            # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if not 0 < prob < 1:
        raise ArgumentError(f"prob must be in (0, 1), not {prob!r}.")
    table = _ranef_long(fit, prob)
    if table.empty:
        raise DataError("The model has no group-level effects to plot.")
    if group is not None:
        if group not in set(table["group"]):
            raise ArgumentError(f"Unknown grouping factor {group!r}; the model has "
                                f"{', '.join(dict.fromkeys(table['group']))}.")
        table = table[table["group"] == group]
    panels = list(dict.fromkeys(zip(table["group"], table["coef"])))
    n_lev = table.groupby(["group", "coef"]).size().max()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), max(2.5, 0.22 * n_lev + 1)),
                             squeeze=False)
    for ax, (g, c) in zip(axes[0], panels):
        sub = table[(table["group"] == g) & (table["coef"] == c)].sort_values("estimate")
        pos = np.arange(len(sub))
        ax.hlines(pos, sub["lower"], sub["upper"], color="#6497b1")
        ax.plot(sub["estimate"].to_numpy(), pos, "o", color="#011f4b", ms=3)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(pos, [str(v) for v in sub["level"]], fontsize="small")
        ax.set_title(f"{g}: {c}")
    fig.tight_layout()
    fig.stanhier_data = table.reset_index(drop=True)
    _save(fig, path)
    return fig
