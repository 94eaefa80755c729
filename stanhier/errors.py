"""The stanhier error hierarchy.

Every mistake a user can make raises a subclass of :class:`StanhierError`, which
also subclasses the matching built-in (``ValueError`` or ``TypeError``), so
``except ValueError`` keeps working.

Example
-------
>>> import stanhier as sh
>>> try:
...     sh.make_stancode("y ~ x + (1 | )", data={"y": [1.0, 2.0], "x": [0.0, 1.0]})
... except sh.FormulaError as err:
...     print(type(err).__name__)
FormulaError
"""

from __future__ import annotations

__all__ = [
    "StanhierError",
    "FormulaError",
    "DataError",
    "FamilyError",
    "PriorError",
    "ArgumentError",
    "BackendError",
    "StanCompileError",
    "SamplingError",
    "StanhierWarning",
    "user_stacklevel",
]


class StanhierError(Exception):
    """Base class of every error stanhier raises for a user mistake or a Stan failure."""


class FormulaError(StanhierError, ValueError):
    """The formula does not parse, or names something the data does not have."""


class DataError(StanhierError, ValueError):
    """The data cannot be used as given (missing columns, bad values, too few levels)."""


class FamilyError(StanhierError, ValueError):
    """Unknown family or link, or a response outside the family's support."""


class PriorError(StanhierError, ValueError):
    """Unknown prior class/coef/group, unknown distribution, or a prior that does not fit."""


class ArgumentError(StanhierError, ValueError):
    """A sampler/optimizer argument is out of range."""


class BackendError(StanhierError, RuntimeError):
    """The requested backend is not installed or not usable (an unknown name is an ArgumentError)."""


class StanCompileError(StanhierError, RuntimeError):
    """Stan (stanc or the C++ compiler) rejected the generated program."""


class SamplingError(StanhierError, RuntimeError):
    """Stan failed while sampling or optimizing (e.g. initialisation failed)."""


class StanhierWarning(UserWarning):
    """Warnings about fits (diagnostics, dropped rows, singular fits)."""


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called in the caller of this function that
    points at the first frame outside stanhier: the user's line, however deep the call.

    >>> import warnings
    >>> def f():
    ...     warnings.warn("x", StanhierWarning, stacklevel=user_stacklevel())
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always"); f()
    >>> w[0].filename.endswith(".py") or "doctest" in w[0].filename
    True
    """
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    try:
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
            frame = frame.f_back
            level += 1
        return level if frame is not None else 2
    finally:
        del frame
