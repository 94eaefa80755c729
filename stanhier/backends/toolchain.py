"""How the pystan backend runs the C++ compiler: flags, the shared precompiled header,
and a cache key that depends on what goes into the binary only.

Every program stanc generates starts with ``#include <stan/model/model_header.hpp>``,
several hundred thousand lines of Stan Math, Eigen, Boost and TBB. Parsing them is the
same work for every program, so it is done once per installation: the header is
precompiled (``stan_pch.hpp.gch``) into ``<cache>/pch/pystan-<key>/`` the first time a
program is compiled, and every compile after that starts with ``-include stan_pch.hpp``.
``key`` hashes the compiler's identity (its ``--version``), the full compile command
(Python's CFLAGS, Stan's macros, stanhier's flags) and httpstan's version and location,
so a change in any of them builds a new header. The header is built under a file lock,
written to a temporary name and renamed, so two processes compiling their first
program at the same time build it once. A failed header build is not an error: the
program is compiled without it.

Python's default CFLAGS include ``-g``: debug information for a Stan program costs
more compile time than the program's optimisation, and no Stan user debugs the
generated C++, so stanhier compiles with ``-g0`` (see :data:`CXXFLAGS`).

``STANHIER_PCH=0`` switches the header off; ``STANHIER_CXXFLAGS`` replaces stanhier's
flags (e.g. ``"-O3 -g"``).

Example
-------
>>> "-g0" in CXXFLAGS
True
>>> len(model_name_for("model { }"))   # 'models/' + 16 characters, like httpstan's
23
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.machinery
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from .. import cache

__all__ = ["CXXFLAGS", "PCH_ENV", "CXXFLAGS_ENV", "compile_flags", "compiler_command", "toolchain_id",
           "model_name_for", "precompiled_header", "header_flags"]

logger = logging.getLogger("stanhier")

#: stanhier's flags for the generated C++ (after Python's CFLAGS, so they win): httpstan's
#: own (-O3 -std=c++14 -Wno-sign-compare) plus ``-g0`` (no debug information).
CXXFLAGS = ("-O3", "-g0", "-std=c++14", "-Wno-sign-compare")
#: ``0``/``false`` switches the precompiled header off.
PCH_ENV = "STANHIER_PCH"
#: Replaces :data:`CXXFLAGS` (split like a shell command line).
CXXFLAGS_ENV = "STANHIER_CXXFLAGS"

#: httpstan's macros for every program (httpstan/models.py, build_services_extension_module)
_MACROS = ("-DBOOST_DISABLE_ASSERTS", "-DBOOST_PHOENIX_NO_VARIADIC_EXPRESSION", "-DSTAN_THREADS",
           "-D_REENTRANT", "-D_GLIBCXX_USE_CXX11_ABI=0")
_HEADER = "#include <stan/model/model_header.hpp>\n"


def compile_flags() -> list[str]:
    """The flags stanhier passes after Python's CFLAGS (``$STANHIER_CXXFLAGS`` replaces them)."""
    env = os.environ.get(CXXFLAGS_ENV)
    return shlex.split(env) if env and env.strip() else list(CXXFLAGS)


def pch_enabled() -> bool:
    return os.environ.get(PCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def compiler_command() -> tuple[str, ...]:
    """The compiler and flags setuptools runs for an extension's sources (``gcc ... -fPIC``)."""
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:  # pragma: no cover - older setuptools
        from distutils.ccompiler import new_compiler  # type: ignore[no-redef]
        from distutils.sysconfig import customize_compiler  # type: ignore[no-redef]
    compiler = new_compiler()
    customize_compiler(compiler)
    return tuple(compiler.compiler_so)


@functools.lru_cache(maxsize=None)
def _compiler_version(exe: str) -> str:
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        return proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _httpstan_dir() -> Path:
    import httpstan

    return Path(httpstan.__file__).parent.resolve()


def toolchain_id(flags: list[str] | None = None) -> str:
    """Everything but the program that decides the compiled module: compiler identity, the
    full compile command, httpstan's version and location (modules link its libraries by
    rpath), the platform and Python's extension ABI. Not the spelling of ``sys.executable``."""
    import httpstan

    cmd = compiler_command()
    parts = [
        _compiler_version(cmd[0]), " ".join(cmd), " ".join(_MACROS), " ".join(flags or compile_flags()),
        httpstan.__version__, str(_httpstan_dir()), sys.platform, str(sys.maxsize),
        sys.implementation.cache_tag or "", importlib.machinery.EXTENSION_SUFFIXES[0],
    ]
    return "\n".join(parts)


def model_name_for(program_code: str) -> str:
    """httpstan's model name (``models/<id>``) as stanhier computes it: a hash of the program
    text and :func:`toolchain_id`, so every spelling of the interpreter finds the same module."""
    h = hashlib.blake2b(digest_size=10)
    h.update(program_code.encode())
    h.update(b"\0")
    h.update(toolchain_id().encode())
    return "models/" + base64.b32encode(h.digest()).decode().lower()


def _header_key(flags: list[str]) -> str:
    return hashlib.blake2b(toolchain_id(flags).encode(), digest_size=8).hexdigest()


def _header_command(hpp: Path, out: Path, flags: list[str]) -> list[str]:
    import sysconfig

    pkg = _httpstan_dir()
    includes = [f"-I{pkg / 'include'}"]
    py_inc = sysconfig.get_paths().get("include")
    if py_inc:
        includes.append(f"-I{py_inc}")
    return [*compiler_command(), *_MACROS, *includes, "-x", "c++-header", str(hpp), "-o", str(out), *flags]


def precompiled_header(flags: list[str] | None = None, *, on_build=None) -> Path | None:
    """The shared precompiled header for ``flags`` (built now if missing), or None if off or
    it cannot be built. ``on_build()`` is called before a build starts (for a display)."""
    if not pch_enabled():
        return None
    flags = list(flags or compile_flags())
    folder = cache.cache_dir() / "pch" / f"pystan-{_header_key(flags)}"
    hpp, gch = folder / "stan_pch.hpp", folder / "stan_pch.hpp.gch"
    if cache.is_complete(folder):
        return hpp
    if (folder / "FAILED").is_file():  # the compiler rejected it before: do not try every time
        return None
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock", timeout=3600):
        if cache.is_complete(folder):  # another process built it while we waited
            return hpp
        if (folder / "FAILED").is_file():
            return None
        folder.mkdir(parents=True, exist_ok=True)
        if on_build is not None:
            on_build()
        hpp.write_text(_HEADER)
        tmp = folder / f".stan_pch.{os.getpid()}.gch"
        start = time.perf_counter()
        proc = subprocess.run(_header_command(hpp, tmp, flags), capture_output=True, text=True, check=False)
        (folder / "build.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            if proc.returncode > 0:  # an error, not a signal (e.g. out of memory): remember it
                (folder / "FAILED").write_text(proc.stderr[-4000:])
            logger.warning("stanhier: the precompiled Stan header could not be built (see %s); "
                           "compiling without it", folder / "build.log")
            return None
        os.replace(tmp, gch)
        (folder / "seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
        with open(folder / "builds", "a") as fh:  # an audit trail: one line per build
            fh.write(f"{os.getpid()} {time.time():.0f}\n")
        cache.mark_complete(folder)
    logger.debug("built the precompiled Stan header %s", gch)
    return hpp


def header_flags(hpp: Path | None) -> list[str]:
    """Compiler flags that use the precompiled header ``hpp`` (none without one)."""
    return [] if hpp is None else ["-Winvalid-pch", "-include", str(hpp)]
