"""Model checking and comparison of Bayesian fits: ``loo``, ``waic``, ``loo_compare``,
``bayes_R2``, ``hypothesis`` (likelihood-ratio tests of ML fits: :mod:`stanhier.ml.anova`).

Every function takes a fit duck-typed and uses only its public API (``idata``,
``log_lik()``, ``posterior_epred()``, ``fixed_draws()``, ``spec``), so this module does
not import the fit class.

Example
-------
>>> import stanhier as sh                                                   # doctest: +SKIP
>>> sh.loo_compare(fit_slope, fit_int)                                     # doctest: +SKIP
            elpd_diff  se_diff  elpd_loo  se_elpd_loo  p_loo  ...
fit_slope         0.0      0.0  ...
>>> sh.hypothesis(fit, "Days > 0")                                         # doctest: +SKIP
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError, StanhierWarning, user_stacklevel
from .summary import summarise_draws, summary_frame

if TYPE_CHECKING:  # pragma: no cover
    from .fit import BrmsFit

__all__ = ["loo", "waic", "loo_compare", "bayes_R2", "hypothesis", "pointwise_loglik"]


# --------------------------------------------------------------------------- loo / waic
def pointwise_loglik(fit: "BrmsFit"):
    """InferenceData holding the fit's posterior and its pointwise log-likelihood ``log_lik``.

    The fit's ``idata`` is used when it already has the ``log_likelihood`` group (it is
    left out for very large data); otherwise it is computed from the draws.
    """
    idata = fit.idata
    if "log_likelihood" in idata.groups():
        return idata
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ll = az.from_dict(log_likelihood={"log_lik": fit.log_lik()})
    out = idata.copy()
    out.extend(ll)
    return out


def _fit_label(fit: Any, default: str) -> str:
    return getattr(fit, "name", None) or default


def loo(fit: "BrmsFit", *, pointwise: bool = True, reff: float | None = None, name: str = "fit"):
    """Pareto-smoothed importance-sampling LOO of a Bayesian fit (ArviZ's ``az.loo``).

    Returns ArviZ's ``ELPDData`` (``elpd_loo``, ``se``, ``p_loo``, ``loo_i``,
    ``pareto_k``). Observations with Pareto k above ArviZ's threshold
    (``min(1 - 1/log10(S), 0.7)`` for S draws) are reported with a
    :class:`~stanhier.errors.StanhierWarning` (as brms), naming how many and which.

    >>> res = sh.loo(fit); res.elpd_loo, res.se                             # doctest: +SKIP
    """
    import arviz as az

    idata = pointwise_loglik(fit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(idata, pointwise=True, var_name="log_lik", reff=reff)
    k = np.asarray(res.pareto_k)
    thr = float(getattr(res, "good_k", 0.7) or 0.7)
    bad = np.flatnonzero(k > thr)
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        warnings.warn(
            f"Found {bad.size} observation(s) with a pareto_k > {thr:.2g} in model {name!r} (rows {shown}): "
            "the PSIS-LOO estimate may be unreliable. Consider K-fold cross-validation or refitting "
            "without those observations (brms's reloo/kfold).",
            StanhierWarning, stacklevel=user_stacklevel(),
        )
    return res


def waic(fit: "BrmsFit", *, name: str = "fit"):
    """WAIC of a Bayesian fit (ArviZ's ``az.waic``); p_waic > 0.4 warnings are re-issued.

    >>> sh.waic(fit).elpd_waic                                              # doctest: +SKIP
    """
    import arviz as az

    idata = pointwise_loglik(fit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = az.waic(idata, pointwise=True, var_name="log_lik")
    if getattr(res, "warning", False) or any("p_waic" in str(w.message) for w in caught):
        warnings.warn(
            f"Model {name!r}: some pointwise p_waic estimates exceed 0.4; WAIC may be unreliable. "
            "We recommend loo() instead.", StanhierWarning, stacklevel=user_stacklevel(),
        )
    return res


def loo_compare(*fits: Any, names: Sequence[str] | None = None, criterion: str = "loo") -> pd.DataFrame:
    """Compare fits by expected log predictive density (brms/loo's ``loo_compare``).

    ``fits``: BrmsFit objects (or ``ELPDData`` results of :func:`loo`/:func:`waic`), all
    fitted to the same observations. Rows ordered best first; ``elpd_diff`` is each
    model's difference to the best and ``se_diff`` the standard error of that difference
    (``sqrt(N * var(pointwise differences))``, as the loo package).

    >>> sh.loo_compare(fit1, fit2, names=["slope", "intercept"])             # doctest: +SKIP
    """
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if len(fits) < 2:
        raise ArgumentError("loo_compare needs at least two fits (or loo results) to compare.")
    if criterion not in ("loo", "waic"):
        raise ArgumentError(f"criterion must be 'loo' or 'waic', not {criterion!r}.")
    if names is None:
        names = [_fit_label(f, f"fit{i + 1}") for i, f in enumerate(fits)]
    names = list(names)
    if len(names) != len(fits) or len(set(names)) != len(names):
        raise ArgumentError(f"names must give one distinct name per fit ({len(fits)}), got {names!r}.")
    results = []
    for f, n in zip(fits, names):
        if hasattr(f, "spec") and hasattr(f, "raw"):
            results.append(loo(f, name=n) if criterion == "loo" else waic(f, name=n))
        else:
            results.append(f)
    key_i, key = ("loo_i", "elpd_loo") if criterion == "loo" else ("waic_i", "elpd_waic")
    pts = []
    for r, n in zip(results, names):
        if not hasattr(r, key_i) and key_i not in r:
            raise ArgumentError(f"{n!r} is not a fit or a pointwise {criterion} result.")
        pts.append(np.asarray(r[key_i]).ravel())
    sizes = {len(p) for p in pts}
    if len(sizes) != 1:
        raise DataError(
            "loo_compare: the fits have different numbers of observations "
            f"({', '.join(f'{n}: {len(p)}' for n, p in zip(names, pts))}); compare only models "
            "fitted to the same data."
        )
    n_obs = sizes.pop()
    elpd = np.array([p.sum() for p in pts])
    best = int(np.argmax(elpd))
    rows = []
    for i, (r, n) in enumerate(zip(results, names)):
        diff = pts[i] - pts[best]
        p_key = "p_loo" if criterion == "loo" else "p_waic"
        rows.append({
            "model": n,
            "elpd_diff": float(diff.sum()),
            "se_diff": float(np.sqrt(n_obs * np.var(diff))) if i != best else 0.0,
            key: float(elpd[i]),
            f"se_{key}": float(r["se"]),
            p_key: float(r[p_key]),
            ("looic" if criterion == "loo" else "waic"): float(-2 * elpd[i]),
            ("se_looic" if criterion == "loo" else "se_waic"): float(2 * r["se"]),
        })
    out = pd.DataFrame(rows).set_index("model").sort_values("elpd_diff", ascending=False)
    out.index.name = None
    return out


# --------------------------------------------------------------------------- bayes_R2
def bayes_R2(fit: "BrmsFit", *, re_formula: Any = None, summary: bool = True,  # noqa: N802
             probs: Sequence[float] = (0.025, 0.975), robust: bool = False,
             ndraws: int | None = None) -> pd.DataFrame | np.ndarray:
    """Bayesian R² (Gelman, Goodrich, Gabry & Vehtari 2019), computed as brms.

    Per draw ``s``: ``var(ypred_s) / (var(ypred_s) + var(y - ypred_s))`` with ``ypred``
    the expected values (:meth:`posterior_epred`). ``summary=True``: one row ``R2`` with
    Estimate, Est.Error, Q2.5, Q97.5; else the vector of draws.

    >>> sh.bayes_R2(fit)                                                     # doctest: +SKIP
        Estimate  Est.Error  Q2.5  Q97.5
    R2      0.80 ...
    """
    y = fit.spec.design.y
    ypred = fit.posterior_epred(re_formula=re_formula, ndraws=ndraws)
    var_fit = ypred.var(axis=1, ddof=1)
    var_res = (y[None, :] - ypred).var(axis=1, ddof=1)
    r2 = var_fit / (var_fit + var_res)
    if not summary:
        return r2
    return summary_frame(summarise_draws(r2[:, None], probs, robust), probs, pd.Index(["R2"]))


# --------------------------------------------------------------------------- hypothesis
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow,
            ast.USub, ast.UAdd, ast.Name, ast.Load, ast.Constant)


def _fixed_draw_table(fit: "BrmsFit") -> dict[str, np.ndarray]:
    beta = fit.fixed_draws()
    names = list(fit.spec.design.fixed_names)
    table = {n: beta[:, j] for j, n in enumerate(names)}
    table.update({f"b_{n}": v for n, v in list(table.items())})
    return table


def _eval_side(text: str, table: dict[str, np.ndarray], full: str) -> np.ndarray | float:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ArgumentError(f"Cannot parse {text.strip()!r} in hypothesis {full!r}.") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ArgumentError(
                f"Hypothesis {full!r}: only +, -, *, /, ^, numbers and fixed-effect names are allowed "
                f"(found {type(node).__name__})."
            )
        if isinstance(node, ast.Name) and node.id not in table:
            avail = [n for n in table if not n.startswith("b_")]
            raise ArgumentError(
                f"Hypothesis {full!r}: {node.id!r} is not a population-level effect of the model; "
                f"use one of {', '.join(avail)}."
            )

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)):
                raise ArgumentError(f"Hypothesis {full!r}: {node.value!r} is not a number.")
            return float(node.value)
        if isinstance(node, ast.Name):
            return table[node.id]
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        a, b = ev(node.left), ev(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        return a ** b

    return ev(tree)


def hypothesis(fit: "BrmsFit", hypothesis: str | Sequence[str], alpha: float = 0.05) -> pd.DataFrame:
    """Posterior evidence for linear statements of fixed effects (brms's ``hypothesis``).

    Each hypothesis is ``lhs <op> rhs`` with ``op`` one of ``<``, ``>``, ``=``, written
    with population-level effect names (``"Days > 0"``, ``"Intercept - 250 = 0"``,
    ``"2 * Days > Intercept / 25"``). As brms, it is rewritten as
    ``(lhs)-(rhs) <op> 0`` and summarised over the draws of ``lhs - rhs``:

    * Estimate, Est.Error: posterior mean and SD;
    * CI.Lower, CI.Upper: ``1 - alpha`` interval; one-sided (the other end infinite)
      for ``<`` / ``>``, two-sided for ``=``;
    * Evid.Ratio, Post.Prob: for ``>``, ``P(h > 0) / P(h <= 0)`` and ``P(h > 0)``
      (mirror for ``<``); for ``=`` they need prior draws (Savage-Dickey) and are NaN;
    * Star: ``*`` when the interval excludes 0.

    >>> sh.hypothesis(fit, "Days > 0")                                         # doctest: +SKIP
      Hypothesis  Estimate  Est.Error  CI.Lower  CI.Upper  Evid.Ratio  Post.Prob Star
    0 (Days) > 0     10.47       1.73      7.66       inf         inf        1.0    *
    """
    if not 0 < alpha < 1:
        raise ArgumentError(f"alpha must be in (0, 1), not {alpha!r}.")
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    if not hyps or not all(isinstance(h, str) for h in hyps):
        raise ArgumentError("hypothesis must be a string such as 'Days > 0' or a list of such strings.")
    table = _fixed_draw_table(fit)
    rows = []
    for h in hyps:
        text = h.replace("==", "=")
        signs = re.findall(r"<=|>=|<|>|=", text)
        if len(signs) != 1:
            raise ArgumentError(
                f"Hypothesis {h!r} needs exactly one of '<', '>' or '=' (e.g. 'Days > 0', 'Days = 10')."
            )
        sign = signs[0][0]
        lhs, rhs = re.split(r"<=|>=|<|>|=", text)
        if not lhs.strip() or not rhs.strip():
            raise ArgumentError(f"Hypothesis {h!r} has an empty side.")
        value = _eval_side(lhs, table, h) - _eval_side(rhs, table, h)
        S = len(next(iter(table.values())))
        value = np.broadcast_to(np.asarray(value, float), (S,))
        rs = rhs.replace(" ", "")
        label = f"({lhs.replace(' ', '')})" + ("" if rs in ("0", "0.0") else f"-({rs})") + f" {sign} 0"
        est, err = float(value.mean()), float(value.std(ddof=1))
        if sign == "=":
            lo, hi = np.quantile(value, [alpha / 2, 1 - alpha / 2])
            er, pp = np.nan, np.nan
        elif sign == ">":
            lo, hi = float(np.quantile(value, alpha)), np.inf
            p = float(np.mean(value > 0))
            er, pp = (p / (1 - p) if p < 1 else np.inf), p
        else:
            lo, hi = -np.inf, float(np.quantile(value, 1 - alpha))
            p = float(np.mean(value < 0))
            er, pp = (p / (1 - p) if p < 1 else np.inf), p
        star = "*" if (lo > 0 or hi < 0) else ""
        rows.append({"Hypothesis": label, "Estimate": est, "Est.Error": err, "CI.Lower": float(lo),
                     "CI.Upper": float(hi), "Evid.Ratio": er, "Post.Prob": pp, "Star": star})
    return pd.DataFrame(rows, columns=["Hypothesis", "Estimate", "Est.Error", "CI.Lower", "CI.Upper",
                                       "Evid.Ratio", "Post.Prob", "Star"])
