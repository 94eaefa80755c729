"""Stan backends: ``pystan`` (httpstan, PyPI wheels) and ``cmdstanpy`` (CmdStan).

``get_backend("auto")`` picks the engine named by the environment variable
``STANHIER_BACKEND`` if set, else CmdStan when an installation is found (faster
compiles), else pystan. CmdStan is found where cmdstanpy looks (``$CMDSTAN``,
``~/.cmdstan``) or, failing that, in ``<user cache>/stanhier/cmdstan-<version>``
(where ``scripts/test.sh`` builds one on machines without GitHub).

Example
-------
>>> from stanhier.backends import available_backends, get_backend
>>> "pystan" in available_backends()
True
>>> get_backend("stanX")
Traceback (most recent call last):
...
stanhier.errors.ArgumentError: Unknown backend 'stanX'; choose one of auto, pystan, cmdstanpy.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import platformdirs

from ..errors import ArgumentError, BackendError
from . import toolchain
from .base import Backend, CompiledModel, LogDensity, RawSample, SampleSettings
from .cmdstanpy_backend import CmdStanPyBackend, adopt_cmdstanpy_tmpdir
from .pystan_backend import PystanBackend

__all__ = ["get_backend", "available_backends", "cmdstan_available", "default_engine", "build_shared",
           "compile_objects", "shared_cmdstan", "ENGINE_ENV", "BACKENDS", "Backend", "CompiledModel", "LogDensity",
           "RawSample", "SampleSettings"]

BACKENDS = ("auto", "pystan", "cmdstanpy")
#: Environment variable naming the engine ``backend="auto"`` uses (``pystan`` or ``cmdstanpy``).
ENGINE_ENV = "STANHIER_BACKEND"
#: The CmdStan release ``scripts/test.sh`` builds into the user cache.
CMDSTAN_RELEASE = "2.35.0"


def _cached_cmdstan() -> Path | None:
    """A CmdStan tree built by ``scripts/test.sh`` in the user cache, if complete."""
    path = Path(platformdirs.user_cache_dir("stanhier")) / f"cmdstan-{CMDSTAN_RELEASE}"
    return path if (path / "makefile").is_file() and (path / "bin").is_dir() else None


@lru_cache(maxsize=None)
def _locate_cmdstan() -> tuple[bool, str]:
    try:
        import cmdstanpy
    except ImportError:
        return False, "cmdstanpy is not installed (pip install 'cmdstanpy<2')"
    with contextlib.suppress(Exception):  # cmdstanpy's scratch folder: out of the system temp folder
        adopt_cmdstanpy_tmpdir()
    try:
        cmdstanpy.cmdstan_path()
        return True, ""
    except Exception as exc:  # cmdstanpy raises ValueError when CmdStan is missing
        why = str(exc)
    cached = _cached_cmdstan()
    if cached is not None:
        try:
            cmdstanpy.set_cmdstan_path(str(cached))
            return True, ""
        except Exception as exc:  # noqa: BLE001 - a broken tree is reported as missing
            why = f"{why}; {cached}: {exc}"
    return False, (f"no CmdStan installation found ({why}); install it with "
                   "`python -m cmdstanpy.install_cmdstan`")


def cmdstan_available() -> tuple[bool, str]:
    """Whether cmdstanpy can find a CmdStan installation, and why not."""
    return _locate_cmdstan()


def shared_cmdstan() -> Path | None:
    """The CmdStan cmdstanpy finds, if its executables are linked from stanhier's objects
    (:func:`toolchain.cmdstan_shares_objects`), else None."""
    if not cmdstan_available()[0]:
        return None
    import cmdstanpy

    path = Path(cmdstanpy.cmdstan_path()).resolve()  # as the backend finds it
    return path if toolchain.cmdstan_shares_objects(path) else None


def build_shared(*, on_build: Callable[[str], None] | None = None,
                 then: Callable[[], None] | None = None) -> dict[str, Path | None]:
    """Compile now, once per installation, what every program shares (the precompiled Stan
    header; the services object the pystan modules link; CmdStan's main object if a CmdStan
    shares stanhier's objects) instead of alongside
    the first programs (:func:`toolchain.build_shared`; ``on_build(what)`` as each build starts;
    ``then()`` once the header is built, e.g. to compile programs with it). ``stanhier prepare``
    runs it.

    >>> build_shared()   # doctest: +SKIP
    {'header': PosixPath('.../pch/pystan-.../stan_pch.hpp'), 'services': PosixPath('.../stan_services.o'),
     'cmdstan_main': PosixPath('.../main.o')}
    """
    return toolchain.build_shared(shared_cmdstan(), on_build=on_build, then=then)


#: memory available (beyond what runs already, e.g. CmdStan's main object compiling) for
#: :func:`compile_objects` to run two compilers: glmer's and lmer's programs together take about
#: 4 GB (``stanhier prepare``'s peak, benchmarks/results/compile.md), with room to spare
_SECOND_JOB_BYTES = 6 * 2**30


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def compile_objects(programs: Sequence[str], *, jobs: int | None = None) -> None:
    """Compile the C++ objects of ``programs`` now, ``jobs`` compiles at a time (one compiler
    process each; default two where there are two cores and memory for both, else one): what
    both engines link (:func:`toolchain.model_objects`), with the shared precompiled header
    (built first if missing); objects already compiled are kept. A backend's ``compile`` of
    each program then only links. Raises what ``model_objects`` raises for the first program
    that fails.

    >>> compile_objects([program_a, program_b])   # doctest: +SKIP
    """
    from concurrent.futures import ThreadPoolExecutor

    if jobs is None:
        memory = _available_memory()
        jobs = 2 if toolchain.usable_cores() >= 2 and (memory is None or memory >= _SECOND_JOB_BYTES) else 1
    flags = toolchain.compile_flags()
    header = toolchain.precompiled_header(flags) if toolchain.pch_enabled() else None

    def build(code: str) -> None:
        toolchain.model_objects(code, toolchain.model_name_for(code), flags, header)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # the compilers are processes: threads suffice
        for done in [pool.submit(build, code) for code in programs]:
            done.result()


def _pystan_available() -> bool:
    try:
        import httpstan  # noqa: F401
        import stan  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> tuple[str, ...]:
    """The engines usable here, in ``auto``'s order of preference."""
    names = []
    if cmdstan_available()[0]:
        names.append("cmdstanpy")
    if _pystan_available():
        names.append("pystan")
    return tuple(names)


def default_engine() -> str:
    """The engine ``backend="auto"`` runs: ``$STANHIER_BACKEND``, else CmdStan if installed, else pystan."""
    chosen = os.environ.get(ENGINE_ENV, "").strip()
    if chosen:
        if chosen not in BACKENDS[1:]:
            raise ArgumentError(f"${ENGINE_ENV}={chosen!r} is not an engine; use pystan or cmdstanpy.")
        return chosen
    return "cmdstanpy" if cmdstan_available()[0] else "pystan"


def get_backend(name: str = "auto") -> Backend:
    """Return the backend called ``name`` (``auto``: see :func:`default_engine`).

    An unknown name is an :class:`~stanhier.errors.ArgumentError` (a ``ValueError``); a known
    engine that is not installed or not usable is a :class:`~stanhier.errors.BackendError`.
    """
    if not isinstance(name, str) or name not in BACKENDS:
        raise ArgumentError(f"Unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    return _make_backend(default_engine() if name == "auto" else name)


@lru_cache(maxsize=None)
def _make_backend(name: str) -> Backend:
    if name == "cmdstanpy":
        ok, why = cmdstan_available()
        if not ok:
            raise BackendError(f"The cmdstanpy backend is not usable: {why}.")
        return CmdStanPyBackend()
    if not _pystan_available():  # pragma: no cover - pystan is a hard dependency
        raise BackendError("The pystan backend is not installed: pip install pystan.")
    return PystanBackend()
