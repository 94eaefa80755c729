"""Stage 3a: response distributions (families), their links, Stan snippets and numpy helpers.

Each family is one module of this package holding one :class:`Family` subclass
decorated with :func:`~stanhier.families.base.register`: its links, auxiliary
parameters (Stan bounds, brms's default prior), response checks, the Stan text of
its likelihood, and its numpy log-likelihood, random draws, mean, variance and
deviance. This module discovers the family modules, so adding a family means
adding one file here; it also makes a constructor per family (``poisson()``...).
Links are defined once each in :mod:`stanhier.families.links`; a family lists the ones it
takes (the first is its default, brms's). A family with a link is written as in R
(``"binomial(link='probit')"``, ``"binomial(probit)"``) or built by :func:`family`.

Example
-------
>>> import stanhier as sh
>>> sh.families.poisson().link, sh.families.get_family("Gamma").aux
('log', ('shape',))
>>> sh.family("poisson", link="sqrt"), sh.families.get_family("binomial(link='probit')")
(Family('poisson', link='sqrt'), Family('binomial', link='probit'))
>>> sh.families.get_family("beta").aux_params[0].default_prior(scale=2.5)
('gamma', (0.01, 0.01))
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
from typing import Callable

from ..errors import FamilyError
from .base import REGISTRY, AuxParam, Family
from .links import LINKS, Link

__all__ = ["Family", "AuxParam", "Link", "LINKS", "family", "get_family", "FAMILIES", "ALIASES", "aux_names",
           "glmm_families"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "links"):
        importlib.import_module(f"{__name__}.{_module.name}")

#: family name -> Family class (every module of this package)
FAMILIES: dict[str, type[Family]] = dict(sorted(REGISTRY.items(), key=lambda kv: kv[0].lower()))

#: other spellings -> family name
ALIASES: dict[str, str] = {alias: name for name, cls in FAMILIES.items() for alias in cls.aliases}


def _constructor(cls: type[Family]) -> Callable[..., Family]:
    def make(link: str | None = None) -> Family:
        return cls(link=link or cls.links[0])

    make.__name__ = make.__qualname__ = cls.name
    make.__module__ = __name__
    make.__doc__ = cls.__doc__
    return make


for _name, _cls in FAMILIES.items():
    globals()[_name] = _constructor(_cls)
    __all__.append(_name)
del _module, _name, _cls


#: ``name(link='x')``, ``name(link="x")``, ``name('x')`` or ``name(x)``, as R's family calls
_CALL = re.compile(r"""^\s*([A-Za-z_][\w.]*)\s*\(\s*(?:link\s*=\s*)?(["']?)([\w.]*)\2\s*\)\s*$""")


def family(name: str, link: str | None = None) -> Family:
    """The family ``name`` with ``link`` (``None``: its default, brms's), as R's ``binomial(link = "probit")``.

    An unsupported link is a :class:`~stanhier.errors.FamilyError` (a ``ValueError``) listing
    the family's links.

    >>> family("binomial", link="probit")
    Family('binomial', link='probit')
    >>> family("poisson", link="probit")
    Traceback (most recent call last):
    ...
    stanhier.errors.FamilyError: Link 'probit' is not supported for family 'poisson'; supported links: log, identity, sqrt (e.g. family='poisson(link="sqrt")').
    """
    fam = get_family(name)
    return fam if link is None else fam.with_link(link)


def get_family(family: str | Family) -> Family:
    """Turn a family name (``"poisson"``, ``"binomial(link='probit')"``) or a :class:`Family` into a
    :class:`Family`.

    >>> get_family("gaussian").aux
    ('sigma',)
    >>> get_family("normal").name
    'gaussian'
    >>> get_family('Gamma(link = "inverse")').link
    'inverse'
    """
    if isinstance(family, Family):
        return family
    if not isinstance(family, str):
        raise FamilyError(f"family must be a name such as 'poisson' or a Family, not {type(family).__name__}.")
    if "(" in family:
        call = _CALL.match(family)
        if call is None or not call.group(3):
            raise FamilyError(f"Cannot read the family {family!r}; write it as \"binomial(link='probit')\" "
                              "or pass the link separately: sh.family('binomial', link='probit').")
        return get_family(call.group(1)).with_link(call.group(3))
    key = family if family in FAMILIES else ALIASES.get(family.lower(), family.lower())
    if key not in FAMILIES:
        lowered = {name.lower(): name for name in FAMILIES}
        key = lowered.get(key, key)
    if key not in FAMILIES:
        close = difflib.get_close_matches(family, list(FAMILIES) + list(ALIASES), n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise FamilyError(f"Unknown family {family!r}.{hint} Supported: {', '.join(FAMILIES)}.")
    return FAMILIES[key]()


def aux_names() -> tuple[str, ...]:
    """Every auxiliary parameter name of every family (the prior classes they add).

    >>> "phi" in aux_names() and "sigma" in aux_names()
    True
    """
    seen: dict[str, None] = {}
    for cls in FAMILIES.values():
        for p in cls.aux_params:
            seen.setdefault(p.name)
    return tuple(seen)


def glmm_families() -> tuple[Family, ...]:
    """The families ``glmer`` fits (those with GLMM Stan snippets), by their code.

    >>> [(f.glmm_code, f.name) for f in glmm_families()]
    [(1, 'poisson'), (2, 'binomial'), (3, 'bernoulli'), (4, 'negbinomial'), (5, 'Gamma'), (6, 'gaussian')]
    """
    return tuple(sorted((cls() for cls in FAMILIES.values() if cls.glmm_lpmf is not None),
                        key=lambda f: f.glmm_code))
