"""How each group-level term of a Bayesian fit was sampled, and why (for the summary and the run record).

Three treatments exist: *integrated out* (Gaussian models, :mod:`stanhier.bayes.marginal`),
*centred* and *non-centred* (other models; ``parameterization="auto"`` picks one per
term with the rule of :mod:`stanhier.model.parameterization`).

Example
-------
>>> import pandas as pd
>>> from stanhier.stan.codegen import build_model
>>> fish = pd.read_csv("tests/data/fish.csv")
>>> fish["weather"] = (fish["weather"] == "sunny").astype(int)
>>> spec = build_model("fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson")
>>> [c.choice for c in term_choices(spec)]
['centered']
>>> summary_lines(spec)
['Group-level effects: (Intercept + temperature | weather) centred']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..model.parameterization import term_information
from ..stan.codegen import ModelSpec

__all__ = ["TermChoice", "term_choices", "choices_record", "summary_lines"]


@dataclass(frozen=True)
class TermChoice:
    """The treatment of one group-level term."""

    term: str  #: ``(temperature | weather)``
    choice: str  #: ``integrated_out``, ``centered`` or ``noncentered``
    reason: str


def _term_text(spec: ModelSpec, k: int) -> str:
    gt = spec.design.terms[k - 1]
    bar = "|" if gt.term.correlated else "||"
    return f"({' + '.join(gt.coef_names)} {bar} {gt.term.group_name})"


def term_choices(spec: ModelSpec) -> list[TermChoice]:
    """One :class:`TermChoice` per group-level term, in the formula's order."""
    out = []
    for k, (_, centered) in enumerate(spec.structure.terms, start=1):
        text = _term_text(spec, k)
        if spec.structure.marginal:
            out.append(TermChoice(text, "integrated_out",
                                  f"Gaussian model: effects integrated out exactly ({spec.structure.marginal} "
                                  "layout), drawn afterwards from their exact conditionals"))
            continue
        choice = "centered" if centered else "noncentered"
        if spec.parameterization == "auto":
            info = term_information(spec.design, spec.family, spec.priors, k)
            kap = ", ".join(f"{c} {x:.3g}" for c, x in zip(info.coefs, info.kappa))
            reason = (f"auto: median over levels of min over coefficients of tau^2 * information = "
                      f"{info.median_kappa:.3g} ({'>' if centered else '<='} 1; per coefficient: {kap}; "
                      f"tau = {', '.join(f'{t:.3g}' for t in info.tau)})")
        else:
            reason = f"parameterization={spec.parameterization!r} requested"
        out.append(TermChoice(text, choice, reason))
    return out


def choices_record(spec: ModelSpec) -> list[dict[str, Any]]:
    """JSON-ready list of the choices (stored in run records)."""
    return [asdict(c) for c in term_choices(spec)]


def summary_lines(spec: ModelSpec) -> list[str]:
    """Printed under ``Draws:`` in the summary."""
    choices = term_choices(spec)
    if not choices:
        return []
    names = {"integrated_out": "integrated out", "centered": "centred", "noncentered": "non-centred"}
    return ["Group-level effects: " + "; ".join(f"{c.term} {names[c.choice]}" for c in choices)]
