"""How stanhier runs the C++ compiler for both engines: flags, the shared precompiled
header, one set of objects per program, and a cache key that depends on what goes into the
binary only.

Every program stanc generates starts with ``#include <stan/model/model_header.hpp>``,
several hundred thousand lines of Stan Math, Eigen, Boost and TBB. Parsing them is the
same work for every program, so it is done once per installation: the header is
precompiled (``stan_pch.hpp.gch``) into ``<cache>/pch/pystan-<key>/`` when a second
program is compiled, and every compile after that starts with ``-include stan_pch.hpp``.
The first program of an installation does not build it: the header costs about a minute
of CPU and 2 GB of memory once, which pays off from the second program on, and a user
who fits one model (the main job) never needs it.
``key`` hashes the compiler's identity (its ``--version``), the full compile command
(Python's CFLAGS, Stan's macros, stanhier's flags) and httpstan's version and location,
so a change in any of them builds a new header. The header is built while the second
program compiles (without it), under a file lock, written to a temporary name and
renamed; a process that finds it being built compiles without it, so two processes
compiling programs at the same time build it once. A failed header build is not an
error: programs are compiled without it.

Each program is compiled into object files kept in ``<cache>/objects/``
(:func:`model_objects`): as two translation units at once (:func:`split_program`: the
reverse-mode log density in one, the rest in the other) when a second core is idle, else as
one (:func:`one_unit`; two units cost 16-50% more CPU time, which only pays when the two
compilers run side by side, see :func:`two_units_pay`). Both engines link those same objects: with
the services object (httpstan's source, compiled once per installation without ``STAN_THREADS``,
:func:`macros`, :func:`services_alongside`) into the module httpstan imports (:func:`build_services_module`),
and with CmdStan's main object into a CmdStan executable (:func:`link_cmdstan`) when CmdStan
has the same Stan release (:func:`cmdstan_shares_objects`). CmdStan's ``main.cpp`` is compiled
the same way (macros, flags, headers) once per installation (:func:`cmdstan_main_alongside`).
A program fitted with both engines is compiled once.

Python's default CFLAGS include ``-g``: debug information for a Stan program costs
more compile time than the program's optimisation, and no Stan user debugs the
generated C++, so stanhier compiles with ``-g0`` (see :data:`CXXFLAGS`).

``STANHIER_PCH=0`` switches the header off, ``STANHIER_SPLIT=0`` (``=1``) compiles every program
as one unit (as two),
``STANHIER_SHARED_OBJECTS=0`` the shared objects (CmdStan's ``make`` builds its programs);
``STANHIER_STAN_THREADS=1`` compiles with ``STAN_THREADS`` and httpstan's own services object;
``STANHIER_CXXFLAGS`` replaces stanhier's flags (e.g. ``"-O3 -g"``).

Example
-------
>>> "-g0" in CXXFLAGS
True
>>> len(model_name_for("model { }"))   # 'models/' + 16 characters, like httpstan's
23
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib.machinery
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from .. import cache

__all__ = ["CXXFLAGS", "PCH_ENV", "CXXFLAGS_ENV", "SPLIT_ENV", "SHARED_ENV", "THREADS_ENV", "STANC_TIMEOUT",
           "SharedFile", "compile_flags", "compiler_command", "stan_threads", "macros", "toolchain_id",
           "model_name_for", "precompiled_header", "header_alongside", "header_flags", "use_patient_stanc", "stanc",
           "split_program", "one_unit", "two_units_pay", "usable_cores", "uses_propto", "model_objects",
           "services_alongside", "build_services_module", "cmdstan_shares_objects", "cmdstan_main_alongside",
           "link_cmdstan", "build_shared"]

logger = logging.getLogger("stanhier")

#: stanhier's flags for the generated C++ (after Python's CFLAGS, so they win): httpstan's
#: own (-O3 -std=c++14 -Wno-sign-compare) plus ``-g0`` (no debug information).
CXXFLAGS = ("-O3", "-g0", "-std=c++14", "-Wno-sign-compare")
#: ``0``/``false`` switches the precompiled header off.
PCH_ENV = "STANHIER_PCH"
#: Replaces :data:`CXXFLAGS` (split like a shell command line).
CXXFLAGS_ENV = "STANHIER_CXXFLAGS"
#: ``0``/``false`` compiles each program as one translation unit, ``1``/``true`` as two
#: (:func:`split_program`); unset or ``auto``: two when a core is idle (:func:`two_units_pay`).
SPLIT_ENV = "STANHIER_SPLIT"
#: ``0``/``false``: CmdStan builds its executables with its own ``make`` (see :func:`cmdstan_shares_objects`).
SHARED_ENV = "STANHIER_SHARED_OBJECTS"

#: ``1``/``true`` compiles every program with ``STAN_THREADS``, as httpstan does (see :func:`macros`).
THREADS_ENV = "STANHIER_STAN_THREADS"
#: httpstan's macros for every program (httpstan/models.py, build_services_extension_module)
#: but ``STAN_THREADS`` (see :func:`macros`)
_MACROS = ("-DBOOST_DISABLE_ASSERTS", "-DBOOST_PHOENIX_NO_VARIADIC_EXPRESSION", "-D_REENTRANT",
           "-D_GLIBCXX_USE_CXX11_ABI=0")
_HEADER = "#include <stan/model/model_header.hpp>\n"


def compile_flags() -> list[str]:
    """The flags stanhier passes after Python's CFLAGS (``$STANHIER_CXXFLAGS`` replaces them)."""
    env = os.environ.get(CXXFLAGS_ENV)
    return shlex.split(env) if env and env.strip() else list(CXXFLAGS)


