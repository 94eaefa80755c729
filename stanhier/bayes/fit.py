"""Stage 6 (Bayesian): results of ``brm`` as ArviZ data with brms's names and summaries.

User-facing names are made here, once: :class:`NameTable` maps positional Stan
variables (``b``, ``sd_1``, ``cor_1``, ``r_1``) to brms's names
(``b_temperature``, ``sd_weather__Intercept``, ``cor_weather__Intercept__temperature``,
``r_weather``).

Example
-------
>>> import pandas as pd, stanhier as sh                      # doctest: +SKIP
>>> fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, seed=1)  # doctest: +SKIP
>>> fit.fixef()                                               # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..backends.base import RawSample
from ..stan.codegen import ModelSpec
from ..errors import StanhierWarning
from .predict import BayesPostestimation

__all__ = ["NameEntry", "NameTable", "BrmsFit", "make_names"]


@dataclass(frozen=True)
class NameEntry:
    """One scalar summary parameter: its brms name, Stan location and printed label."""

    name: str  #: brms variable name, e.g. ``sd_weather__Intercept``
    stan: str  #: Stan variable, e.g. ``sd_1``
    index: tuple[int, ...]  #: 0-based index into the Stan variable
    block: str  #: ``fixed``, ``random``, ``family``
    group: str  #: grouping factor for ``random`` rows
    label: str  #: row label in ``summary()``: ``sd(Intercept)``, ``Intercept``, ``sigma``


@dataclass(frozen=True)
class NameTable:
    """All user-facing names of a Bayesian fit, made once from the design."""

    entries: tuple[NameEntry, ...]
    #: per group name: (list of (term k, coef names)), level labels
    groups: tuple[tuple[str, tuple[tuple[int, tuple[str, ...]], ...], tuple[str, ...]], ...]

    def by_block(self, block: str) -> list[NameEntry]:
        return [e for e in self.entries if e.block == block]


def make_names(spec: ModelSpec) -> NameTable:
    d = spec.design
    entries: list[NameEntry] = []
    # group-level
    groups: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    levels: dict[str, tuple[str, ...]] = {}
    for k, gt in enumerate(d.terms, start=1):
        g = gt.term.group_name
        groups.setdefault(g, []).append((k, gt.coef_names))
        levels[g] = gt.level_labels("_")
    for g, items in groups.items():
        for k, coefs in items:
            for m, c in enumerate(coefs):
                entries.append(NameEntry(f"sd_{g}__{c}", f"sd_{k}", (m,), "random", g, f"sd({c})"))
        for k, coefs in items:
            if d.terms[k - 1].correlated:
                idx = 0
                for j2 in range(len(coefs)):
                    for j1 in range(j2):
                        entries.append(NameEntry(f"cor_{g}__{coefs[j1]}__{coefs[j2]}", f"cor_{k}", (idx,),
                                                 "random", g, f"cor({coefs[j1]},{coefs[j2]})"))
                        idx += 1
    # population-level
    if d.has_intercept:
        entries.append(NameEntry("b_Intercept", "b_Intercept", (), "fixed", "", "Intercept"))
    slopes = [n for n in d.fixed_names if not (d.has_intercept and n == "Intercept")]
    for j, n in enumerate(slopes):
        entries.append(NameEntry(f"b_{n}", "b", (j,), "fixed", "", n))
    for aux in spec.family.aux:
        entries.append(NameEntry(aux, aux, (), "family", "", aux))
    return NameTable(entries=tuple(entries),
                     groups=tuple((g, tuple(items), levels[g]) for g, items in groups.items()))


def _summary_stats(values: np.ndarray) -> dict[str, float]:
    """brms's columns for one (chain, draw) array: rank-normalised Rhat, bulk/tail ESS."""
    import arviz as az

    flat = values.reshape(-1)
    out = {"Estimate": float(np.mean(flat)), "Est.Error": float(np.std(flat, ddof=1)),
           "l-95% CI": float(np.quantile(flat, 0.025)), "u-95% CI": float(np.quantile(flat, 0.975))}
    if values.shape[0] * values.shape[1] > 3 and np.ptp(flat) > 0:
        out["Rhat"] = float(az.rhat(values, method="rank")) if values.shape[1] >= 4 else float("nan")
        out["Bulk_ESS"] = float(az.ess(values, method="bulk"))
        out["Tail_ESS"] = float(az.ess(values, method="tail"))
    else:
        out.update({"Rhat": float("nan"), "Bulk_ESS": float("nan"), "Tail_ESS": float("nan")})
    return out


