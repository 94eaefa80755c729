"""The one owner of the Bayesian program's Stan names, and of reading draws back by brms's names.

Stan names are positional: group-level term ``k`` (0-based here, ``k + 1`` in Stan) has
data ``N_{k+1}`` (levels), ``M_{k+1}`` (coefficients), ``J_{k+1}`` (1-based level of
each row), ``Z_{k+1}`` (its design columns), ``NC_{k+1}`` (number of correlations) and
parameters ``sd_{k+1}``, ``z_{k+1}``, ``L_{k+1}`` (Cholesky factor), generated
``r_{k+1}`` (the group-level effects) and ``cor_{k+1}``. Population-level slopes are
``b`` (centred columns), the intercept ``Intercept`` (centred) and ``b_Intercept``
(uncentred). :func:`make_names` maps them to brms's names (``b_temperature``,
``sd_weather__Intercept``, ``cor_weather__Intercept__temperature``, ``r_weather``), and
:class:`PosteriorDraws` reads raw draws by meaning (``fixed()``, ``group_effects(k)``,
``sds(k)``, ``cors(k)``, ``aux("sigma")``), so no other module spells a Stan name.

The templates in ``stan/templates/`` write the same names; ``tests/test_architecture.py``
checks that every name made here is declared by the rendered program.

Example
-------
>>> term(0).sd, term(0).design, term(1).cor
('sd_1', 'Z_1', 'cor_2')
>>> import numpy as np
>>> table = NameTable(entries=(), groups=(), has_intercept=True, n_slopes=1, terms=(), aux=())
>>> raw = {B_INTERCEPT: np.array([[1.0, 2.0]]), B: np.array([[[0.5], [0.7]]])}
>>> PosteriorDraws(raw, table).fixed().tolist()
[[1.0, 0.5], [2.0, 0.7]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .codegen import ModelSpec

__all__ = ["B", "INTERCEPT", "B_INTERCEPT", "LPRIOR", "N", "K", "X", "Y", "TRIALS", "PRIOR_ONLY",
           "FREE_COLUMNS", "B_FREE", "N_ANCHORED", "LOG_JACOBIAN", "LOG_SIGMA",
           "TermNames", "term", "TermInfo", "NameEntry", "NameTable", "make_names", "PosteriorDraws"]

# ------------------------------------------------------------------ population level and data
B = "b"  #: slopes of the centred population-level columns
INTERCEPT = "Intercept"  #: the intercept of the centred columns
B_INTERCEPT = "b_Intercept"  #: the intercept on the original scale (generated quantity)
LPRIOR = "lprior"  #: log prior density (generated quantity; one per draw)
N, K, X, Y, TRIALS, PRIOR_ONLY = "N", "K", "X", "Y", "trials", "prior_only"
#: conditional treatment: population-level columns sampled directly (data), their values (parameter),
#: the number of columns anchored to group-level terms (data), and the log Jacobian (transformed parameter)
FREE_COLUMNS, B_FREE, N_ANCHORED, LOG_JACOBIAN = "Jf", "b_f", "Ka", "log_jacobian"
#: integrated-out Gaussian program: the parameter NUTS moves for sigma (sigma is derived from it)
LOG_SIGMA = "log_sigma"


@dataclass(frozen=True)
class TermNames:
    """Stan names of group-level term ``index`` (0-based; Stan's suffix is ``index + 1``)."""

    index: int

    @property
    def suffix(self) -> int:
        return self.index + 1

    # data
    @property
    def n_levels(self) -> str:
        return f"N_{self.suffix}"

    @property
    def n_coefs(self) -> str:
        return f"M_{self.suffix}"

    @property
    def group_index(self) -> str:
        return f"J_{self.suffix}"

    @property
    def design(self) -> str:
        return f"Z_{self.suffix}"

    @property
    def n_cor(self) -> str:
        return f"NC_{self.suffix}"

    # conditional treatment (stanhier.model.parameterization)
    @property
    def fixed_column(self) -> str:
        return f"Jb_{self.suffix}"

    @property
    def n_anchored(self) -> str:
        return f"Na_{self.suffix}"

    @property
    def anchored(self) -> str:
        return f"Ma_{self.suffix}"

    @property
    def pilot_s(self) -> str:
        return f"s_{self.suffix}"

    @property
    def pilot_info(self) -> str:
        return f"I_{self.suffix}"

    @property
    def eps(self) -> str:
        return f"eps_{self.suffix}"

    # parameters and generated quantities
    @property
    def sd(self) -> str:
        return f"sd_{self.suffix}"

    @property
    def z(self) -> str:
        return f"z_{self.suffix}"

    @property
    def L(self) -> str:  # noqa: N802 - Stan's name
        return f"L_{self.suffix}"

    @property
    def r(self) -> str:
        return f"r_{self.suffix}"

    @property
    def cor(self) -> str:
        return f"cor_{self.suffix}"


def term(index: int) -> TermNames:
    """Stan names of the group-level term at 0-based position ``index``.

    >>> term(2).group_index
    'J_3'
    """
    return TermNames(index)


# ------------------------------------------------------------------ user-facing names
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
class TermInfo:
    """What reading term ``index``'s draws needs: its grouping factor, coefficients, correlation."""

    index: int  #: 0-based position
    group: str  #: grouping factor name (``batch:cask``)
    coefs: tuple[str, ...]  #: brms coefficient names
    correlated: bool

    @property
    def M(self) -> int:  # noqa: N802
        return len(self.coefs)


@dataclass(frozen=True)
class NameTable:
    """All user-facing names of a Bayesian fit, made once from the design."""

    entries: tuple[NameEntry, ...]
    #: per group name: (list of (Stan term number k + 1, coef names)), level labels
    groups: tuple[tuple[str, tuple[tuple[int, tuple[str, ...]], ...], tuple[str, ...]], ...]
    has_intercept: bool = False
    n_slopes: int = 0  #: columns of ``b``
    terms: tuple[TermInfo, ...] = ()
    aux: tuple[str, ...] = ()  #: family parameters (``sigma``, ``shape``...)

    def by_block(self, block: str) -> list[NameEntry]:
        return [e for e in self.entries if e.block == block]


def make_names(spec: "ModelSpec") -> NameTable:
    """brms's names of every parameter of ``spec``'s program, in brms's summary order."""
    d = spec.design
    entries: list[NameEntry] = []
    groups: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    levels: dict[str, tuple[str, ...]] = {}
    infos = []
    for k, gt in enumerate(d.terms):
        g = gt.term.group_name
        groups.setdefault(g, []).append((term(k).suffix, gt.coef_names))
        levels[g] = gt.level_labels("_")
        infos.append(TermInfo(k, g, tuple(gt.coef_names), bool(gt.correlated)))
    for g, items in groups.items():
        for s, coefs in items:
            for m, c in enumerate(coefs):
                entries.append(NameEntry(f"sd_{g}__{c}", term(s - 1).sd, (m,), "random", g, f"sd({c})"))
        for s, coefs in items:
            if infos[s - 1].correlated:
                idx = 0
                for j2 in range(len(coefs)):
                    for j1 in range(j2):
                        entries.append(NameEntry(f"cor_{g}__{coefs[j1]}__{coefs[j2]}", term(s - 1).cor, (idx,),
                                                 "random", g, f"cor({coefs[j1]},{coefs[j2]})"))
                        idx += 1
    if d.has_intercept:
        entries.append(NameEntry(B_INTERCEPT, B_INTERCEPT, (), "fixed", "", INTERCEPT))
    slopes = [n for n in d.fixed_names if not (d.has_intercept and n == "Intercept")]
    for j, n in enumerate(slopes):
        entries.append(NameEntry(f"b_{n}", B, (j,), "fixed", "", n))
    for a in spec.family.aux:
        entries.append(NameEntry(a, a, (), "family", "", a))
    return NameTable(entries=tuple(entries),
                     groups=tuple((g, tuple(items), levels[g]) for g, items in groups.items()),
                     has_intercept=bool(d.has_intercept), n_slopes=len(slopes), terms=tuple(infos),
                     aux=tuple(spec.family.aux))


# ------------------------------------------------------------------ reading draws
def _flat(arr: np.ndarray) -> np.ndarray:
    """(chain, draw, ...) -> (chain * draw, ...)."""
    return arr.reshape((-1,) + arr.shape[2:])


class PosteriorDraws:
    """Raw Stan draws (each ``(chain, draw, ...)``) read by meaning, chains concatenated.

    Every method returns ``S = chains x draws`` rows (optionally only the rows ``ids``).
    """

    def __init__(self, draws: Mapping[str, np.ndarray], names: NameTable) -> None:
        self.raw = draws
        self.names = names

    @property
    def shape(self) -> tuple[int, int]:
        """(chains, draws per chain)."""
        for key in (LPRIOR, B_INTERCEPT, B):
            if key in self.raw:
                return tuple(self.raw[key].shape[:2])  # type: ignore[return-value]
        first = next(iter(self.raw.values()))
        return tuple(first.shape[:2])  # type: ignore[return-value]

    @property
    def n_draws(self) -> int:
        c, d = self.shape
        return c * d

    def _rows(self, arr: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        flat = _flat(arr)
        return flat if ids is None else flat[ids]

    def entry(self, e: NameEntry) -> np.ndarray:
        """(chain, draw) draws of one summary parameter."""
        return self.raw[e.stan][(slice(None), slice(None)) + e.index]

    def fixed(self, ids: np.ndarray | None = None) -> np.ndarray:
        """(S, K) draws of the population-level coefficients of X: uncentred, intercept first."""
        S = self.n_draws
        cols = []
        if self.names.has_intercept:
            cols.append(_flat(self.raw[B_INTERCEPT]).reshape(S, 1))
        if self.names.n_slopes:
            cols.append(_flat(self.raw[B]).reshape(S, self.names.n_slopes))
        out = np.concatenate(cols, axis=1) if cols else np.zeros((S, 0))
        return out if ids is None else out[ids]

    def group_effects(self, k: int, ids: np.ndarray | None = None) -> np.ndarray:
        """(S, levels, coefficients) group-level effects of term ``k`` (0-based)."""
        return self._rows(self.raw[term(k).r], ids)

    def sds(self, k: int, ids: np.ndarray | None = None) -> np.ndarray:
        """(S, coefficients) standard deviations of term ``k``."""
        return self._rows(self.raw[term(k).sd], ids).reshape(-1, self.names.terms[k].M)

    def cors(self, k: int, ids: np.ndarray | None = None) -> np.ndarray | None:
        """(S, M(M-1)/2) correlations of term ``k`` in brms's order; None if it has none."""
        info = self.names.terms[k]
        if not info.correlated or info.M < 2 or term(k).cor not in self.raw:
            return None
        return self._rows(self.raw[term(k).cor], ids).reshape(-1, info.M * (info.M - 1) // 2)

    def aux(self, name: str, ids: np.ndarray | None = None) -> np.ndarray:
        """(S,) draws of a family parameter (``sigma``, ``shape``...)."""
        return self._rows(self.raw[name], ids).reshape(-1)

    def lprior(self) -> np.ndarray:
        """(chain, draw) log prior density."""
        return self.raw[LPRIOR]

    def intercept(self) -> np.ndarray | None:
        """(chain, draw) intercept of the centred columns, or None without an intercept."""
        return self.raw[INTERCEPT] if self.names.has_intercept else None

    def by_group(self) -> dict[str, tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]]:
        """Per grouping factor: (chain, draw, level, coef) effects of all its terms, coef names, levels."""
        out = {}
        for g, items, levels in self.names.groups:
            arrays = [self.raw[term(s - 1).r] for s, _ in items]
            coefs = tuple(c for _, cs in items for c in cs)
            out[g] = (np.concatenate(arrays, axis=-1), coefs, levels)
        return out