def _switched_on(env: str, default: str = "1") -> bool:
    return os.environ.get(env, default).strip().lower() not in ("0", "false", "no", "off")


def stan_threads() -> bool:
    """Whether programs are compiled with ``STAN_THREADS`` (``$STANHIER_STAN_THREADS``; off by default)."""
    return _switched_on(THREADS_ENV, "0")


def macros() -> tuple[str, ...]:
    """The preprocessor macros of every compile: httpstan's, without ``STAN_THREADS`` unless
    :func:`stan_threads`. With it Stan's autodiff stack is a ``thread_local``, which in a shared
    library (httpstan's module) costs a call to ``__tls_get_addr`` per access, one or more per
    autodiff variable: about a quarter of a chain's time. No stanhier program needs it: every
    chain runs in a process of its own (httpstan's workers; CmdStan one process per chain), and
    the log density runs in the Python process holding the GIL. Without it the programs link
    stanhier's build of httpstan's services object (:func:`services_alongside`), not httpstan's.

    >>> "-DSTAN_THREADS" in macros()
    False
    """
    return _MACROS + (("-DSTAN_THREADS",) if stan_threads() else ())


def pch_enabled() -> bool:
    return _switched_on(PCH_ENV)


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
        _compiler_version(cmd[0]), " ".join(cmd), " ".join(macros()), " ".join(flags or compile_flags()),
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


#: seconds stanc may take (httpstan allows 1 s, which larger programs exceed on a loaded machine)
STANC_TIMEOUT = 120.0


class _PatientSubprocess:
    """``subprocess`` as httpstan.compile sees it, with a longer stanc timeout."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def run(*args, **kwargs):
        kwargs["timeout"] = max(kwargs.get("timeout") or 0, STANC_TIMEOUT)
        return subprocess.run(*args, **kwargs)


def use_patient_stanc() -> None:
    """Let httpstan's stanc call run up to :data:`STANC_TIMEOUT` seconds (it allows 1 s: the
    conditional programs take about 0.7 s on a quiet 2-core machine, more under load).

    >>> use_patient_stanc(); import httpstan.compile; httpstan.compile.subprocess.run is _PatientSubprocess.run
    True
    """
    import httpstan.compile

    httpstan.compile.subprocess = _PatientSubprocess()


def stanc(program_code: str, model_name: str) -> tuple[str, str]:
    """httpstan's stanc on ``program_code``: the C++ of class ``model_<id>`` (``id`` of
    ``model_name``) and stanc's warnings. A program stanc rejects raises
    :class:`~stanhier.errors.StanCompileError` with stanc's message and the line it names."""
    import httpstan.compile

    from .base import compile_error

    use_patient_stanc()
    try:
        return httpstan.compile.compile(program_code, f"model_{model_name.split('/')[1]}")
    except ValueError as exc:
        raise compile_error(str(exc), program_code) from None


def _header_key(flags: list[str]) -> str:
    return hashlib.blake2b(toolchain_id(flags).encode(), digest_size=8).hexdigest()


def _includes() -> list[str]:
    """httpstan's headers (Stan, Stan Math, Eigen, Boost, TBB) and Python's."""
    import sysconfig

    includes = [f"-I{_httpstan_dir() / 'include'}"]
    py_inc = sysconfig.get_paths().get("include")
    if py_inc:
        includes.append(f"-I{py_inc}")
    return includes


def _header_command(hpp: Path, out: Path, flags: list[str]) -> list[str]:
    return [*compiler_command(), *macros(), *_includes(), "-x", "c++-header", str(hpp), "-o", str(out), *flags]


def _header_folder(flags: list[str]) -> Path:
    return cache.cache_dir() / "pch" / f"pystan-{_header_key(flags)}"