def _column_summary(name: str, v: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """brms's per-level columns (Estimate, Est.Error, Q2.5, Q97.5) of (draws, levels) draws."""
    return {(name, "Estimate"): v.mean(0), (name, "Est.Error"): v.std(0, ddof=1),
            (name, "Q2.5"): np.quantile(v, 0.025, axis=0), (name, "Q97.5"): np.quantile(v, 0.975, axis=0)}


class BrmsFit(BayesPostestimation):
    """A Bayesian fit (``brm``): draws, names, summaries and post-estimation.

    Attributes: ``idata`` (ArviZ InferenceData), ``spec`` (the model), ``cache_hit``
    (whether the compiled program came from the cache), ``sample_seconds``.
    """

    def __init__(self, spec: ModelSpec, raw: RawSample, *, backend: str, cache_hit: bool,
                 compile_seconds: float, data_name: str = "data") -> None:
        self.spec = spec
        self.raw = raw
        self.backend = backend
        self.cache_hit = cache_hit
        self.compile_seconds = compile_seconds
        self.sample_seconds = raw.seconds
        self.data_name = data_name
        self.names = make_names(spec)
        self._summary: pd.DataFrame | None = None
        self.idata = self._make_idata()

    # ------------------------------------------------------------------ data
    def draws_of(self, entry: NameEntry) -> np.ndarray:
        """(chain, draw) array of one summary parameter."""
        arr = self.raw.draws[entry.stan]
        return arr[(slice(None), slice(None)) + entry.index]

    def _r_draws(self) -> dict[str, tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]]:
        """Per group: (chain, draw, level, coef) draws of the group-level effects, coef names, level names."""
        out = {}
        for g, items, levels in self.names.groups:
            arrays = [self.raw.draws[f"r_{k}"] for k, _ in items]
            coefs = tuple(c for _, cs in items for c in cs)
            out[g] = (np.concatenate(arrays, axis=-1), coefs, levels)
        return out

    def _make_idata(self):
        import arviz as az

        posterior: dict[str, np.ndarray] = {}
        coords: dict[str, Any] = {}
        dims: dict[str, list[str]] = {}
        for e in self.names.entries:
            posterior[e.name] = self.draws_of(e)
        for g, (arr, coefs, levels) in self._r_draws().items():
            name = f"r_{g}"
            posterior[name] = arr
            coords[g] = list(levels)
            coords[f"{g}__coef"] = list(coefs)
            dims[name] = [g, f"{g}__coef"]
        if self.spec.design.has_intercept:
            posterior["Intercept"] = self.raw.draws["Intercept"]
        posterior["lprior"] = self.raw.draws["lprior"]
        stats_map = {"lp__": "lp", "accept_stat__": "acceptance_rate", "stepsize__": "step_size",
                     "treedepth__": "tree_depth", "n_leapfrog__": "n_steps", "divergent__": "diverging",
                     "energy__": "energy"}
        sample_stats = {stats_map[k]: v for k, v in self.raw.stats.items()}
        if "diverging" in sample_stats:
            sample_stats["diverging"] = sample_stats["diverging"].astype(bool)
        d = self.spec.design
        observed = {"y": d.y}
        kwargs = dict(posterior=posterior, sample_stats=sample_stats, observed_data=observed,
                      coords={**coords, "obs": np.arange(d.N)},
                      dims={**dims, "y": ["obs"], "log_lik": ["obs"]})
        n_draws = posterior["lprior"].size
        if n_draws * d.N <= 5e7:
            kwargs["log_likelihood"] = {"log_lik": self.log_lik()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return az.from_dict(**kwargs)

    # ------------------------------------------------------------------ linear predictor
    def _aux_draws(self) -> dict[str, np.ndarray]:
        return {a: self.raw.draws[a].reshape(-1) for a in self.spec.family.aux}

    def _fixed_draws(self) -> np.ndarray:
        """(S, K) draws of the coefficients of X (uncentred, intercept first if any)."""
        d = self.spec.design
        b_draws = self.raw.draws["b"]
        b = b_draws.reshape(b_draws.shape[0] * b_draws.shape[1], b_draws.shape[-1])
        if d.has_intercept:
            return np.column_stack([self.raw.draws["b_Intercept"].reshape(-1), b])
        return b

    def log_lik(self) -> np.ndarray:
        """(chain, draw, N) pointwise log-likelihood."""
        from .predict import prepare

        d = self.spec.design
        eta = prepare(self).eta(slice(None))  # (S, N): every group-level term, all draws
        aux = {k: v[:, None] for k, v in self._aux_draws().items()}
        ll = self.spec.family.loglik(d.y[None, :], eta, aux, None if d.trials is None else d.trials[None, :])
        c, n = self.raw.stats["lp__"].shape if "lp__" in self.raw.stats else (1, eta.shape[0])
        return ll.reshape(c, -1, d.N)

    # ------------------------------------------------------------------ summaries
    def summary_table(self) -> pd.DataFrame:
        """One row per printed parameter: block, group, label and brms's columns."""
        if self._summary is None:
            rows = []
            for e in self.names.entries:
                stats = _summary_stats(self.draws_of(e))
                rows.append({"name": e.name, "block": e.block, "group": e.group, "label": e.label, **stats})
            self._summary = pd.DataFrame(rows).set_index("name")
        return self._summary

    def summary(self) -> str:
        """brms's printed summary (also ``print(fit)``)."""
        from .summary import format_brms_summary

        return format_brms_summary(self)

    def __repr__(self) -> str:
        return self.summary()

    __str__ = __repr__

    def fixef(self) -> pd.DataFrame:
        """Population-level effects: Estimate, Est.Error, Q2.5, Q97.5 (as brms)."""
        t = self.summary_table()
        t = t[t.block == "fixed"]
        return pd.DataFrame({"Estimate": t["Estimate"].to_numpy(), "Est.Error": t["Est.Error"].to_numpy(),
                             "Q2.5": t["l-95% CI"].to_numpy(), "Q97.5": t["u-95% CI"].to_numpy()},
                            index=list(t["label"]))

    def ranef(self) -> dict[str, pd.DataFrame]:
        """Group-level effects per grouping factor: rows level, columns (coef, statistic)."""
        out = {}
        for g, (arr, coefs, levels) in self._r_draws().items():
            flat = arr.reshape((-1,) + arr.shape[2:])
            cols = {}
            for m, c in enumerate(coefs):
                cols.update(_column_summary(c, flat[:, :, m]))
            out[g] = pd.DataFrame(cols, index=pd.Index(levels, name=g))
        return out

    def coef(self) -> dict[str, pd.DataFrame]:
        """Population + group-level effects per level (brms's ``coef``)."""
        fixed_names = list(self.fixef().index)
        beta = self._fixed_draws()
        out = {}
        for g, (arr, coefs, levels) in self._r_draws().items():
            flat = arr.reshape((-1,) + arr.shape[2:])
            cols = {}
            for j, name in enumerate(fixed_names):
                v = np.repeat(beta[:, [j]], len(levels), axis=1)
                if name in coefs:
                    v = v + flat[:, :, coefs.index(name)]
                cols.update(_column_summary(name, v))
            out[g] = pd.DataFrame(cols, index=pd.Index(levels, name=g))
        return out

    def VarCorr(self) -> dict[str, pd.DataFrame]:  # noqa: N802 - brms's name
        """SDs (and correlations) per grouping factor, plus the residual SD, as summaries."""
        t = self.summary_table()
        out = {}
        for g, _, _ in self.names.groups:
            rows = t[(t.block == "random") & (t.group == g)]
            out[g] = rows[["label", "Estimate", "Est.Error", "l-95% CI", "u-95% CI"]].set_index("label")
        if "sigma" in t.index:
            out["residual__"] = t.loc[["sigma"], ["label", "Estimate", "Est.Error", "l-95% CI", "u-95% CI"]].set_index("label")
        return out

    # ------------------------------------------------------------------ program
    def stancode(self) -> str:
        """The generated Stan program."""
        return self.spec.code

    def standata(self) -> dict[str, Any]:
        """The data dict passed to Stan."""
        return self.spec.standata()

    def prior_summary(self) -> pd.DataFrame:
        """The priors used (defaults resolved), as brms's ``prior_summary``."""
        return self.spec.priors.table()

    def save(self, path: Any, **kwargs: Any) -> Any:
        """Write the run record (formula, priors, Stan code and data, draws, versions) to folder ``path``.

        ``sh.load(path)`` restores the fit without compiling or sampling; see :func:`stanhier.record.save`.
        """
        from ..record import save

        return save(self, path, **kwargs)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, Any]:
        """Counts and flags: divergences, tree-depth hits, max Rhat, min ESS."""
        st = self.raw.stats
        s = self.raw.settings
        table = self.summary_table()
        div = int(np.sum(st.get("divergent__", np.zeros(1))))
        tree = int(np.sum(st.get("treedepth__", np.zeros(1)) >= s.max_treedepth))
        energy = st.get("energy__")
        ebfmi = [float("nan")]
        if energy is not None and energy.shape[1] > 2:
            ebfmi = [float(np.sum(np.diff(e) ** 2) / np.sum((e - e.mean()) ** 2)) for e in energy]
        return {
            "divergent_transitions": div,
            "max_treedepth_hits": tree,
            "min_ebfmi": float(np.min(ebfmi)),
            "max_rhat": float(np.nanmax(table["Rhat"])) if len(table) else float("nan"),
            "min_bulk_ess": float(np.nanmin(table["Bulk_ESS"])) if len(table) else float("nan"),
            "min_tail_ess": float(np.nanmin(table["Tail_ESS"])) if len(table) else float("nan"),
        }

    def diagnostic_messages(self) -> list[str]:
        """brms's warnings, with the usual advice."""
        d = self.diagnostics()
        s = self.raw.settings
        msgs = []
        if d["divergent_transitions"]:
            msg = (f"There were {d['divergent_transitions']} divergent transitions after warmup. "
                   f"Increasing adapt_delta above {s.adapt_delta} may help (control={{'adapt_delta': 0.95}}).")
            design = self.spec.design
            few = [gt.term.group_name for gt in design.terms
                   if gt.n_levels <= 5 and design.N / gt.n_levels >= 20]
            # [parameterization] "auto" may already have chosen the centred program
            if few and not all(cen for _, cen in self.spec.structure.terms):
                msg += (f" Grouping factor(s) {', '.join(map(repr, few))} have few levels with much data each: "
                        "parameterization='centered' usually removes such divergences.")
            elif few:
                msg += f" Grouping factor(s) {', '.join(map(repr, few))} have very few levels: consider stronger priors on their sd."
            msgs.append(msg)
        if d["max_treedepth_hits"]:
            msgs.append(
                f"There were {d['max_treedepth_hits']} transitions after warmup that exceeded the maximum "
                f"treedepth ({s.max_treedepth}). Increase max_treedepth via control={{'max_treedepth': 15}}."
            )
        if np.isfinite(d["min_ebfmi"]) and d["min_ebfmi"] < 0.3:
            msgs.append(
                f"E-BFMI is low ({d['min_ebfmi']:.2f} < 0.3) in at least one chain: the sampler explores the "
                "energy distribution poorly; reparameterize (parameterization=) or use stronger priors."
            )
        if np.isfinite(d["max_rhat"]) and d["max_rhat"] > 1.01:
            msgs.append(
                f"Parts of the model have not converged (some Rhats are > 1.01, max {d['max_rhat']:.2f}). "
                "Be careful when analysing the results! Run more iterations and/or set stronger priors."
            )
        low = 100 * s.chains
        if np.isfinite(d["min_bulk_ess"]) and d["min_bulk_ess"] < low:
            msgs.append(
                f"Bulk effective sample size is low (min {d['min_bulk_ess']:.0f} < {low}): posterior means "
                "and medians may be unreliable; run more iterations."
            )
        if np.isfinite(d["min_tail_ess"]) and d["min_tail_ess"] < low:
            msgs.append(
                f"Tail effective sample size is low (min {d['min_tail_ess']:.0f} < {low}): posterior "
                "quantiles may be unreliable; run more iterations."
            )
        return msgs

    def _warn_diagnostics(self) -> None:
        for msg in self.diagnostic_messages():
            warnings.warn(msg, StanhierWarning, stacklevel=3)
