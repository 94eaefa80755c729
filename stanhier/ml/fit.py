"""Results of ``lmer``/``glmer``: :class:`MerFit`, with lme4's accessor names and print layout.

Example
-------
>>> m = sh.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)   # doctest: +SKIP
>>> m.fixef()["Days"], m.VarCorr(), m.logLik(), m.AIC()                   # doctest: +SKIP
>>> print(m)                                                               # doctest: +SKIP
Linear mixed model fit by maximum likelihood  ['lmerMod']
...
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import special

from ..backends.base import CompiledModel, LogDensity
from ..errors import ArgumentError
from ..families import Family, get_family
from ..model.design import Design
from ..model.formula import no_random_effects, parse_formula
from .layout import RandomLayout, linear_predictor
from .optimizer import OptimumInfo
from .printing import (abbreviate, char_matrix_lines, named_vector_lines, print_coefmat, r_cat_number, r_format,
                       r_round, zapsmall)
from ..model.distributed import exact_quantiles
from .problem import MLProblem

__all__ = ["MerFit", "MLCall", "expand_double_verts"]


def expand_double_verts(formula: str) -> str:
    """The formula as lme4 prints it: each ``(x || g)`` expanded (lme4's ``expandDoubleVerts``).

    >>> expand_double_verts("Reaction ~ Days + (Days || Subject)")
    'Reaction ~ Days + ((1 | Subject) + (0 + Days | Subject))'
    >>> expand_double_verts("y ~ (0 + a + b || g)")
    'y ~ ((0 + a | g) + (0 + b | g))'
    """
    import re

    def expand(m: "re.Match") -> str:
        terms = [t.strip() for t in m.group(1).split("+") if t.strip()]
        group = m.group(2).strip()
        intercept = "0" not in terms and "-1" not in terms
        parts = ([f"(1 | {group})"] if intercept else []) + [
            f"(0 + {t} | {group})" for t in terms if t not in ("0", "1", "-1")]
        return "(" + " + ".join(parts) + ")"

    return re.sub(r"\(([^()|]*)\|\|([^()|]*)\)", expand, formula)


@dataclass(frozen=True)
class MLCall:
    """Every argument that decides an ML fit: what a run record stores and what
    :func:`stanhier.ml.api.fit_ml` (behind ``lmer``, ``glmer`` and ``record.load``) builds from.

    >>> call = MLCall(kind="glmm", formula="y ~ x + (1 | g)", family="poisson", nAGQ=1,
    ...               control={"tol": 1e-9})
    >>> MLCall.from_dict(call.to_dict()) == call, call.control
    (True, (('tol', 1e-09),))
    """

    kind: str  #: "lmm" (lmer) or "glmm" (glmer)
    formula: str
    family: str = "gaussian"
    link: str | None = None  #: None: the family's default link
    REML: bool = False
    nAGQ: int = 0
    backend: str = "auto"
    na_action: str = "drop"
    collinear: str = "drop"
    control: Any = ()  #: optimizer settings, stored as sorted (key, value) pairs
    data_name: str = "data"
    #: glmer's exact aggregation of count data: None (when it shrinks the data >= 5x), True, False
    aggregate: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("lmm", "glmm"):
            raise ArgumentError(f"kind must be 'lmm' or 'glmm', not {self.kind!r}.")
        control = self.control
        if control is None:
            control = ()
        elif isinstance(control, Mapping):
            control = tuple(sorted((str(k), v) for k, v in control.items()))
        elif not isinstance(control, tuple):
            raise ArgumentError(f"control must be a dict such as {{'tol': 1e-8}}, not {control!r}.")
        object.__setattr__(self, "control", control)

    def family_object(self) -> Family:
        """The :class:`Family` (with the recorded link)."""
        fam = get_family(self.family)
        if self.link is not None and fam.link != self.link:
            fam = dataclasses.replace(fam, link=self.link)
        return fam

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``control`` as a dict)."""
        out = dataclasses.asdict(self)
        out["control"] = dict(self.control)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MLCall":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True, eq=False)
class _Modes:
    """Conditional modes and covariances of the random effects, per block."""

    b: np.ndarray  #: (G, q)
    cov: np.ndarray  #: (G, q, q)


class MerFit:
    """A fitted ``lmer``/``glmer`` model (lme4's ``merMod``).

    Accessors follow lme4: :meth:`fixef`, :meth:`ranef`, :meth:`coef`, :meth:`VarCorr`,
    :meth:`sigma`, :meth:`logLik`, :meth:`AIC`, :meth:`BIC`, :meth:`deviance`,
    :meth:`nobs`, :meth:`ngrps`, :meth:`vcov`, :meth:`confint`, :meth:`fitted`,
    :meth:`residuals`, :meth:`predict`, :meth:`is_singular`, :meth:`stancode`,
    :meth:`standata`; ``print(fit)`` shows lme4's ``summary()``.

    Quantities at the optimum that need the model's algebra (conditional modes of the
    random effects and their covariances, ``X' V^-1 X``) are the Stan program's
    generated quantities, read through ``density.constrain``: the numerics live in
    the program only.

    >>> g = sh.glmer("fish_num ~ temperature + (1 | weather)", fish, family="poisson")  # doctest: +SKIP
    >>> g.fixef(), g.is_singular()                                                    # doctest: +SKIP
    """

    #: which evaluator of the log-likelihood the optimizer ran (the crossed layout overrides it)
    evaluator: str = "Stan log density of the program (stancode())"

    def __init__(self, *, call: MLCall, design: Design, layout: RandomLayout, family: Family,
                 problem: MLProblem, model: CompiledModel, density: LogDensity,
                 optimum: OptimumInfo, aggregation: Any = None) -> None:
        self.call = call
        #: :class:`stanhier.ml.aggregate.Aggregation` when the fit ran on aggregated patterns
        self.aggregation = aggregation
        self.kind = call.kind
        self.formula = call.formula
        self.REML = bool(call.REML)
        self.nAGQ = int(call.nAGQ)
        self.data_name = call.data_name
        self.design = design
        self.layout = layout
        self.family = family
        self.problem = problem
        self.model = model
        self.density = density
        self.optimum = optimum
        self.cache_hit: bool = bool(model.cache_hit)
        self.compile_seconds: float = float(model.compile_seconds)
        self.converged: bool = bool(optimum.converged)
        K, T = problem.K, problem.n_theta
        x = optimum.theta
        self._beta = x[:K].copy()
        self._theta = self._canonical_theta(x[K:K + T])
        self._aux = x[K + T:].copy()
        self.vcov_method = ""

    @cached_property
    def _at_optimum(self) -> dict[str, np.ndarray]:
        """The program's variables (generated quantities included) at the optimum."""
        return self.density.constrain(self.optimum.theta)

    # ------------------------------------------------------------------ parameters
    def _canonical_theta(self, theta: np.ndarray) -> np.ndarray:
        """Flip column signs so every diagonal element of Lambda is >= 0 (lme4's convention)."""
        theta = np.array(theta, float)
        for slot in self.layout.slots:
            lam = self.layout.term_lambda(slot, theta)
            signs = np.where(np.diag(lam) < 0, -1.0, 1.0)
            lam = lam * signs[None, :]
            for (i, j), k in zip(slot.pairs, slot.theta_index):
                theta[k] = lam[i, j]
        return theta

    @property
    def aux(self) -> np.ndarray:
        """The auxiliary parameters on the optimizer's scale (log sigma, or log shape), as optimized."""
        return self._aux.copy()

    @property
    def theta(self) -> np.ndarray:
        """lme4's theta: free elements of the relative covariance factor, term by term."""
        return self._theta.copy()

    @property
    def shape(self) -> float | None:
        """Negative binomial shape (lme4's ``getME(fit, "glmer.nb.theta")``)."""
        return float(np.exp(self._aux[0])) if self.family.glmm_aux == "shape" else None

    @property
    def has_scale(self) -> bool:
        """True when the model has a residual scale (lme4's ``useSc``): lmer, and glmer with
        the gaussian or Gamma family (the scale profiled out of the Laplace objective)."""
        return self.kind == "lmm" or self.family.glmm_scale

    def family_aux(self) -> dict[str, float]:
        """The family's auxiliary parameters at the optimum. lmer and glmer's families with a
        scale: the scale at 1 (sigma = 1, Gamma's shape = 1), as lme4's Pearson residuals use the
        variance function (the dispersion is left out)."""
        if self.has_scale:
            return {p.name: 1.0 for p in self.family.aux_params}
        if self.family.glmm_aux:
            return {self.family.glmm_aux: float(np.exp(self._aux[0]))}
        return {}

    def sigma(self) -> float:
        """Residual standard deviation: lmer's sigma; glmer with a scale (gaussian, Gamma): lme4's
        ``sigma()``, sqrt((sum of squared Pearson residuals + |u|^2) / N) at the modes (its
        devcomp ``sqrt(pwrss / n)``); 1 for the other GLMMs, as lme4."""
        if self.kind == "lmm":
            return float(np.exp(self._aux[0]))
        if self.family.glmm_scale:
            return self._glmm_sigma
        return 1.0

    @cached_property
    def _glmm_sigma(self) -> float:
        pearson = self.residuals(type="pearson")
        return float(np.sqrt((np.sum(pearson ** 2) + float(self._at_optimum["ussq"])) / self.nobs()))

    def residual_variance(self) -> float:
        return self.sigma() ** 2 if self.has_scale else 1.0

    def _ordered_slots(self):
        """Terms in lme4's order (decreasing number of levels; stable)."""
        return sorted(self.layout.slots, key=lambda s: -s.L)

    def term_slots(self) -> list:
        """The random terms' slots (:class:`~stanhier.ml.layout.TermSlot`) in lme4's order."""
        return list(self._ordered_slots())

    # ------------------------------------------------------------------ basics
    def nobs(self) -> int:
        return int(self.design.N)

    def ngrps(self) -> pd.Series:
        """Number of levels per grouping factor."""
        out: dict[str, int] = {}
        for slot in self._ordered_slots():
            out.setdefault(slot.group, slot.L)
        return pd.Series(out, name="ngrps", dtype=int)

    def df(self) -> int:
        """Number of estimated parameters (fixed effects, theta, sigma or shape; glmer's profiled
        scale counts one, as lme4's)."""
        profiled = int(self.kind == "glmm" and self.family.glmm_scale)
        return int(self.problem.K + self.problem.n_theta + self.problem.n_aux + profiled)

    def logLik(self) -> float:
        """Log-likelihood at the optimum with all constants (the REML log-likelihood for REML fits).

        For ``nAGQ > 1`` this is the full marginal log-likelihood; lme4 1.1-31 reports it
        minus the saturated model's log-likelihood there. Fits on aggregated count data
        add back the raw rows' constants (binomial coefficients, ``log y!``).
        """
        offset = self.aggregation.loglik_offset if self.aggregation is not None else 0.0
        return float(self.optimum.lp) + offset

    def AIC(self) -> float:
        return -2 * self.logLik() + 2 * self.df()

    def BIC(self) -> float:
        return -2 * self.logLik() + math.log(self.nobs()) * self.df()

    def REMLcrit(self) -> float:
        """-2 x REML log-likelihood (REML fits)."""
        if not self.REML:
            raise ArgumentError("REMLcrit() needs a fit with REML=True; use deviance() for ML fits.")
        return -2 * self.logLik()

    def deviance(self) -> float:
        """lme4's ``deviance()``: -2 logLik for LMMs fitted by ML; for GLMMs the sum of
        squared deviance residuals (conditional on the modes), as lme4. For REML fits
        use :meth:`REMLcrit`."""
        if self.kind == "lmm":
            if self.REML:
                raise ArgumentError("deviance() is not defined for a REML fit (as lme4): use REMLcrit(), "
                                    "or refit with REML=False.")
            return -2 * self.logLik()
        sq = self.residuals(type="deviance") ** 2
        return float(sq.sum().compute() if self.design.distributed else np.sum(sq))

    def df_residual(self) -> int:
        return self.nobs() - self.df()

    # ------------------------------------------------------------------ fixed effects
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates, named as lme4."""
        return pd.Series(self._beta, index=list(self.design.fixed_names_r), name="Estimate")

    @cached_property
    def _vcov(self) -> np.ndarray:
        K = self.problem.K
        if self.kind == "lmm":
            # lme4's formula, conditional on theta: sigma^2 (X' V*^-1 X)^-1
            self.vcov_method = "sigma^2 (X' V^-1 X)^-1 at the optimum (lme4's RX formula)"
            return self.residual_variance() * np.linalg.inv(self._at_optimum["XtVX"])
        # GLMM: finite-difference Hessian of the marginal log-likelihood over (beta, theta, ...)
        x = np.concatenate([self._beta, self._theta, self._aux])
        H = self.optimum.hessian  # the optimizer's, when it is the Hessian at this point (same steps)
        if H is None or np.shape(H) != (len(x), len(x)) or not np.array_equal(np.asarray(self.optimum.theta), x):
            H = self.density.hessian(x, step=1e-4)
        try:
            np.linalg.cholesky(-H)
            cov = np.linalg.inv(-H)[:K, :K]
            self.vcov_method = "inverse Hessian of the marginal log-likelihood over (beta, theta)"
        except np.linalg.LinAlgError:
            try:
                np.linalg.cholesky(-H[:K, :K])
                cov = np.linalg.inv(-H[:K, :K])
                self.vcov_method = ("inverse Hessian over beta only (conditional on theta): the full "
                                    "Hessian is not negative definite (singular fit)")
            except np.linalg.LinAlgError:
                cov = np.full((K, K), np.nan)
                self.vcov_method = ("not available: the Hessian over the fixed effects is not negative "
                                    "definite, so the optimum is not a proper maximum (no standard errors)")
        return (cov + cov.T) / 2

    def vcov(self) -> pd.DataFrame:
        """Covariance matrix of the fixed effects (see ``vcov_method``)."""
        names = list(self.design.fixed_names_r)
        return pd.DataFrame(self._vcov, index=names, columns=names)

    def _se(self) -> np.ndarray:
        return np.sqrt(np.diag(self._vcov))

    def coef_table(self) -> pd.DataFrame:
        """lme4's fixed-effects table (Estimate, Std. Error, t/z value[, Pr(>|z|)])."""
        est, se = self._beta, self._se()
        tab = pd.DataFrame({"Estimate": est, "Std. Error": se}, index=list(self.design.fixed_names_r))
        if self.kind == "lmm":
            tab["t value"] = est / se
        else:  # lme4 labels the ratio "t value" when the family has a scale (its p-value is still z's)
            tab["t value" if self.has_scale else "z value"] = est / se
            from scipy import stats  # on first use: slow to import
            tab["Pr(>|z|)"] = 2 * stats.norm.sf(np.abs(est / se))
        return tab

    def confint(self, level: float = 0.95, method: str = "profile", parm: list[str] | None = None, *,
                nsim: int = 500, seed: int | None = None, cores: int | None = 1,
                progress: bool = True) -> pd.DataFrame:
        """Confidence intervals, as lme4's ``confint(fit)``.

        ``method="profile"`` (lme4's default): likelihood-profile intervals for the SDs and
        correlations of the random effects, the residual SD and the fixed effects, with
        lme4's ``oldNames = FALSE`` row names (:mod:`stanhier.ml.profile`; a REML fit is
        profiled on its ML refit, as lme4 does). ``method="boot"``: lme4's parametric
        bootstrap percentile intervals for the same rows, from ``nsim`` refits (default 500)
        to responses simulated from ``seed``, shared by ``cores`` processes, with a progress
        bar unless ``progress=False`` (:mod:`stanhier.ml.boot`). ``method="Wald"``: the fixed
        effects only (lme4 also lists NA rows for the variance parameters; they are omitted
        here). ``parm``: the rows wanted (profile, boot).

        >>> m.confint(method="boot", nsim=200, seed=1, cores=2)                 # doctest: +SKIP
        """
        if method in ("profile", "boot") and self.kind == "glmm" and self.family.glmm_scale:
            raise ArgumentError(f"confint(method={method!r}) is not implemented for glmer with family "
                                f"{self.family.name!r} (a profiled scale parameter); use method='Wald'.")
        if method == "profile":
            from .profile import profile_confint

            return profile_confint(self, level, parm)
        if method == "boot":
            from .boot import boot_confint

            return boot_confint(self, level, parm, nsim=nsim, seed=seed, cores=cores, progress=progress)
        if method != "Wald":
            raise ArgumentError(f"confint(method={method!r}) is not implemented; use 'profile' (default), "
                                "'boot' or 'Wald'.")
        if not 0 < level < 1:
            raise ArgumentError(f"level must be between 0 and 1, got {level!r}.")
        from scipy import stats  # on first use: slow to import
        z = stats.norm.ppf(0.5 + level / 2)
        lo, hi = f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"
        se = self._se()
        return pd.DataFrame({lo: self._beta - z * se, hi: self._beta + z * se},
                            index=list(self.design.fixed_names_r))

    # ------------------------------------------------------------------ random effects
    @cached_property
    def _modes(self) -> _Modes:
        """Conditional modes (G, q) and covariances (G, q, q) per block: the program's
        generated quantities ``b`` and ``b_cov``."""
        lay, gq = self.layout, self._at_optimum
        return _Modes(b=np.asarray(gq["b"], float).reshape(lay.G, lay.q),
                      cov=np.asarray(gq["b_cov"], float).reshape(lay.G, lay.q, lay.q))

    def ranef(self, condVar: bool = True, as_frame: bool = False) -> dict[str, pd.DataFrame] | pd.DataFrame:
        """Conditional modes of the random effects (lme4's ``ranef``), one DataFrame per
        grouping factor (rows: levels, columns: coefficients). With ``condVar`` each frame's
        ``attrs["postVar"]`` holds the (levels, M, M) conditional covariance matrices.
        ``as_frame=True`` returns lme4's ``as.data.frame(ranef(fit))`` layout
        (grpvar, term, grp, condval, condsd).
        """
        out: dict[str, pd.DataFrame] = {}
        rows = []
        for slot in self._ordered_slots():
            gt = self.design.terms[slot.index]
            vals = self.layout.term_values(slot, self._modes.b)
            covs = self.layout.term_cov(slot, self._modes.cov)
            levels = list(gt.level_labels(":"))
            frame = pd.DataFrame(vals, index=pd.Index(levels, name=slot.group),
                                 columns=list(gt.coef_names_r))
            if slot.group in out:
                prev = out[slot.group]
                post = prev.attrs.get("postVar")
                frame = pd.concat([prev, frame], axis=1)
                frame.attrs["postVar"] = None if post is None else post
            elif condVar:
                frame.attrs["postVar"] = covs
            out[slot.group] = frame
            for m, name in enumerate(gt.coef_names_r):
                for lev, label in enumerate(levels):
                    rows.append((slot.group, name, label, vals[lev, m], math.sqrt(max(covs[lev, m, m], 0.0))))
        if as_frame:
            return pd.DataFrame(rows, columns=["grpvar", "term", "grp", "condval", "condsd"])
        return out

    def coef(self) -> dict[str, pd.DataFrame]:
        """Fixed plus random effects per level (lme4's ``coef``)."""
        fe = self.fixef()
        out = {}
        for group, frame in self.ranef(condVar=False).items():
            full = pd.DataFrame(np.tile(fe.to_numpy(), (len(frame), 1)), index=frame.index,
                                columns=fe.index)
            for col in frame.columns:
                if col in full.columns:
                    full[col] = full[col] + frame[col]
                else:
                    full[col] = frame[col]
            out[group] = full
        return out

    def _term_covariances(self):
        """(group label, coefficient names, covariance matrix, correlated) per printed group."""
        out = []
        s2 = self.residual_variance()
        used: dict[str, int] = {}
        for slot in self._ordered_slots():
            gt = self.design.terms[slot.index]
            lam = self.layout.term_lambda(slot, self._theta)
            cov = s2 * lam @ lam.T
            names = list(gt.coef_names_r)
            if slot.correlated or slot.M == 1:
                parts = [(names, cov, slot.correlated)]
            else:  # `||`: lme4 splits the term into one group per coefficient
                parts = [([n], cov[m:m + 1, m:m + 1], False) for m, n in enumerate(names)]
            for pnames, pcov, corr in parts:
                k = used.get(slot.group, 0)
                label = slot.group if k == 0 else f"{slot.group}.{k}"
                used[slot.group] = k + 1
                out.append((label, pnames, pcov, corr))
        return out

    def VarCorr(self) -> pd.DataFrame:
        """Variance components as lme4's ``as.data.frame(VarCorr(fit), order="lower.tri")``:
        columns grp, var1, var2, vcov (variance/covariance), sdcor (SD/correlation)."""
        rows = []
        for label, names, cov, corr in self._term_covariances():
            sd = np.sqrt(np.maximum(np.diag(cov), 0))
            for j in range(len(names)):
                for i in range(j, len(names)):
                    if i == j:
                        rows.append((label, names[i], None, cov[i, i], sd[i]))
                    elif corr:
                        r = cov[i, j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else float("nan")
                        rows.append((label, names[j], names[i], cov[i, j], r))
        if self.has_scale:
            rows.append(("Residual", None, None, self.sigma() ** 2, self.sigma()))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def is_singular(self, tol: float = 1e-4) -> bool:
        """lme4's ``isSingular``: a diagonal element of the relative covariance factor below ``tol``."""
        for slot in self.layout.slots:
            lam = self.layout.term_lambda(slot, self._theta)
            if np.any(np.abs(np.diag(lam)) < tol):
                return True
        return False

    # ------------------------------------------------------------------ predictions
    def _term_values(self) -> list[np.ndarray]:
        """Per term (design order), the (levels, M) conditional modes."""
        vals: list[np.ndarray] = [np.zeros(0)] * len(self.layout.slots)
        for slot in self.layout.slots:
            vals[slot.index] = self.layout.term_values(slot, self._modes.b)
        return vals

    def _eta(self, X: np.ndarray, Zs, Js) -> np.ndarray:
        return linear_predictor(X, Zs, Js, self._beta, self._term_values())

    def _rows(self, what: str, **kwargs: Any):
        """A lazy Dask Series of a per-row quantity (fits on Dask data: the rows stay on the cluster)."""
        func = dataclasses.replace(_RowFunction(what=what, beta=self._beta, term_values=tuple(self._term_values()),
                                                family=self.family, aux=self.family_aux()), **kwargs)
        return self.design.source.map_partitions(func, name=what)

    def fitted(self) -> np.ndarray:
        """Fitted values on the response scale (conditional on the random-effect modes).
        Binomial: probabilities, as lme4. (Dask data: a lazy Dask Series.)"""
        d = self.design
        if d.distributed:
            return self._rows("fitted")
        eta = self._eta(d.X, [gt.Z for gt in d.terms], [gt.J for gt in d.terms])
        return self.family.inverse_link(eta)

    def residuals(self, type: str | None = None, scaled: bool = False) -> np.ndarray:
        """Residuals: ``"response"`` (lmer's default), ``"pearson"``, ``"deviance"`` (glmer's default).
        (Dask data: a lazy Dask Series.)"""
        type = type or ("response" if self.kind == "lmm" else "deviance")
        if type not in ("response", "pearson", "deviance"):
            raise ArgumentError(f"Unknown residual type {type!r}: use 'response', 'pearson' or 'deviance'.")
        scale = self.sigma() if scaled else 1.0
        d = self.design
        if d.distributed:
            return self._rows("residuals", type=type, scale=scale)
        eta = self._eta(d.X, [gt.Z for gt in d.terms], [gt.J for gt in d.terms])
        return residuals_of(d, eta, self.family, self.family_aux(), type) / scale

    def _scaled_residual_quantiles(self) -> np.ndarray:
        """Min, quartiles and max of the scaled Pearson residuals (the summary's line)."""
        probs = [0, 0.25, 0.5, 0.75, 1]
        if not self.design.distributed:
            return np.quantile(self.residuals(type="pearson", scaled=True), probs)
        if "resid_quantiles" not in self.design.source.cache:
            func = _RowFunction(what="residuals", beta=self._beta, term_values=tuple(self._term_values()),
                                family=self.family, aux=self.family_aux(), type="pearson", scale=self.sigma())
            self.design.source.cache["resid_quantiles"] = exact_quantiles(self.design.source, func, probs,
                                                                          "the scaled residuals")
        return self.design.source.cache["resid_quantiles"]

    def predict(self, newdata: Any = None, re_formula: str | None = None, type: str = "link",
                allow_new_levels: bool = False) -> np.ndarray:
        """Predictions (lme4's ``predict.merMod``): ``type="link"`` (default) or ``"response"``.

        ``re_formula=None`` uses every random term; ``"~0"``/``"NA"`` none (population level);
        a formula such as ``"~(1 | g)"`` only the terms whose grouping factor it names. New
        levels get zero random effects when ``allow_new_levels=True``.
        """
        if type not in ("link", "response"):
            raise ArgumentError(f"type must be 'link' or 'response', not {type!r}.")
        keep = self._re_terms(re_formula)
        if newdata is None and self.design.distributed:
            tv = tuple(v if k in keep else np.zeros((0, 1)) for k, v in enumerate(self._term_values()))
            return self._rows("eta" if type == "link" else "fitted", term_values=tv, keep=tuple(keep))
        if newdata is None:
            d = self.design
            Zs = [gt.Z for gt in d.terms]
            Js = [gt.J if k in keep else np.full(d.N, -1) for k, gt in enumerate(d.terms)]
            eta = self._eta(d.X, Zs, Js)
        else:
            nd = self.design.new_data(newdata, re_terms=tuple(keep), allow_new_levels=allow_new_levels)
            Js = [J if k in keep else np.full(len(J), -1) for k, J in enumerate(nd.J)]
            eta = self._eta(nd.X, list(nd.Z), Js)
        return eta if type == "link" else self.family.inverse_link(eta)

    def _re_terms(self, re_formula: str | None) -> list[int]:
        if re_formula is None:
            return list(range(len(self.design.terms)))
        if no_random_effects(re_formula):
            return []
        text = str(re_formula).strip()
        if not text.startswith("~"):
            text = "~" + text
        parsed = parse_formula("y " + text)
        wanted = {t.group for t in parsed.random}
        keep = [k for k, gt in enumerate(self.design.terms) if gt.term.group in wanted]
        unknown = wanted - {gt.term.group for gt in self.design.terms}
        if unknown:
            raise ArgumentError(f"re_formula {re_formula!r} names grouping factor(s) not in the model: "
                                f"{', '.join(':'.join(u) for u in unknown)}.")
        return keep

    # ------------------------------------------------------------------ Stan
    def stancode(self) -> str:
        """The Stan program that was optimized."""
        return self.model.code

    def standata(self) -> dict:
        """The data passed to Stan."""
        return self.problem.standata()

    # ------------------------------------------------------------------ printing
    def _title(self) -> str:
        if self.kind == "lmm":
            return ("Linear mixed model fit by REML ['lmerMod']" if self.REML
                    else "Linear mixed model fit by maximum likelihood  ['lmerMod']")
        approx = ("Laplace Approximation" if self.nAGQ == 1
                  else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nAGQ}")
        return f"Generalized linear mixed model fit by maximum likelihood ({approx}) ['glmerMod']"

    def _title_lines(self, width: int = 80) -> list[str]:
        """lme4's ``.prt.methTit``: the title and ``['class']``, wrapped as R wraps a long one."""
        title = self._title()
        method, _, cls = title.rpartition(" [")
        cls = cls.rstrip("]").strip("'")
        if len(method) + 5 + len(cls) <= width:
            return [title]
        import textwrap

        lines = textwrap.wrap(method, width=width - 3, subsequent_indent="  ", break_on_hyphens=False)
        tail = f" [{cls}]"
        if len(lines[-1]) + len(tail) <= width:
            lines[-1] += tail
        else:
            lines.append(tail.lstrip())
        return lines

    def diagnostics(self) -> dict[str, Any]:
        """The optimizer's report in one place: convergence, gradient, singularity, Hessian."""
        _ = self._vcov  # decides vcov_method
        info = self.optimum
        return {
            "converged": self.converged,
            "max_abs_gradient": float(np.max(np.abs(info.grad))) if len(info.grad) else 0.0,
            "optimizer_message": str(info.message),
            "n_starts": int(info.n_starts),
            "singular": self.is_singular(),
            "standard_errors": "not available" not in self.vcov_method,
            "vcov_method": self.vcov_method,
        }

    def diagnostic_messages(self) -> list[str]:
        """Problems with the fit, each with plain advice (empty when all is well)."""
        d = self.diagnostics()
        msgs = []
        if not d["converged"]:
            msgs.append(f"Model failed to converge (max |gradient| {d['max_abs_gradient']:.2g}; "
                        f"{d['optimizer_message']}): rescale predictors, simplify the random effects, "
                        "or give start= values.")
        if d["singular"]:
            msgs.append("boundary (singular) fit: a variance is ~0 or a correlation ~±1 (fit.is_singular()). "
                        "Consider a simpler random-effects structure (e.g. '||' or dropping a slope).")
        if not d["standard_errors"]:
            msgs.append(f"No standard errors: {d['vcov_method']}.")
        return msgs

    def summary(self, digits: int = 4, correlation: bool | None = None) -> str:
        """lme4's ``summary()`` printout, formatted by R's rules (``print.summary.merMod``
        with ``digits = 4``): one number of decimals per column, the random-effects and
        fixed-effects tables, and (``correlation``: default for 2 to 20 fixed effects) the
        "Correlation of Fixed Effects" block. Problems follow as ``Warning:`` lines."""
        lines = self._title_lines()
        if self.kind == "glmm":
            fam = self.family.lme4_label(self.family_aux())
            lines.append(f" Family: {fam}  ( {self.family.link} )")
        lines += [f"Formula: {expand_double_verts(self.formula)}", f"   Data: {self.data_name}"]
        if self.aggregation is not None:
            lines.append(f"Aggregated: {self.aggregation.describe()}")
        lines.append("")
        if self.REML:
            lines += [f"REML criterion at convergence: {r_cat_number(r_round(self.REMLcrit(), 1))}", ""]
        else:
            vals = [r_round(v, 1) for v in (self.AIC(), self.BIC(), self.logLik(), -2 * self.logLik())]
            cells = r_format(vals, 7) + [str(int(self.df_residual()))]
            lines += named_vector_lines(["AIC", "BIC", "logLik", "deviance", "df.resid"], cells)
            lines.append("")
        q = zapsmall(self._scaled_residual_quantiles(), digits + 1)
        lines.append("Scaled residuals: ")
        lines += named_vector_lines(["Min", "1Q", "Median", "3Q", "Max"], r_format(q, digits))
        lines += ["", "Random effects:"]
        lines += self._varcorr_lines(digits)
        grp = self.ngrps()
        lines.append(f"Number of obs: {self.nobs()}, groups:  "
                     + "; ".join(f"{k}, {v}" for k, v in grp.items()))
        lines += ["", "Fixed effects:"]
        lines += self._coef_lines(digits)
        p = len(self._beta)
        if (correlation if correlation is not None else 1 < p <= 20) and p > 1:
            lines += ["", "Correlation of Fixed Effects:"] + self._fixef_cor_lines()
        msgs = self.diagnostic_messages()
        if msgs:
            lines += [""] + [f"Warning: {m}" for m in msgs]
        return "\n".join(lines) + "\n"

    def _varcorr_lines(self, digits: int = 4) -> list[str]:
        """lme4's ``formatVC``: Variance and Std.Dev. each formatted as one column, correlations
        with two decimals (formatted per term, lower triangle), left-justified columns."""
        terms = self._term_covariances()
        sds, groups, names, blocks = [], [], [], []
        for label, tnames, cov, corr in terms:
            sd = np.sqrt(np.maximum(np.diag(cov), 0))
            sds += list(sd)
            groups += [label] + [""] * (len(tnames) - 1)
            names += list(tnames)
            blocks.append((cov, sd, corr))
        if self.has_scale:
            s = self.sigma()
            sds.append(s)
            groups.append("Residual")
            names.append("")
        variance = r_format([v * v for v in sds], digits)
        stddev = r_format(sds, digits)
        maxlen = max((len(c[1]) for c in blocks), default=1)
        corr_cells: list[list[str]] = []
        if maxlen > 1:
            dig = max(2, digits - 2)
            for cov, sd, corr in blocks:
                m = len(sd)
                if not corr:  # `||` parts and scalar terms: no correlations shown
                    corr_cells += [[""] * (maxlen - 1) for _ in range(m)]
                    continue
                with np.errstate(invalid="ignore", divide="ignore"):
                    cm = cov / np.outer(sd, sd)
                np.fill_diagonal(cm, 1.0)
                flat = r_format([r_round(v, dig) for v in cm.ravel()], 7, nsmall=dig)
                cc = np.array(flat, dtype=object).reshape(m, m)
                for i in range(m):
                    row = [cc[i, j] if j < i else "" for j in range(m)] + [""] * (maxlen - m)
                    corr_cells.append(row[:maxlen - 1])
            corr_cells += [[""] * (maxlen - 1) for _ in range(len(sds) - len(corr_cells))]
        header = ["Groups", "Name", "Variance", "Std.Dev."]
        rows = [[g, n, v, d] for g, n, v, d in zip(groups, names, variance, stddev)]
        if maxlen > 1:
            header += ["Corr"] + [""] * (maxlen - 2)
            rows = [r + c for r, c in zip(rows, corr_cells)]
        return char_matrix_lines(header, rows)

    def _coef_lines(self, digits: int = 4) -> list[str]:
        tab = self.coef_table()
        return print_coefmat(list(tab.index), list(tab.columns)[:3], tab.to_numpy(float).tolist(), digits,
                             has_pvalue=tab.shape[1] == 4) if self.kind == "lmm" else print_coefmat(
            list(tab.index), list(tab.columns), tab.to_numpy(float).tolist(), digits, has_pvalue=True)

    def _fixef_cor_lines(self) -> list[str]:
        """lme4's "Correlation of Fixed Effects": three decimals, lower triangle, rows named by
        ``abbreviate(names, 11)`` and columns by ``abbreviate(names, 6)``."""
        V = np.asarray(self._vcov, float)
        sd = np.sqrt(np.diag(V))
        with np.errstate(invalid="ignore", divide="ignore"):
            C = V / np.outer(sd, sd)
        names = list(self.design.fixed_names_r)
        p = len(names)
        cells = r_format([r_round(v, 3) for v in C.T.ravel()], 7, nsmall=3)  # R: column-major
        cm = np.array(cells, dtype=object).reshape(p, p).T
        rows_n, cols_n = abbreviate(names, 11), abbreviate(names, 6)
        rows = [[cm[i, j] if j < i else "" for j in range(p - 1)] for i in range(1, p)]
        return char_matrix_lines(cols_n[:p - 1], rows, rows_n[1:])

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------- per-row quantities
def residuals_of(d: Design, eta: np.ndarray, fam: Family, aux: dict, type: str) -> np.ndarray:
    """Residuals of the rows of ``d`` at linear predictor ``eta`` (see :meth:`MerFit.residuals`)."""
    y, n = d.y, (d.trials if fam.uses_trials else None)
    resid = y - fam.mean(eta, aux, n)  # on y's scale (binomial: successes)
    if type == "response":
        return resid / n if n is not None else resid  # binomial: proportions, as lme4
    if type == "pearson":
        return resid / np.sqrt(fam.variance(eta, aux, n))
    return np.sign(resid) * np.sqrt(np.maximum(fam.unit_deviance(y, eta, aux, n), 0))


@dataclass(frozen=True, eq=False)
class _RowFunction:
    """A picklable per-partition quantity of a fit (shipped to the Dask workers)."""

    what: str  #: "eta", "fitted" or "residuals"
    beta: np.ndarray
    term_values: tuple
    family: Family
    aux: dict
    type: str = "response"
    scale: float = 1.0
    keep: tuple[int, ...] | None = None

    def __call__(self, d: Design) -> np.ndarray:
        keep = range(len(d.terms)) if self.keep is None else self.keep
        Js = [gt.J if k in keep else np.full(len(gt.J), -1) for k, gt in enumerate(d.terms)]
        eta = linear_predictor(d.X, [gt.Z for gt in d.terms], Js, self.beta, self.term_values)
        if self.what == "eta":
            return eta
        if self.what == "fitted":
            return self.family.inverse_link(eta)
        return residuals_of(d, eta, self.family, self.aux, self.type) / self.scale