class _SharedBuild:
    """One build of a file every program shares (the precompiled header, CmdStan's main object)
    under its lock: :meth:`start` runs the compiler, :meth:`finish` waits for it and publishes the
    result (a temporary name renamed at the end, so a reader never sees half a file)."""

    def __init__(self, folder: Path, product: str, command: Callable[[Path], list[str]], what: str) -> None:
        self.folder, self.product, self.command, self.what = folder, product, command, what
        self.tmp = folder / f".{product}.{os.getpid()}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        command = self.command(self.tmp)
        with open(self.folder / "build.log", "w") as log:  # a file, never a pipe nobody reads yet
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def finish(self) -> Path | None:
        self.proc.wait()
        folder = self.folder
        output = (folder / "build.log").read_text(errors="replace")
        if self.proc.returncode != 0 or not self.tmp.is_file():
            self.tmp.unlink(missing_ok=True)
            if self.proc.returncode > 0:  # an error, not a signal (e.g. out of memory): remember it
                (folder / "FAILED").write_text(output[-4000:])
            logger.warning("stanhier: %s could not be built (see %s)", self.what, folder / "build.log")
            return None
        os.replace(self.tmp, folder / self.product)
        (folder / "seconds").write_text(f"{time.perf_counter() - self.started:.1f}\n")
        with open(folder / "builds", "a") as fh:  # an audit trail: one line per build
            fh.write(f"{os.getpid()} {time.time():.0f}\n")
        cache.mark_complete(folder)
        logger.debug("built %s in %s", self.what, folder)
        return folder / self.product


class SharedFile:
    """A file shared by every program (see :func:`header_alongside`, :func:`cmdstan_main_alongside`):
    ``path`` is the file once it exists (after the ``with`` block when it was built alongside),
    None if it is not there or could not be built; ``log`` is its build's log."""

    def __init__(self, folder: Path, path: Path | None = None) -> None:
        self.path = path
        self.log = folder / "build.log"


def _ready(folder: Path, product: str) -> Path | None | bool:
    """The product if built, False if the compiler rejected it before (do not retry), else None."""
    if cache.is_complete(folder):
        return folder / product
    if (folder / "FAILED").is_file():
        return False
    return None


@contextlib.contextmanager
def _built_alongside(folder: Path, product: str, command: Callable[[Path], list[str]], what: str, *,
                     on_build=None, wait: bool = False) -> Iterator[SharedFile]:
    """Yields a :class:`SharedFile`: set if ``folder/product`` exists; if not, unset while it is
    built (under ``folder``'s lock) alongside the caller's own compile, and set on exit. A process
    that finds another one building it does not wait for it (unless ``wait``)."""
    ready = _ready(folder, product)
    if ready is not None:
        yield SharedFile(folder, ready or None)
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder) + ".lock")
    try:
        lock.acquire(timeout=3600 if wait else 0)
    except Timeout:  # another process is building it
        yield SharedFile(folder)
        return
    try:
        ready = _ready(folder, product)  # another process may have built it meanwhile
        if ready is not None:
            yield SharedFile(folder, ready or None)
            return
        if on_build is not None:
            on_build()
        build = _SharedBuild(folder, product, command, what)
        build.start()
        shared = SharedFile(folder)
        try:
            yield shared
        finally:
            shared.path = build.finish()
    finally:
        lock.release()


def precompiled_header(flags: list[str] | None = None, *, on_build=None) -> Path | None:
    """The shared precompiled header for ``flags`` (built now if missing, waiting for another
    process that is building it), or None if off or it cannot be built. ``on_build()`` is called
    before a build starts (for a display)."""
    if not pch_enabled():
        return None
    flags = list(flags or compile_flags())
    with header_alongside(flags, on_build=on_build, wait=True):
        pass  # nothing to compile alongside: the build finishes on exit
    ready = _ready(_header_folder(flags), "stan_pch.hpp.gch")
    return _header_folder(flags) / "stan_pch.hpp" if ready else None


@contextlib.contextmanager
def header_alongside(flags: list[str] | None = None, *, on_build=None, wait: bool = False):
    """The shared header for a compile that is about to start: yields it if it exists; if not,
    yields None and, unless this is the installation's first program (:func:`_compiled_before`),
    builds it while the caller compiles its program without it, finishing on exit (the header
    and the program's units share the cores instead of the program waiting for the header). A
    process that finds another one building it does not wait (unless ``wait``): it compiles
    without the header."""
    flags = list(flags or compile_flags())
    if not pch_enabled():
        yield None
        return
    folder = _header_folder(flags)
    hpp = folder / "stan_pch.hpp"
    if not wait and _ready(folder, "stan_pch.hpp.gch") is None and not _compiled_before():
        logger.debug("the first program of this installation: compiled without building the shared header")
        yield None
        return

    def command(out: Path) -> list[str]:
        hpp.write_text(_HEADER)
        return _header_command(hpp, out, flags)

    with _built_alongside(folder, "stan_pch.hpp.gch", command, "the precompiled Stan header (programs "
                          "compile without it)", on_build=on_build, wait=wait) as shared:
        yield hpp if shared.path else None


def _compiled_before() -> bool:
    """Some program's objects are in the cache already (:func:`model_objects`): the header,
    built alongside the next one, will be used again."""
    objects = cache.cache_dir() / "objects"
    return objects.is_dir() and any(cache.is_complete(p) for p in objects.iterdir() if p.is_dir())


def header_flags(hpp: Path | None) -> list[str]:
    """Compiler flags that use the precompiled header ``hpp`` (none without one)."""
    return [] if hpp is None else ["-Winvalid-pch", "-include", str(hpp)]


