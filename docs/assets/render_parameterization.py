"""Render the table of docs/parameterization.md ("What the rule chooses on the shipped examples").

    .venv/bin/python docs/assets/render_parameterization.py   # prints markdown

Each row is what ``brm(..., parameterization="auto")`` decides for the model, computed
here the way ``brm`` computes it before sampling (:func:`stanhier.bayes.parameterization.term_choices`
and :func:`stanhier.model.parameterization.term_information`; no sampling, a second).
tests/test_docs.py checks that the page holds exactly what this renders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stanhier.bayes.parameterization import term_choices
from stanhier.model.parameterization import term_information
from stanhier.stan.codegen import build_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def _fish() -> pd.DataFrame:
    fish = pd.read_csv(DATA / "fish.csv")
    fish["weather"] = (fish["weather"] == "sunny").astype(int)
    return fish


def _germination() -> pd.DataFrame:
    germ = pd.read_csv(DATA / "germination.csv")
    germ["fail"] = germ["size"] - germ["germination"]
    return germ


#: (name, formula, data, family)
EXAMPLES = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", lambda: pd.read_csv(DATA / "sleepstudy.csv"), "gaussian"),
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", lambda: pd.read_csv(DATA / "Penicillin.csv"),
     "gaussian"),
    ("fish", "fish_num ~ 1 + temperature + (temperature | weather)", _fish, "poisson"),
    ("fish, slope only", "fish_num ~ 1 + temperature + (0 + temperature | weather)", _fish, "poisson"),
    ("germination", "cbind(germination, fail) ~ solar + (1 | nutrition)", _germination, "binomial"),
]

_NAMES = {"integrated_out": "integrated out", "centered": "centred", "noncentered": "non-centred",
          "conditional": "conditional"}


def _levels(spec, k: int) -> str:
    gt = spec.design.terms[k - 1]
    per = np.bincount(gt.J, minlength=gt.n_levels)
    rows = f"{per.min()}" if per.min() == per.max() else f"{per.min()}-{per.max()}"
    return f"{gt.n_levels} levels x {rows} rows"


def row(name: str, formula: str, data: pd.DataFrame, family: str) -> str:
    spec = build_model(formula, data, family)
    model = f"{name} `{formula.replace('|', chr(92) + '|')}`" + ("" if family == "gaussian" else f" ({family})")
    cells = []
    for k, c in enumerate(term_choices(spec), start=1):
        if c.choice == "integrated_out":
            q = sum(gt.M * gt.n_levels for gt in spec.design.terms)
            cells.append((f"integrated out ({spec.structure.marginal} layout, {q} effects)", "Gaussian", "–", "–"))
        elif c.choice == "conditional":
            cells.append(("conditional", f"{spec.family.link} link, the intercept in a group-level term", "–", "–"))
        else:
            info = term_information(spec.design, spec.family, spec.priors, k)
            source = ("prior scale: fewer than 3 levels" if all(t == p for t, p in zip(info.tau, info.tau_prior))
                      else f"estimated (prior scale {', '.join(f'{p:.3g}' for p in info.tau_prior)})")
            cells.append((_NAMES[c.choice], f"median kappa {'>' if c.choice == 'centered' else '<='} 1",
                          f"{info.median_kappa:.3g}", f"{', '.join(f'{t:.3g}' for t in info.tau)}, {source}"))
        cells[-1] += (_levels(spec, k),)
    # terms of one model share the marginal layout: one cell for them
    cols = list(zip(*cells))
    return f"| {model} | " + " | ".join("; ".join(dict.fromkeys(col)) for col in cols) + " |"


def table() -> str:
    rows = ["| Model | Decision | Why | median kappa | tau | data |", "|---|---|---|---|---|---|"]
    rows += [row(name, formula, load(), family) for name, formula, load, family in EXAMPLES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
