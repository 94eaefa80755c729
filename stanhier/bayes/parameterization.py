"""How each group-level term of a Bayesian fit was sampled, and why (for the summary and the run record).

Four treatments exist: *integrated out* (Gaussian models, :mod:`stanhier.bayes.marginal`),
*conditional*, *centred* and *non-centred* (other models; ``parameterization="auto"`` picks
with the rule of :mod:`stanhier.model.parameterization`).

Example
-------
>>> import pandas as pd
>>> from stanhier.stan.codegen import build_model
>>> fish = pd.read_csv("tests/data/fish.csv")
>>> fish["weather"] = (fish["weather"] == "sunny").astype(int)
>>> spec = build_model("fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson")
>>> [c.choice for c in term_choices(spec)]
['conditional']
>>> summary_lines(spec)
['Group-level effects: (Intercept + temperature | weather) conditional']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..backends.base import SampleSettings
from ..model.parameterization import conditional_unavailable, term_information
from ..stan.codegen import ModelSpec

__all__ = ["TermChoice", "term_choices", "choices_record", "summary_lines", "CONDITIONAL_ADAPT_DELTA",
           "default_adapt_delta"]

#: NUTS's target acceptance rate for programs with a conditional term when the user sets none
#: (brms's default is 0.8). Measured on the seed model (benchmarks/bench_bayes.py, five seeds):
#: at 0.8 the smallest bulk ESS of the slope SD ranged 936-2687 over the seeds, at 0.9
#: 2194-3012, for about 15% more sampling time (more ESS per second there; the binomial
#: germination example lost some ESS per second, 5.4x brms's instead of 6.4x).
CONDITIONAL_ADAPT_DELTA = 0.9


@dataclass(frozen=True)
class TermChoice:
    """The treatment of one group-level term."""

    term: str  #: ``(temperature | weather)``
    choice: str  #: ``integrated_out``, ``conditional``, ``centered`` or ``noncentered``
    reason: str


def _term_text(spec: ModelSpec, k: int) -> str:
    gt = spec.design.terms[k - 1]
    bar = "|" if gt.term.correlated else "||"
    return f"({' + '.join(gt.coef_names)} {bar} {gt.term.group_name})"


def default_adapt_delta(spec: ModelSpec) -> float:
    """``adapt_delta`` when the user gives none: :data:`CONDITIONAL_ADAPT_DELTA` if some term
    has the conditional treatment, else brms's (:class:`~stanhier.backends.base.SampleSettings`).

    >>> import pandas as pd
    >>> from stanhier.stan.codegen import build_model
    >>> fish = pd.read_csv("tests/data/fish.csv")
    >>> default_adapt_delta(build_model("fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson"))
    0.9
    """
    if any(treatment == "conditional" for _, treatment in spec.structure.terms):
        return CONDITIONAL_ADAPT_DELTA
    return SampleSettings.adapt_delta


def term_choices(spec: ModelSpec) -> list[TermChoice]:
    """One :class:`TermChoice` per group-level term, in the formula's order."""
    out = []
    for k, (_, treatment) in enumerate(spec.structure.terms, start=1):
        text = _term_text(spec, k)
        if spec.structure.marginal:
            out.append(TermChoice(text, "integrated_out",
                                  f"Gaussian model: effects integrated out exactly ({spec.structure.marginal} "
                                  "layout), drawn afterwards from their exact conditionals"))
            continue
        if spec.parameterization != "auto":
            reason = f"parameterization={spec.parameterization!r} requested"
        elif treatment == "conditional":
            reason = ("auto: log/logit link and the intercept in a group-level term, so each level's effects follow "
                      "their approximate conditional posterior (exact change of variables; neither centred nor "
                      "non-centred funnels)")
        else:
            info = term_information(spec.design, spec.family, spec.priors, k)
            kap = ", ".join(f"{c} {x:.3g}" for c, x in zip(info.coefs, info.kappa))
            reason = (f"auto: conditional unavailable ({conditional_unavailable(spec.design, spec.family)}); "
                      f"median over levels of min over coefficients of tau^2 * information = "
                      f"{info.median_kappa:.3g} ({'>' if treatment == 'centered' else '<='} 1; per coefficient: "
                      f"{kap}; tau = {', '.join(f'{t:.3g}' for t in info.tau)})")
        out.append(TermChoice(text, treatment, reason))
    return out


def choices_record(spec: ModelSpec) -> list[dict[str, Any]]:
    """JSON-ready list of the choices (stored in run records)."""
    return [asdict(c) for c in term_choices(spec)]


def summary_lines(spec: ModelSpec) -> list[str]:
    """Printed under ``Draws:`` in the summary."""
    choices = term_choices(spec)
    if not choices:
        return []
    names = {"integrated_out": "integrated out", "centered": "centred", "noncentered": "non-centred",
             "conditional": "conditional"}
    return ["Group-level effects: " + "; ".join(f"{c.term} {names[c.choice]}" for c in choices)]
