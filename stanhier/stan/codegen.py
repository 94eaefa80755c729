"""Stage 4: the Stan program of a Bayesian fit, from the model's *structure* only.

:class:`ModelStructure` holds what decides the program text — family and link,
whether there is an intercept, each random term's correlated flag and
parameterization, and the prior families — and nothing else: sizes, design
matrices and prior hyperparameters are data (:func:`make_standata`). Two models
of the same structure share one program and one compiled binary.

Stan names are positional (``N_1``, ``M_1``, ``J_1``, ``Z_1``, ``sd_1``, ``L_1``,
``z_1``, ``r_1``); :class:`~stanhier.fit.BrmsFit` maps them to brms's names.

Example
-------
>>> import pandas as pd
>>> from stanhier.codegen import build_model
>>> df = pd.DataFrame({"y": [1.0, 2.0, 4.0, 3.0], "x": [0, 1, 0, 1], "g": list("aabb")})
>>> spec = build_model("y ~ x + (x | g)", df, "gaussian")
>>> "normal_id_glm_lpdf" in spec.code and "L_1" in spec.code
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..model.design import Design, check_gaussian_groups, make_design
from ..errors import ArgumentError
from ..families import Family, get_family
from ..model.formula import parse_formula
from ..model.priors import Prior, PriorSet, PriorStatement, resolve_priors
from ..model.parameterization import PARAMETERIZATIONS, choose_centering
from .marginal import MAX_DENSE_Q, marginal_layout, marginal_standata
from .templating import render

__all__ = ["ModelStructure", "ModelSpec", "build_model", "make_standata",
           "structure_of", "GLM_FAMILIES"]

#: families whose likelihood uses one of Stan's GLM functions
GLM_FAMILIES = {
    "gaussian": "normal_id_glm_lpdf",
    "poisson": "poisson_log_glm_lpmf",
    "bernoulli": "bernoulli_logit_glm_lpmf",
    "negbinomial": "neg_binomial_2_log_glm_lpmf",
    "binomial": "binomial_logit_glm_lpmf",
}


@dataclass(frozen=True)
class ModelStructure:
    """Everything that decides the Stan program's text."""

    family: str
    link: str
    discrete: bool
    has_intercept: bool
    terms: tuple[tuple[bool, bool], ...]  #: per term: (correlated, centered)
    priors: tuple[tuple, ...]  #: PriorStatement.structure() of each statement
    family_aux: tuple[str, ...] = ()
    #: always False: superseded by ``marginal`` (brm.stan's suffstat branches are dead, to delete)
    suffstat: bool = False
    #: [marginal] group-level effects integrated out (brm_marginal.stan): "" (no), "blocks" or "dense"
    marginal: str = ""

    @property
    def glm(self) -> str | None:
        return GLM_FAMILIES.get(self.family)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A fully specified Bayesian model: design, family, priors, program and data."""

    design: Design
    family: Family
    priors: PriorSet
    structure: ModelStructure
    parameterization: str
    code: str

    def standata(self) -> dict[str, Any]:
        return make_standata(self)


def structure_of(design: Design, family: Family, priors: PriorSet, parameterization: str,
                 suffstat: bool = False, marginal: str = "") -> ModelStructure:
    # [parameterization] per-term centred / non-centred ("auto": stanhier.model.parameterization)
    centered = ((False,) * len(design.terms) if marginal
                else choose_centering(design, family, priors, parameterization))
    return ModelStructure(
        suffstat=suffstat, marginal=marginal,
        family=family.name, link=family.link, discrete=family.is_discrete,
        has_intercept=design.has_intercept,
        terms=tuple((gt.correlated, cen) for gt, cen in zip(design.terms, centered)),
        priors=tuple(st.structure() for st in priors.statements),
        family_aux=family.aux,
    )


def _render(structure: ModelStructure, statements: Sequence[PriorStatement], design: Design) -> str:
    terms = [{"k": k, "correlated": c, "centered": cen}
             for k, (c, cen) in enumerate(structure.terms, start=1)]
    if structure.marginal:  # [marginal] Gaussian, group-level effects integrated out
        return render("brm_marginal.stan", s=structure, terms=terms, priors=list(statements),
                      layout=marginal_layout(design),
                      lambda_diagonal=not any(c for c, _ in structure.terms))
    return render("brm.stan", s=structure, terms=terms, priors=list(statements))


def build_model(formula: str, data: Any, family: str | Family = "gaussian",
                prior: Sequence[Prior] | Prior | None = None, parameterization: str = "auto",
                na_action: str = "drop", collinear: str = "error",
                sufficient_stats: bool = False, marginalize: bool | None = None) -> ModelSpec:
    """Parse, build the design, resolve priors and render the program (no compiling).

    ``marginalize``: None (default) integrates the group-level effects out of Gaussian
    models whenever their layout fits (:mod:`stanhier.stan.marginal`); True requires it;
    False gives brms's program. ``sufficient_stats=True`` is the same as ``marginalize=True``.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ArgumentError(
            f"parameterization must be one of {', '.join(map(repr, PARAMETERIZATIONS))}, got {parameterization!r}."
        )
    if marginalize not in (None, True, False):
        raise ArgumentError(f"marginalize must be None, True or False, got {marginalize!r}.")
    fam = get_family(family)
    parsed = parse_formula(formula)
    design = make_design(parsed, data, na_action=na_action, collinear=collinear)
    if fam.has_sigma:
        check_gaussian_groups(design)
    if fam.uses_trials and design.trials is None:
        fam.check_response(design.y, parsed.response.column)  # raises: needs trials
    if not fam.uses_trials and design.trials is not None:
        from ..errors import FamilyError

        raise FamilyError(
            f"The response {parsed.response.kind}(...) gives trials, which only family 'binomial' uses; "
            f"got family {fam.name!r}."
        )
    fam.check_response(design.y, parsed.response.column, design.trials, parsed.response.column2)
    priors = resolve_priors(design, fam, [] if prior is None else prior)
    # [marginal] integrate the group-level effects out of Gaussian models when the layout fits
    layout = marginal_layout(design) if fam.name == "gaussian" else None
    if (sufficient_stats or marginalize) and layout is None:
        what = "sufficient_stats=True" if sufficient_stats else "marginalize=True"
        raise ArgumentError(
            f"{what} needs family 'gaussian' and group-level terms whose effects can be integrated out "
            "(one grouping factor, or several with at most "
            f"{MAX_DENSE_Q} effects in all); this model has family {fam.name!r} and {len(design.terms)} term(s)."
        )
    use_marginal = layout is not None and marginalize is not False
    structure = structure_of(design, fam, priors, parameterization,
                             marginal=layout.kind if use_marginal else "")
    code = _render(structure, priors.statements, design)
    return ModelSpec(design=design, family=fam, priors=priors, structure=structure,
                     parameterization=parameterization, code=code)


def make_standata(spec: ModelSpec) -> dict[str, Any]:
    """The data dict the program of ``spec`` reads (sizes, matrices, prior hyperparameters)."""
    d = spec.design
    if spec.structure.marginal:  # [marginal]
        return marginal_standata(d, marginal_layout(d), spec.priors.standata())
    data: dict[str, Any] = {"N": d.N, "K": d.X.shape[1], "X": d.X}
    if spec.family.is_discrete:
        data["Y"] = np.round(d.y).astype(int)
    else:
        data["Y"] = d.y
    if spec.family.uses_trials:
        data["trials"] = np.round(d.trials).astype(int)
    for k, gt in enumerate(d.terms, start=1):
        data[f"N_{k}"] = gt.n_levels
        data[f"M_{k}"] = gt.M
        data[f"J_{k}"] = gt.J + 1
        data[f"Z_{k}"] = gt.Z
        if gt.correlated:
            data[f"NC_{k}"] = gt.M * (gt.M - 1) // 2
    data.update(spec.priors.standata())
    data["prior_only"] = 0
    return data
