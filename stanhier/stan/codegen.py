"""Stage 4: the Stan program of a Bayesian fit, from the model's *structure* only.

:class:`ModelStructure` holds what decides the program text — family and link,
whether there is an intercept, each random term's correlated flag and
parameterization, and the prior families — and nothing else: sizes, design
matrices and prior hyperparameters are data (:func:`make_standata`). Two models
of the same structure share one program and one compiled binary.

Stan names are positional (``N_1``, ``M_1``, ``J_1``, ``Z_1``, ``sd_1``, ``L_1``,
``z_1``, ``r_1``) and spelled in one place, :mod:`stanhier.stan.names`, which also maps
them to brms's names.

Example
-------
>>> import pandas as pd
>>> from stanhier.stan.codegen import build_model
>>> df = pd.DataFrame({"y": [1.0, 2.0, 4.0, 3.0], "x": [0, 1, 0, 1], "g": list("aabb")})
>>> spec = build_model("y ~ x + (x | g)", df, "gaussian")
>>> "normal_id_glm_lpdf" in spec.code and "L_1" in spec.code
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..model.crossprod import grouped_crossprod
from ..model.design import Design
from ..errors import ArgumentError
from ..families import Family, get_family
from ..model.spec import build_frame
from ..model.priors import Prior, PriorSet, PriorStatement, resolve_priors
from . import names
from .templating import render

__all__ = ["ModelStructure", "ModelSpec", "build_model", "make_standata", "structure_of"]


@dataclass(frozen=True)
class ModelStructure:
    """Everything that decides the Stan program's text (hashable: equal structures, equal programs)."""

    family: str
    link: str
    discrete: bool
    has_intercept: bool
    terms: tuple[tuple[bool, bool], ...]  #: per term: (correlated, centered)
    priors: tuple[tuple, ...]  #: PriorStatement.structure() of each statement
    family_aux: tuple[str, ...] = ()
    #: Gaussian likelihood from per-group cross-products (one grouping term): exact, O(groups)
    suffstat: bool = False

    @property
    def family_object(self) -> Family:
        """The :class:`~stanhier.families.Family` whose Stan snippets the program uses."""
        return get_family(self.family).with_link(self.link)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A fully specified Bayesian model: design, family, priors, program and data."""

    design: Design
    family: Family
    priors: PriorSet
    structure: ModelStructure
    parameterization: str
    code: str
    na_action: str = "drop"  #: how rows with missing values were handled (``build_model``'s argument)
    collinear: str = "error"  #: how collinear predictors were handled (``build_model``'s argument)

    @property
    def sufficient_stats(self) -> bool:
        """Whether the Gaussian likelihood uses per-group cross-products (``build_model``'s argument)."""
        return self.structure.suffstat

    def standata(self) -> dict[str, Any]:
        return make_standata(self)


def structure_of(design: Design, family: Family, priors: PriorSet, parameterization: str,
                 suffstat: bool = False) -> ModelStructure:
    centered = parameterization == "centered"
    return ModelStructure(
        suffstat=suffstat,
        family=family.name, link=family.link, discrete=family.is_discrete,
        has_intercept=design.has_intercept,
        terms=tuple((gt.correlated, centered) for gt in design.terms),
        priors=tuple(st.structure() for st in priors.statements),
        family_aux=family.aux,
    )


def _render(structure: ModelStructure, statements: Sequence[PriorStatement]) -> str:
    terms = [{"k": k, "correlated": c, "centered": cen}
             for k, (c, cen) in enumerate(structure.terms, start=1)]
    return render("brm.stan", s=structure, fam=structure.family_object, terms=terms, priors=list(statements))


def build_model(formula: str, data: Any, family: str | Family = "gaussian",
                prior: Sequence[Prior] | Prior | None = None, parameterization: str = "noncentered",
                na_action: str = "drop", collinear: str = "error",
                sufficient_stats: bool = False) -> ModelSpec:
    """Parse, build the design, resolve priors and render the program (no compiling)."""
    if parameterization not in ("noncentered", "centered"):
        raise ArgumentError(
            f"parameterization must be 'noncentered' (brms's default) or 'centered', got {parameterization!r}."
        )
    frame = build_frame(formula, data, family, na_action=na_action, collinear=collinear)
    fam, design = frame.family, frame.design
    priors = resolve_priors(design, fam, [] if prior is None else prior)
    if sufficient_stats and (fam.name != "gaussian" or len(design.terms) != 1):
        raise ArgumentError(
            "sufficient_stats=True needs family 'gaussian' and exactly one group-level term such as "
            f"'(x | g)'; this model has family {fam.name!r} and {len(design.terms)} term(s)."
        )
    structure = structure_of(design, fam, priors, parameterization, suffstat=sufficient_stats)
    code = _render(structure, priors.statements)
    return ModelSpec(design=design, family=fam, priors=priors, structure=structure,
                     parameterization=parameterization, code=code, na_action=na_action, collinear=collinear)


def make_standata(spec: ModelSpec) -> dict[str, Any]:
    """The data dict the program of ``spec`` reads (sizes, matrices, prior hyperparameters)."""
    d = spec.design
    if spec.structure.suffstat:
        return _suffstat_standata(spec)
    data: dict[str, Any] = {names.N: d.N, names.K: d.X.shape[1], names.X: d.X}
    if spec.family.is_discrete:
        data[names.Y] = np.round(d.y).astype(int)
    else:
        data[names.Y] = d.y
    if spec.family.uses_trials:
        data[names.TRIALS] = np.round(d.trials).astype(int)
    for k, gt in enumerate(d.terms):
        t = names.term(k)
        data[t.n_levels] = gt.n_levels
        data[t.n_coefs] = gt.M
        data[t.group_index] = gt.J + 1
        data[t.design] = gt.Z
        if gt.correlated:
            data[t.n_cor] = gt.M * (gt.M - 1) // 2
    data.update(spec.priors.standata())
    data[names.PRIOR_ONLY] = 0
    return data


def _suffstat_standata(spec: ModelSpec) -> dict[str, Any]:
    """Per-group cross-products of A = [1, Xc, Z] and y (the Gaussian likelihood's sufficient
    statistics): the program's cost per gradient then grows with the groups, not the rows."""
    d = spec.design
    (gt,) = d.terms
    if d.has_intercept:
        means = d.X[:, 1:].mean(axis=0)
        A = np.column_stack([np.ones(d.N), d.X[:, 1:] - means, gt.Z])
    else:
        means = np.zeros(0)
        A = np.column_stack([d.X, gt.Z])
    P, G = A.shape[1], gt.n_levels
    AtA = grouped_crossprod(A, A, gt.J, G)
    Aty = grouped_crossprod(A, d.y, gt.J, G)
    data: dict[str, Any] = {"N": d.N, "K": d.X.shape[1], "means_X": means, "P": P,
                            "N_1": G, "M_1": gt.M, "AtA": AtA, "Aty": Aty, "yty": float(d.y @ d.y)}
    if gt.correlated:
        data["NC_1"] = gt.M * (gt.M - 1) // 2
    data.update(spec.priors.standata())
    data["prior_only"] = 0
    return data
