"""The one model front end: formula + data + family -> a checked :class:`ModelFrame`.

Both paths start here: ``brm`` (:func:`stanhier.stan.codegen.build_model`) and
``lmer``/``glmer`` (:mod:`stanhier.ml.api`). :func:`build_frame` parses the formula,
builds the design and runs every check of the data against the family (response
support, trials only with and always for ``binomial``, residual SD with a level per
observation), so the two paths cannot drift apart.

Example
-------
>>> import pandas as pd
>>> df = pd.DataFrame({"y": [1, 0, 3, 2], "x": [0.0, 1.0, 0.0, 1.0], "g": list("aabb")})
>>> frame = build_frame("y ~ x + (1 | g)", df, "poisson")
>>> frame.family.name, frame.design.X.shape, frame.formula.response.column
('poisson', (4, 2), 'y')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import FamilyError, FormulaError
from ..families import Family, get_family
from .design import Design, check_gaussian_groups, make_design
from .distributed import as_lazy, make_dask_design
from .formula import ParsedFormula, parse_formula

__all__ = ["ModelFrame", "build_frame"]


@dataclass(frozen=True, eq=False)
class ModelFrame:
    """A parsed formula, its design on the data and the family, checked against each other."""

    formula: ParsedFormula
    design: Design
    family: Family


def build_frame(formula: str, data: Any, family: str | Family = "gaussian", *,
                na_action: str = "drop", collinear: str = "error") -> ModelFrame:
    """Parse ``formula``, build its design on ``data`` and check the response against ``family``.

    Raises :class:`~stanhier.errors.FormulaError` for a formula that is not a string or
    does not parse, :class:`~stanhier.errors.DataError` for unusable data and
    :class:`~stanhier.errors.FamilyError` for a response the family cannot take
    (including ``binomial`` without trials, and trials with another family).
    ``data`` may be a Dask DataFrame or a Parquet path/glob (:mod:`stanhier.model.distributed`):
    the same checks run on the cluster and the design holds no rows.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1, 0, 1, 1], "g": list("aabb")})
    >>> build_frame("y ~ 1 + (1 | g)", df, "binomial")
    Traceback (most recent call last):
    ...
    stanhier.errors.FamilyError: Family 'binomial' needs the number of trials: write 'cbind(successes, failures) ~ ...' or 'y | trials(n) ~ ...'; for a 0/1 response use family='bernoulli'.
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string such as 'y ~ x + (1 | g)', not {type(formula).__name__}.")
    fam = get_family(family)
    parsed = parse_formula(formula)
    lazy = as_lazy(data)
    if lazy is not None:  # Dask DataFrame or Parquet path: the rows stay on the cluster
        design = make_dask_design(parsed, lazy, na_action=na_action, collinear=collinear, family=fam)
    else:
        design = make_design(parsed, data, na_action=na_action, collinear=collinear)
    if fam.has_sigma:
        check_gaussian_groups(design)
    resp = parsed.response
    if fam.uses_trials and design.trials is None:
        raise FamilyError(
            f"Family {fam.name!r} needs the number of trials: write 'cbind(successes, failures) ~ ...' "
            f"or '{resp.column} | trials(n) ~ ...'; for a 0/1 response use family='bernoulli'."
        )
    if not fam.uses_trials and design.trials is not None:
        raise FamilyError(
            f"The response {resp.kind}(...) gives trials, which only family 'binomial' uses; "
            f"got family {fam.name!r}."
        )
    fam.check_response(design.y, resp.column, design.trials, resp.column2 if resp.kind == "trials" else None)
    return ModelFrame(formula=parsed, design=design, family=fam)