# ------------------------------------------------------------------ two translation units
_GRAD_MARK = "  // Reverse mode autodiff log prob\n"
_BOILERPLATE = "\n#ifndef USING_R\n// Boilerplate\n"
_PROFILES = "\nstan::math::profile_map profiles__;\n"  # the one namespace-level definition
_EIGEN_FORWARDER = """    Eigen::Matrix<int,-1,1> params_i;
    return log_prob_impl<propto__, jacobian__>(params_r, params_i, pstream);"""
_VECTOR_FORWARDER = """           std::ostream* pstream = nullptr) const {
    return log_prob_impl<propto__, jacobian__>(params_r, params_i, pstream);"""
_VECTOR_TO_EIGEN = """           std::ostream* pstream = nullptr) const {
    // stanhier: the same computation on an Eigen copy, so the log density is compiled for one
    // argument type only
    Eigen::Matrix<T_,-1,1> params_r_eigen = Eigen::Map<Eigen::Matrix<T_,-1,1>>(params_r.data(), params_r.size());
    Eigen::Matrix<int,-1,1> params_i_eigen = Eigen::Map<Eigen::Matrix<int,-1,1>>(params_i.data(), params_i.size());
    return log_prob_reverse<{propto}, jacobian__>(params_r_eigen, params_i_eigen, pstream);"""
_EIGEN_TO_REVERSE = """    Eigen::Matrix<int,-1,1> params_i;
    return log_prob_reverse<{propto}, jacobian__>(params_r, params_i, pstream);"""
#: put before the Eigen forwarder: the log density on doubles is the reverse-mode one's value
_REVERSE_ON_DOUBLES = """  // stanhier: the log density on doubles is the value of the reverse-mode one (in a nested
  // autodiff scope), so the model's statements are compiled for one scalar type, not two: the
  // double log_prob_impl is never instantiated. Stan's samplers and optimizers evaluate the
  // log density with its gradient; doubles only serve the odd check of an initial value.
  template <bool propto__, bool jacobian__>
  inline double log_prob_reverse(Eigen::Matrix<double,-1,1>& params_r, Eigen::Matrix<int,-1,1>& params_i,
                                 std::ostream* pstream) const {
    stan::math::nested_rev_autodiff nested;
    Eigen::Matrix<stan::math::var,-1,1> params_var = params_r.template cast<stan::math::var>();
    return log_prob_impl<propto__, jacobian__>(params_var, params_i, pstream).val();
  }
  template <bool propto__, bool jacobian__, typename T_>
  inline T_ log_prob_reverse(Eigen::Matrix<T_,-1,1>& params_r, Eigen::Matrix<int,-1,1>& params_i,
                             std::ostream* pstream) const {
    return log_prob_impl<propto__, jacobian__>(params_r, params_i, pstream);
  }
"""
#: the end of the std::vector write_array, and the same on Eigen copies (one instantiation of
#: write_array_impl, as Stan's samplers call it, instead of two)
_VECTOR_WRITE_ARRAY = """    vars = std::vector<double>(num_to_write,
             std::numeric_limits<double>::quiet_NaN());
    write_array_impl(base_rng, params_r, params_i, vars,
      emit_transformed_parameters, emit_generated_quantities, pstream);"""
_EIGEN_WRITE_ARRAY = """    vars = std::vector<double>(num_to_write,
             std::numeric_limits<double>::quiet_NaN());
    // stanhier: the same computation on Eigen copies, so write_array_impl is compiled for one
    // argument type only
    Eigen::Matrix<double,-1,1> params_r_eigen = Eigen::Map<Eigen::Matrix<double,-1,1>>(params_r.data(), params_r.size());
    Eigen::Matrix<double,-1,1> vars_eigen = Eigen::Map<Eigen::Matrix<double,-1,1>>(vars.data(), vars.size());
    write_array_impl(base_rng, params_r_eigen, params_i, vars_eigen,
      emit_transformed_parameters, emit_generated_quantities, pstream);
    Eigen::Map<Eigen::Matrix<double,-1,1>>(vars.data(), vars.size()) = vars_eigen;"""
_EIGEN_LOG_PROB = "  template <bool propto__, bool jacobian__, typename T_> inline T_\n  log_prob(Eigen::Matrix<T_,-1,1>& params_r"


def uses_propto(program_code: str) -> bool:
    """Whether dropping constant terms (``propto``) can change the program's log density: only
    ``~`` statements and ``_lupdf``/``_lupmf`` calls drop them; ``target += ..._lpdf(...)`` never
    does. stanhier's programs use neither, so their ``propto`` variants are the same function.

    >>> uses_propto("model { y ~ normal(0, 1); }"), uses_propto("model { target += normal_lpdf(y | 0, 1); }  // y ~ N")
    (True, False)
    """
    code = re.sub(r"/\*.*?\*/", " ", program_code, flags=re.S)
    code = re.sub(r"//[^\n]*", " ", code)
    return "~" in code or "_lupdf" in code or "_lupmf" in code


def _closing_brace(text: str, open_at: int) -> int:
    """Index of the ``}`` that closes the ``{`` at ``open_at`` (string and character literals skipped)."""
    depth, i, n = 0, open_at, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced braces")


