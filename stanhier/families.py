"""Families as objects: ``sh.families.poisson()``; see :mod:`stanhier.family`.

>>> import stanhier as sh
>>> sh.families.negbinomial().aux
('shape',)
"""

from .family import (Family, Gamma, bernoulli, binomial, gaussian, get_family, lognormal,  # noqa: F401
                     negbinomial, poisson, student)

__all__ = ["Family", "Gamma", "bernoulli", "binomial", "gaussian", "get_family", "lognormal",
           "negbinomial", "poisson", "student"]
