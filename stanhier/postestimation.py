"""Post-estimation for Bayesian fits: prediction, model checking and comparison.

(Filled in by the prediction work; mixed into :class:`stanhier.fit.BrmsFit`.)
"""

from __future__ import annotations

__all__ = ["BayesPostestimation"]


class BayesPostestimation:
    """Methods mixed into BrmsFit: predict/fitted/posterior_* , loo, waic, ..."""
