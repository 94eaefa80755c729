"""Stan backends: ``pystan`` (httpstan, PyPI wheels) and ``cmdstanpy`` (CmdStan).

Example
-------
>>> from stanhier.backends import available_backends
>>> "pystan" in available_backends()
True
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import BackendError
from .base import (Backend, CompiledModel, LogDensity, OptimizeResult, RawSample, SampleSettings)

__all__ = ["get_backend", "available_backends", "cmdstan_available", "Backend", "CompiledModel",
           "LogDensity", "OptimizeResult", "RawSample", "SampleSettings"]

BACKENDS = ("auto", "pystan", "cmdstanpy")


def cmdstan_available() -> tuple[bool, str]:
    """Whether cmdstanpy can find a CmdStan installation, and why not."""
    try:
        import cmdstanpy
    except ImportError:
        return False, "cmdstanpy is not installed (pip install 'cmdstanpy<2')"
    try:
        cmdstanpy.cmdstan_path()
    except Exception as exc:  # cmdstanpy raises ValueError when CmdStan is missing
        return False, f"no CmdStan installation found ({exc}); install it with `python -m cmdstanpy.install_cmdstan`"
    return True, ""


def available_backends() -> tuple[str, ...]:
    names = []
    try:
        import httpstan  # noqa: F401
        import stan  # noqa: F401

        names.append("pystan")
    except ImportError:
        pass
    if cmdstan_available()[0]:
        names.append("cmdstanpy")
    return tuple(names)


@lru_cache(maxsize=None)
def get_backend(name: str = "auto") -> Backend:
    """Return the backend called ``name`` (``auto``: cmdstanpy if CmdStan is installed, else pystan)."""
    if name not in BACKENDS:
        raise BackendError(f"Unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "auto":
        name = "cmdstanpy" if cmdstan_available()[0] else "pystan"
    if name == "cmdstanpy":
        ok, why = cmdstan_available()
        if not ok:
            raise BackendError(f"The cmdstanpy backend is not usable: {why}.")
        from .cmdstanpy_backend import CmdStanPyBackend

        return CmdStanPyBackend()
    try:
        from .pystan_backend import PystanBackend
    except ImportError as exc:  # pragma: no cover - pystan is a hard dependency
        raise BackendError(f"The pystan backend is not installed ({exc}): pip install pystan.") from None
    return PystanBackend()
