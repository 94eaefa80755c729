"""Stage 6 (Bayesian): the result of ``brm``, with brms's names, summaries and methods.

:class:`BrmsFit` is a plain result: the model (``spec``), the raw draws (``raw``), the
names (:func:`~stanhier.stan.names.make_names`) and, composed from them, the draw reader
(``draws``, :class:`~stanhier.stan.names.PosteriorDraws`) and the prediction engine
(``predictor``, :class:`~stanhier.bayes.predict.Predictor`). Comparison
(:mod:`~stanhier.bayes.compare`) and plots (:mod:`~stanhier.bayes.plots`) take a fit
and use only its public methods; the methods here call them.

Example
-------
>>> import pandas as pd, stanhier as sh                      # doctest: +SKIP
>>> fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, seed=1)  # doctest: +SKIP
>>> fit.fixef()                                               # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from ..backends.base import RawSample
from ..errors import ArgumentError
from ..recordfiles import write_brm_record
from ..stan.codegen import ModelSpec
from ..stan.names import NameEntry, NameTable, PosteriorDraws, make_names
from . import compare, plots
from .parameterization import TermChoice, term_choices
from .predict import Kind, Predictor
from .summary import column_summary, format_brms_summary, summary_stats

__all__ = ["BrmsFit", "make_idata"]

_SAMPLE_STATS = {"lp__": "lp", "accept_stat__": "acceptance_rate", "stepsize__": "step_size",
                 "treedepth__": "tree_depth", "n_leapfrog__": "n_steps", "divergent__": "diverging",
                 "energy__": "energy"}


def make_idata(spec: ModelSpec, raw: RawSample, names: NameTable, draws: PosteriorDraws,
               predictor: Predictor):
    """ArviZ InferenceData of a Bayesian fit: brms-named posterior, sampler statistics,
    observed data and (unless ``draws x rows`` exceeds 5e7) the pointwise log-likelihood."""
    import arviz as az

    posterior: dict[str, np.ndarray] = {}
    coords: dict[str, Any] = {}
    dims: dict[str, list[str]] = {}
    for e in names.entries:
        posterior[e.name] = draws.entry(e)
    for g, (arr, coefs, levels) in draws.by_group().items():
        name = f"r_{g}"
        posterior[name] = arr
        coords[g] = list(levels)
        coords[f"{g}__coef"] = list(coefs)
        dims[name] = [g, f"{g}__coef"]
    intercept = draws.intercept()
    if intercept is not None:
        posterior["Intercept"] = intercept
    posterior["lprior"] = draws.lprior()
    sample_stats = {_SAMPLE_STATS[k]: v for k, v in raw.stats.items() if k in _SAMPLE_STATS}
    if "diverging" in sample_stats:
        sample_stats["diverging"] = sample_stats["diverging"].astype(bool)
    d = spec.design
    if d.distributed:  # Dask data: the rows stay on the cluster (no observed data, no pointwise log_lik)
        kwargs: dict[str, Any] = dict(posterior=posterior, sample_stats=sample_stats, coords=coords, dims=dims)
    else:
        kwargs = dict(posterior=posterior, sample_stats=sample_stats, observed_data={"y": d.y},
                      coords={**coords, "obs": np.arange(d.N)}, dims={**dims, "y": ["obs"], "log_lik": ["obs"]})
    if not d.distributed and draws.n_draws * d.N <= 5e7:
        kwargs["log_likelihood"] = {"log_lik": predictor.log_lik()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.from_dict(**kwargs)


class BrmsFit:
    """A Bayesian fit (``brm``): draws, names, summaries and post-estimation.

    Attributes: ``spec`` (the model), ``raw`` (positional Stan draws and sampler
    statistics), ``names`` (brms's names), ``draws`` (the draws read by meaning),
    ``predictor`` (the prediction engine), ``idata`` (ArviZ InferenceData, made on first
    use), ``cache_hit`` (whether the compiled program came from the cache),
    ``sample_seconds``.
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
        self.draws = PosteriorDraws(raw.draws, self.names)
        self.predictor = Predictor(spec, self.draws)
        self._summary: pd.DataFrame | None = None

    @cached_property
    def idata(self):
        """ArviZ InferenceData (brms's names), made on first use (see :func:`make_idata`)."""
        return make_idata(self.spec, self.raw, self.names, self.draws, self.predictor)

    # ------------------------------------------------------------------ data
    def draws_of(self, entry: NameEntry) -> np.ndarray:
        """(chain, draw) array of one summary parameter."""
        return self.draws.entry(entry)

    def fixed_draws(self) -> np.ndarray:
        """(S, K) draws of the population-level coefficients (uncentred, intercept first if any)."""
        return self.draws.fixed()

    def group_draws(self) -> dict[str, tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]]:
        """Per grouping factor: (chain, draw, level, coef) group-level effects, coef names, level names."""
        return self.draws.by_group()

    def log_lik(self) -> np.ndarray:
        """(chain, draw, N) pointwise log-likelihood."""
        return self.predictor.log_lik()

    # ------------------------------------------------------------------ summaries
    def summary_table(self) -> pd.DataFrame:
        """One row per printed parameter: block, group, label and brms's columns."""
        if self._summary is None:
            rows = []
            for e in self.names.entries:
                stats = summary_stats(self.draws_of(e))
                rows.append({"name": e.name, "block": e.block, "group": e.group, "label": e.label, **stats})
            self._summary = pd.DataFrame(rows).set_index("name")
        return self._summary

    def group_effect_choices(self) -> list[TermChoice]:
        """How each group-level term was sampled (integrated out, centred or non-centred) and why."""
        return term_choices(self.spec)

    def summary(self) -> str:
        """brms's printed summary (also ``print(fit)``)."""
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
        for g, (arr, coefs, levels) in self.group_draws().items():
            flat = arr.reshape((-1,) + arr.shape[2:])
            cols = {}
            for m, c in enumerate(coefs):
                cols.update(column_summary(c, flat[:, :, m]))
            out[g] = pd.DataFrame(cols, index=pd.Index(levels, name=g))
        return out

    def coef(self) -> dict[str, pd.DataFrame]:
        """Population + group-level effects per level (brms's ``coef``)."""
        fixed_names = list(self.fixef().index)
        beta = self.fixed_draws()
        out = {}
        for g, (arr, coefs, levels) in self.group_draws().items():
            flat = arr.reshape((-1,) + arr.shape[2:])
            cols = {}
            for j, name in enumerate(fixed_names):
                v = np.repeat(beta[:, [j]], len(levels), axis=1)
                if name in coefs:
                    v = v + flat[:, :, coefs.index(name)]
                cols.update(column_summary(name, v))
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
        return self.predictor.compute("linpred", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
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
        return self.predictor.compute("epred", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
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
        return self.predictor.compute("predict", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
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
        return self.predictor.compute(kind, newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
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
        return self.predictor.compute("predict", newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                             sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                             transform=False, summary=summary, probs=probs, robust=robust,
                             chunk_size=chunk_size, seed=seed)

    def iter_draws(self, kind: Kind = "epred", newdata: Any = None, *, re_formula: Any = None,
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
        return self.predictor.iter_draws(kind, newdata, re_formula=re_formula, allow_new_levels=allow_new_levels,
                                         sample_new_levels=sample_new_levels, ndraws=ndraws, draw_ids=draw_ids,
                                         transform=transform, chunk_size=chunk_size, seed=seed)

    # ------------------------------------------------------------------ comparison (compare.py)
    def loo(self, **kwargs: Any):
        """PSIS-LOO (ArviZ ``ELPDData``); Pareto-k problems are warned about. See :func:`stanhier.bayes.compare.loo`."""
        return compare.loo(self, **kwargs)

    def waic(self, **kwargs: Any):
        """WAIC (ArviZ ``ELPDData``). See :func:`stanhier.bayes.compare.waic`."""
        return compare.waic(self, **kwargs)

    def bayes_R2(self, **kwargs: Any):  # noqa: N802 - brms's name
        """Bayesian R² (Gelman et al. 2019), as brms. See :func:`stanhier.bayes.compare.bayes_R2`."""
        return compare.bayes_R2(self, **kwargs)

    def hypothesis(self, hypothesis: str | Sequence[str], alpha: float = 0.05) -> pd.DataFrame:
        """Posterior tests of linear statements of fixed effects, e.g. ``"Days > 0"``.

        See :func:`stanhier.bayes.compare.hypothesis`.
        """
        return compare.hypothesis(self, hypothesis, alpha=alpha)

    # ------------------------------------------------------------------ plots (plots.py)
    def plot(self, variables: Sequence[str] | None = None, *, path: Any = None, **kwargs: Any):
        """Trace and density plots of the summary parameters (ArviZ). Returns the figure."""
        return plots.plot_trace(self, variables, path=path, **kwargs)

    def pp_check(self, type: str | None = None, *, ndraws: int = 10, path: Any = None, **kwargs: Any):
        """Posterior predictive check plot (density overlay, or bars for counts). Returns the figure."""
        return plots.pp_check(self, type=type, ndraws=ndraws, path=path, **kwargs)

    def conditional_effects(self, effects: str, **kwargs: Any):
        """Conditional effect of a predictor with credible bands. Returns the figure."""
        return plots.conditional_effects(self, effects, **kwargs)

    def plot_ranef(self, *, path: Any = None, **kwargs: Any):
        """Caterpillar plot of the group-level effects. Returns the figure."""
        return plots.plot_ranef(self, path=path, **kwargs)

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

        ``sh.load(path)`` restores the fit without compiling or sampling; see :func:`stanhier.record.save`
        for the arguments (``include_data``, ``command``, ``input_file``, ``overwrite``).
        """
        return write_brm_record(self, path, **kwargs)

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
            # pandas skips NaN (one chain, constant draws) without numpy's all-NaN RuntimeWarning
            "max_rhat": float(table["Rhat"].max()) if len(table) else float("nan"),
            "min_bulk_ess": float(table["Bulk_ESS"].min()) if len(table) else float("nan"),
            "min_tail_ess": float(table["Tail_ESS"].min()) if len(table) else float("nan"),
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
            if few and any(tr == "noncentered" for _, tr in self.spec.structure.terms):
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