def _recognised(cpp: str) -> tuple[int, int, int] | None:
    """Where the reverse-mode ``log_prob_impl`` starts, where its body opens and closes in
    stanc's C++; None where the output does not have the shape the rewrites expect."""
    start, boiler = cpp.find(_GRAD_MARK), cpp.find(_BOILERPLATE)
    if (start < 0 or boiler < 0 or cpp.count(_GRAD_MARK) != 1 or cpp.count(_EIGEN_FORWARDER) != 1
            or cpp.count(_VECTOR_FORWARDER) != 1 or cpp.count(_PROFILES) != 1 or cpp.count(_EIGEN_LOG_PROB) != 1):
        return None
    signature_end = cpp.find(") const {", start)
    if signature_end < 0:
        return None
    body = signature_end + len(") const ")
    try:
        end = _closing_brace(cpp, body)
    except ValueError:
        return None
    if "  inline stan::scalar_type_t<VecR>\n" not in cpp[start:body]:
        return None
    return start, body, end


def _forward(text: str, propto: bool) -> str:
    """stanc's boilerplate with the three rewrites of :func:`split_program` (fewer instantiations)."""
    propto_arg = "propto__" if propto else "false"
    forwarders = {_VECTOR_WRITE_ARRAY: _EIGEN_WRITE_ARRAY,  # where stanc wrote it so (else both are compiled)
                  _EIGEN_LOG_PROB: _REVERSE_ON_DOUBLES + _EIGEN_LOG_PROB,
                  _EIGEN_FORWARDER: _EIGEN_TO_REVERSE.replace("{propto}", propto_arg),
                  _VECTOR_FORWARDER: _VECTOR_TO_EIGEN.replace("{propto}", propto_arg)}
    for old, new in forwarders.items():
        text = text.replace(old, new)
    return text


def one_unit(cpp: str, *, propto: bool = True) -> str | None:
    """stanc's C++ for one program as one translation unit with the rewrites of
    :func:`split_program` (which cut what is instantiated); None where stanc's output does not
    have the expected shape (it is then compiled as stanc wrote it)."""
    return _forward(cpp, propto) if _recognised(cpp) else None


def split_program(cpp: str, model_class: str, *, propto: bool = True) -> tuple[str, str] | None:
    """stanc's C++ for one program as two translation units that compile in parallel.

    The gradient's code (the reverse-mode ``log_prob_impl``: every parameter-dependent statement
    on autodiff types, the most expensive part to compile) goes in one unit, everything else in
    the other. The first unit keeps the class with that member declared, not defined; the second
    defines it, instantiates it explicitly for the ways the model calls it, and leaves out the
    module's entry points. Three rewrites of stanc's boilerplate cut what is instantiated
    (:func:`one_unit` makes them too):

    * the ``std::vector`` overloads of ``log_prob`` and ``write_array`` copy their arguments into
      Eigen vectors (Stan's samplers use the Eigen ones; the copies are of the parameter and
      output vectors only);
    * with ``propto=False`` (see :func:`uses_propto`) both ``propto`` variants call the one that
      keeps every term, which computes the same value (the log density's instantiations go
      from eight to four or two);
    * the log density on doubles (only Stan's check of an initial value asks for it) is the
      value of the reverse-mode one, so stanc's double ``log_prob_impl`` is never compiled.

    The last rewrite and ``write_array``'s copy make the first unit compile in 16-23% less CPU
    time (``python benchmarks/bench_compile.py --units``).

    Returns None where stanc's output does not have the expected shape (the program is then
    compiled as stanc wrote it, in one unit).
    """
    where = _recognised(cpp)
    if where is None:
        return None
    start, body, end = where
    declaration = cpp[start:body].rstrip().replace("  inline stan::scalar_type_t<VecR>\n",
                                                    "  stan::scalar_type_t<VecR>\n")
    boiler = cpp.find(_BOILERPLATE)
    main = _forward(cpp[:start] + declaration + ";  // defined in the gradient's translation unit\n"
                    + cpp[end + 1:], propto)
    vec_r, vec_i = "Eigen::Matrix<stan::math::var,-1,1>", "Eigen::Matrix<int,-1,1>"
    lines = [f"namespace {model_class}_namespace {{"]
    for p in (("false", "true") if propto else ("false",)):
        for jacobian in ("false", "true"):
            lines.append(f"template stan::math::var {model_class}::log_prob_impl<{p}, {jacobian}, {vec_r}, "
                         f"{vec_i}>({vec_r}&, {vec_i}&, std::ostream*) const;")
    lines.append("}")
    grad = (_forward(cpp[:boiler], propto).replace(_PROFILES, "\nextern " + _PROFILES[1:-1]
                                                   + "  // defined in the other unit\n")
            + "\n// the reverse-mode log density, instantiated as the model calls it\n"
            + "\n".join(lines) + "\n")
    return main, grad


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the platform has one).

    >>> usable_cores() >= 1
    True
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def two_units_pay() -> bool:
    """Whether to compile the next program as two translation units at once: ``$STANHIER_SPLIT``
    when set (``1`` two, ``0`` one), else whether a second core is idle: at least two cores and a
    one-minute load average of at most one less (the test GNU make's ``--load-average`` makes).

    Two units finish sooner only when both compilers get a core: they cost 16-50% more CPU time
    than one, as each instantiates much of what the other does (``python
    benchmarks/bench_compile.py --split``: a brms program's two units finish in 0.65-0.79 of one
    unit's time on an idle machine, an ML program's in 0.88-0.95). On a busy machine (parallel
    jobs, test workers, the shared header compiling alongside) one unit finishes first.

    >>> isinstance(two_units_pay(), bool)
    True
    """
    setting = os.environ.get(SPLIT_ENV, "auto").strip().lower()
    if setting not in ("", "auto"):
        return _switched_on(SPLIT_ENV)
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return cores >= 2
    return cores >= 2 and load <= cores - 1


