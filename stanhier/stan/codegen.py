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
>>> spec = build_model("y ~ x + (x | g)", df, "gaussian", marginalize=False)
>>> "normal_id_glm_lpdf" in spec.code and "L_1" in spec.code
True
>>> build_model("y ~ x + (x | g)", df, "gaussian").structure.marginal   # effects integrated out
'blocks'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..model.design import Design
from ..errors import ArgumentError
from ..families import Family, get_family
from ..model.spec import build_frame
from ..model.parameterization import PARAMETERIZATIONS, choose_treatments, conditional_pilot
from ..model.priors import Prior, PriorSet, PriorStatement, resolve_priors
from . import names
from .marginal import CLOSED_FORM_Q, MAX_DENSE_Q, closed_form_q, marginal_layout, marginal_standata
from .templating import render

__all__ = ["ModelStructure", "ModelSpec", "build_model", "make_standata", "structure_of"]


@dataclass(frozen=True)
class ModelStructure:
    """Everything that decides the Stan program's text (hashable: equal structures, equal programs)."""

    family: str
    link: str
    discrete: bool
    has_intercept: bool
    terms: tuple[tuple[bool, str], ...]  #: per term: (correlated, treatment: TREATMENTS)
    priors: tuple[tuple, ...]  #: PriorStatement.structure() of each statement
    family_aux: tuple[str, ...] = ()
    #: group-level effects integrated out (brm_marginal.stan): "" (no), "blocks" or "dense"
    marginal: str = ""
    #: effects per block when the integrated-out density is written in closed form (1 or 2), else 0
    block_size: int = 0
    #: per term: its coefficients per level M_k when its conditional treatment is written out as
    #: scalar arithmetic over its levels (M_k in CLOSED_FORM_Q: 1 or 2), else 0 (loops over the entries
    #: of a Cholesky factor per level)
    closed_m: tuple[int, ...] = ()

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
    marginalize: bool | None = None  #: ``build_model``'s argument (None: integrate out when the layout fits)

    def standata(self) -> dict[str, Any]:
        """The data dict of the program, built once per spec (sampling, drawing the integrated-out
        effects, run records and post-estimation all read it; a fresh dict each call)."""
        cached = self.__dict__.get("_standata")
        if cached is None:
            cached = make_standata(self)
            object.__setattr__(self, "_standata", cached)  # frozen: a memo, not state
        return dict(cached)


def structure_of(design: Design, family: Family, priors: PriorSet, parameterization: str,
                 marginal: str = "", block_size: int = 0) -> ModelStructure:
    # per-term conditional / centred / non-centred ("auto": stanhier.model.parameterization)
    treatments = (("noncentered",) * len(design.terms) if marginal
                  else choose_treatments(design, family, priors, parameterization))
    return ModelStructure(
        marginal=marginal, block_size=block_size,
        closed_m=tuple(gt.M if tr == "conditional" and gt.M in CLOSED_FORM_Q else 0
                       for gt, tr in zip(design.terms, treatments)),
        family=family.name, link=family.link, discrete=family.is_discrete,
        has_intercept=design.has_intercept,
        terms=tuple((gt.correlated, tr) for gt, tr in zip(design.terms, treatments)),
        priors=tuple(st.structure() for st in priors.statements),
        family_aux=family.aux,
    )


def _render(structure: ModelStructure, statements: Sequence[PriorStatement], design: Design) -> str:
    closed = structure.closed_m or (0,) * len(structure.terms)
    terms = [{"k": k, "correlated": c, "treatment": tr, "closed_m": m}
             for k, ((c, tr), m) in enumerate(zip(structure.terms, closed), start=1)]
    if structure.marginal:  # Gaussian, group-level effects integrated out
        return render("brm_marginal.stan", s=structure, terms=terms, priors=list(statements),
                      layout=marginal_layout(design),
                      lambda_diagonal=not any(c for c, _ in structure.terms))
    return render("brm.stan", s=structure, fam=structure.family_object, terms=terms, priors=list(statements),
                  conditional=any(t["treatment"] == "conditional" for t in terms))


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
    if sufficient_stats and marginalize is False:
        raise ArgumentError("sufficient_stats=True is marginalize=True; it cannot be combined with marginalize=False.")
    if sufficient_stats:
        marginalize = True
    frame = build_frame(formula, data, family, na_action=na_action, collinear=collinear)
    fam, design = frame.family, frame.design
    priors = resolve_priors(design, fam, [] if prior is None else prior)
    # integrate the group-level effects out of Gaussian models when the layout fits
    layout = marginal_layout(design) if fam.name == "gaussian" else None
    if marginalize and layout is None:
        raise ArgumentError(
            "marginalize=True (or sufficient_stats=True) needs family 'gaussian' and group-level terms whose "
            f"effects can be integrated out (one grouping factor, or several with at most {MAX_DENSE_Q} effects "
            f"in all); this model has family {fam.name!r} and {len(design.terms)} group-level term(s). "
            "Leave marginalize unset to let brm choose."
        )
    use_marginal = layout is not None and marginalize is not False
    if design.distributed and not use_marginal:
        raise ArgumentError(
            "brm on Dask data needs a Gaussian model whose group-level effects are integrated out "
            f"(one grouping factor, or several with at most {MAX_DENSE_Q} effects in all; marginalize not "
            f"False): it then needs only cross-products of the data. This model has family {fam.name!r}"
            f"{' and marginalize=False' if marginalize is False else ''}; fit it on a pandas DataFrame."
        )
    structure = structure_of(design, fam, priors, parameterization, marginal=layout.kind if use_marginal else "",
                             block_size=closed_form_q(layout) if use_marginal else 0)
    code = _render(structure, priors.statements, design)
    return ModelSpec(design=design, family=fam, priors=priors, structure=structure,
                     parameterization=parameterization, code=code, na_action=na_action, collinear=collinear,
                     marginalize=marginalize)


def make_standata(spec: ModelSpec) -> dict[str, Any]:
    """The data dict the program of ``spec`` reads (sizes, matrices, prior hyperparameters)."""
    d = spec.design
    if spec.structure.marginal:
        return marginal_standata(d, marginal_layout(d), spec.priors.standata())
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
    if any(tr == "conditional" for _, tr in spec.structure.terms):
        pilot = conditional_pilot(d, spec.family)
        data[names.N_ANCHORED] = d.X.shape[1] - len(pilot.free)
        data[names.FREE_COLUMNS] = pilot.free
        for k in range(len(d.terms)):
            t = names.term(k)
            data[t.fixed_column] = pilot.fixed_column[k]
            data[t.n_anchored] = len(pilot.anchored[k])
            data[t.anchored] = pilot.anchored[k]
            data[t.pilot_s] = pilot.s[k]
            data[t.pilot_info] = pilot.info[k]
    data.update(spec.priors.standata())
    data[names.PRIOR_ONLY] = 0
    return data