def _compile_command(source: Path, obj: Path, flags: list[str], header: Path | None) -> list[str]:
    return [*compiler_command(), *macros(), *_includes(), *flags, *header_flags(header), "-c", str(source),
            "-o", str(obj)]


def _compile_units(sources: list[Path], flags: list[str], header: Path | None) -> tuple[list[Path], str]:
    """Compile ``sources`` to object files, all at once (one compiler process each)."""
    objects = [src.with_suffix(".o") for src in sources]
    logs = [src.with_suffix(".log") for src in sources]
    procs = []
    for src, obj, log in zip(sources, objects, logs):
        # each compiler writes to a file, not a pipe: a pipe read after another process's would
        # fill up with warnings and stall its compiler until the other one had finished
        with open(log, "w") as fh:
            procs.append(subprocess.Popen(_compile_command(src, obj, flags, header), stdout=fh,
                                          stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait()
    output = "".join(log.read_text(errors="replace") for log in logs)
    for log in logs:
        log.unlink(missing_ok=True)
    failed = [src.name for src, proc in zip(sources, procs) if proc.returncode != 0]
    if failed:
        raise RuntimeError(f"the C++ compiler failed on {', '.join(failed)}:\n{output[-4000:]}")
    return objects, output


def _model_symbols(objects: list[Path], model_class: str) -> list[str]:
    """The model's own symbols that ``objects`` need but none of them defines (a split that went
    wrong), by ``nm``; none when nm is missing (the link or the import would tell)."""
    defined: set[str] = set()
    needed: set[str] = set()
    for obj in objects:
        try:
            proc = subprocess.run(["nm", str(obj)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return []
        for line in proc.stdout.splitlines():
            kind, _, name = line[17:].partition(" ") if len(line) > 17 else ("", "", "")
            if kind == "U":
                if model_class in name:
                    needed.add(name)
            elif name:
                defined.add(name)
    return sorted(needed - defined)


def model_objects(program_code: str, model_name: str, flags: list[str], header: Path | None, *,
                  cpp: str | None = None) -> tuple[list[Path], str]:
    """The compiled model of ``program_code``: object files both engines link (httpstan's
    extension module, CmdStan's executable), compiled once per program and toolchain into
    ``<cache>/objects/<id>/`` (``id`` from :func:`model_name_for`) beside their C++ sources,
    under that entry's lock.

    Two translation units compiled at once when a core is idle (:func:`two_units_pay`; on two
    cores this takes about as long as the larger unit), else one (:func:`one_unit`); stanc's
    text as it wrote it where a rewrite does not apply or does not compile. ``cpp``: stanc's output
    if already made. Returns the objects and the compiler's messages (empty when cached); raises
    RuntimeError when the compiler fails, StanCompileError when stanc does.
    """
    model_id = model_name.split("/")[1]
    model_class = f"model_{model_id}"
    with cache.locked_entry("objects", model_id) as entry:
        if cache.is_complete(entry):
            return sorted(entry.glob("*.o")), ""
        if cpp is None:
            cpp, _ = stanc(program_code, model_name)
        propto = uses_propto(program_code)
        units = split_program(cpp, model_class, propto=propto) if two_units_pay() else None
        if not units:
            single = one_unit(cpp, propto=propto)
            units = (single,) if single else None
        # stanc's text as it wrote it: the fallback when a rewritten text does not compile
        attempts = ([list(units)] if units else []) + [[cpp]]
        logger.debug("compiling %s as %d translation unit(s)", model_name, len(attempts[0]))
        output = ""
        for attempt, texts in enumerate(attempts):
            sources = [entry / f"{model_class}_{i}.cpp" for i in range(len(texts))]
            for src, text in zip(sources, texts):
                src.write_text(text)
            try:
                objects, out = _compile_units(sources, flags, header)
                output += out
                missing = _model_symbols(objects, model_class)
                if missing:
                    raise RuntimeError("the objects lack " + "; ".join(missing[:3]))
                cache.mark_complete(entry)
                return objects, output
            except RuntimeError as exc:
                for src in sources:
                    src.with_suffix(".o").unlink(missing_ok=True)
                    src.unlink(missing_ok=True)
                if attempt == len(attempts) - 1:
                    raise
                logger.debug("compiling %s as rewritten failed (%s); compiling stanc's text", model_name, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _libraries() -> tuple[list[str], Path]:
    """The libraries every Stan program links (httpstan's SUNDIALS and TBB) and their folder."""
    libraries = ["sundials_cvodes", "sundials_idas", "sundials_nvecserial", "tbb"]
    if sys.platform == "darwin":  # pragma: no cover - as httpstan
        libraries += ["tbbmalloc", "tbbmalloc_proxy"]
    return libraries, _httpstan_dir() / "lib"


@contextlib.contextmanager
def services_alongside(flags: list[str], header: Path | None, *, on_build=None) -> Iterator[SharedFile]:
    """The services object httpstan's modules link, for the model objects of ``flags``: httpstan's
    own ``stan_services.o`` when :func:`stan_threads` (it was compiled with ``STAN_THREADS``),
    else stanhier's build of its source without it, compiled once per installation into
    ``<cache>/pch/services-<key>/`` like CmdStan's main object (:func:`cmdstan_main_alongside`):
    alongside the caller's compile when missing, waiting for another process that is building it.
    Its ``path`` is None if the compiler rejected it."""
    if stan_threads():
        yield SharedFile(_httpstan_dir(), _httpstan_dir() / "stan_services.o")
        return
    folder = cache.cache_dir() / "pch" / f"services-{_header_key(flags)}"
    source = _httpstan_dir() / "stan_services.cpp"  # NUTS and the log density for Python
    with _built_alongside(folder, "stan_services.o", lambda out: _compile_command(source, out, flags, header),
                          "httpstan's services object", on_build=on_build, wait=True) as shared:
        yield shared


def build_services_module(program_code: str, model_name: str, flags: list[str], header: Path | None, *,
                          cpp: str | None = None, on_build=None) -> str:
    """Build httpstan's extension module for ``program_code`` (what
    ``httpstan.models.build_services_extension_module`` does): the model's objects
    (:func:`model_objects`, shared with CmdStan) linked with the services object
    (:func:`services_alongside`; ``on_build()`` when it is built first) into httpstan's model
    directory. Returns the compiler's messages; raises RuntimeError on failure.
    """
    import httpstan.cache

    module_dir = httpstan.cache.model_directory(model_name)
    module_dir.mkdir(parents=True, exist_ok=True)
    model_class = f"model_{model_name.split('/')[1]}"
    with services_alongside(flags, header, on_build=on_build) as services:
        objects, output = model_objects(program_code, model_name, flags, header, cpp=cpp)
    if services.path is None:
        raise RuntimeError(f"httpstan's services object could not be compiled (see {services.log})")
    module = module_dir / f"stan_services_{model_class}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    tmp = module.with_name(f".{module.name}.{os.getpid()}")
    libraries, lib_dir = _libraries()
    _link(objects + [services.path], tmp, libraries, lib_dir)
    os.replace(tmp, module)
    return output


def _link(objects: list[Path], out: Path, libraries: list[str], lib_dir: Path, *, executable: bool = False) -> None:
    """Link an extension module as setuptools does for httpstan (C++ driver, rpath to httpstan's
    libs), or with ``executable`` a program."""
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:  # pragma: no cover - older setuptools
        from distutils.ccompiler import new_compiler  # type: ignore[no-redef]
        from distutils.sysconfig import customize_compiler  # type: ignore[no-redef]
    compiler = new_compiler()
    customize_compiler(compiler)
    link = compiler.link_executable if executable else compiler.link_shared_object
    try:
        link([str(o) for o in objects], str(out), libraries=libraries, library_dirs=[str(lib_dir)],
             extra_postargs=[f"-Wl,-rpath,{lib_dir}"], target_lang="c++")
    except Exception as exc:  # distutils raises LinkError, DistutilsExecError, OSError...
        raise RuntimeError(f"linking failed: {exc}") from None


# ------------------------------------------------------------------ CmdStan from the same objects
_VERSION_MACROS = ("STAN_MAJOR", "STAN_MINOR", "STAN_PATCH", "STAN_MATH_MAJOR", "STAN_MATH_MINOR",
                   "STAN_MATH_PATCH")


def _stan_versions(*headers: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in headers:
        with contextlib.suppress(OSError):
            found.update(re.findall(r"#define\s+(STAN_(?:MATH_)?(?:MAJOR|MINOR|PATCH))\s+(\d+)", header.read_text()))
    return found


def cmdstan_shares_objects(cmdstan: Path) -> bool:
    """Whether CmdStan at ``cmdstan`` has the Stan and Stan Math release httpstan has (their
    version headers agree), so its executables can be linked from the objects pystan uses.
    ``STANHIER_SHARED_OBJECTS=0`` says no (CmdStan's own ``make`` then builds every program).

    >>> cmdstan_shares_objects(Path("/nonexistent"))
    False
    """
    if not _switched_on(SHARED_ENV):
        return False
    try:
        ours = _stan_versions(_httpstan_dir() / "include" / "stan" / "version.hpp",
                              _httpstan_dir() / "include" / "stan" / "math" / "version.hpp")
    except ImportError:
        return False
    theirs = _stan_versions(cmdstan / "stan" / "src" / "stan" / "version.hpp",
                            cmdstan / "stan" / "src" / "stan" / "math" / "version.hpp",
                            cmdstan / "stan" / "lib" / "stan_math" / "stan" / "math" / "version.hpp")
    return (cmdstan / "src" / "cmdstan" / "main.cpp").is_file() and all(
        ours.get(k) is not None and ours.get(k) == theirs.get(k) for k in _VERSION_MACROS)


def _cmdstan_main_command(cmdstan: Path, out: Path, flags: list[str], header: Path | None) -> list[str]:
    """CmdStan's ``main.cpp`` compiled as the model objects are (macros, flags, httpstan's headers
    first, then CmdStan's own and CLI11)."""
    extra = [f"-I{cmdstan / 'src'}"] + [f"-I{d}" for d in sorted((cmdstan / "lib").glob("CLI11*"))]
    return [*compiler_command(), *macros(), *_includes(), *extra, *flags, *header_flags(header), "-c",
            str(cmdstan / "src" / "cmdstan" / "main.cpp"), "-o", str(out)]


def _cmdstan_main_folder(cmdstan: Path, flags: list[str]) -> Path:
    key = hashlib.blake2b(f"{toolchain_id(flags)}\n{cmdstan.resolve()}".encode(), digest_size=8).hexdigest()
    return cache.cache_dir() / "pch" / f"cmdstan-main-{key}"


@contextlib.contextmanager
def cmdstan_main_alongside(cmdstan: Path, flags: list[str], header: Path | None, *,
                           on_build=None) -> Iterator[SharedFile]:
    """CmdStan's main object for executables linked from :func:`model_objects` (compiled like
    them, once per installation, in ``<cache>/pch/cmdstan-main-<key>/``): yields a
    :class:`SharedFile`, built alongside the caller's compile when missing (waiting for another
    process that is building it). Its ``path`` is None if the compiler rejected it."""
    folder = _cmdstan_main_folder(cmdstan, flags)
    with _built_alongside(folder, "main.o", lambda out: _cmdstan_main_command(cmdstan, out, flags, header),
                          "CmdStan's main object", on_build=on_build, wait=True) as shared:
        yield shared


def link_cmdstan(objects: list[Path], main: Path, out: Path) -> None:
    """A CmdStan executable at ``out`` from a model's objects and CmdStan's main object (written
    to a temporary name, then renamed); raises RuntimeError when the linker fails."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    libraries, lib_dir = _libraries()
    try:
        _link([*objects, main], tmp, libraries, lib_dir, executable=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def build_shared(cmdstan: Path | None = None, flags: list[str] | None = None, *,
                 on_build: Callable[[str], None] | None = None,
                 then: Callable[[], None] | None = None) -> dict[str, Path | None]:
    """Compile now, once per installation, what every program shares: the precompiled Stan
    header; given a CmdStan that shares stanhier's objects (:func:`cmdstan_shares_objects`),
    CmdStan's main object (the two files CmdStan's own ``make build`` compiles at install time);
    then, with the header, httpstan's services object (:func:`services_alongside`). Each compiles
    in its own compiler process, the first two at once, then the services object beside CmdStan's
    main object, under the same locks as when they are built alongside a program; what is built
    already is kept (``on_build(what)`` is called as each build starts, for a display). ``then()``
    runs once the header and the services object are there, while CmdStan's main object may
    still compile (programs to compile with the header; it must not link a CmdStan executable,
    which waits for that object under a lock this call holds). Returns each file's path (None:
    switched off, or the compiler rejected it; see its ``build.log``).

    >>> build_shared()   # doctest: +SKIP
    {'header': PosixPath('/root/.cache/stanhier/pch/pystan-6f0c1d2e3a4b5c6d/stan_pch.hpp'),
     'services': PosixPath('/root/.cache/stanhier/pch/services-6f0c1d2e3a4b5c6d/stan_services.o')}
    """
    flags = list(flags or compile_flags())

    def note(what: str):
        return None if on_build is None else (lambda: on_build(what))

    with contextlib.ExitStack() as stack:
        with header_alongside(flags, wait=True, on_build=note("the precompiled Stan header")) as header:
            main = stack.enter_context(cmdstan_main_alongside(cmdstan, flags, header, on_build=note(
                "CmdStan's main object"))) if cmdstan else None  # header: None while it is being built
        # with the header, now built, and before ``then()``, whose programs' links wait for it
        with services_alongside(flags, precompiled_header(flags), on_build=note("httpstan's services object")) as \
                services:
            pass
        if then is not None:  # the header and the services object are built; CmdStan's main object may not be
            then()
    folder = _header_folder(flags)
    built = {"header": folder / "stan_pch.hpp" if pch_enabled() and _ready(folder, "stan_pch.hpp.gch") else None}
    if not stan_threads():  # else httpstan's own
        built["services"] = services.path
    if main is not None:
        built["cmdstan_main"] = main.path
    return built
