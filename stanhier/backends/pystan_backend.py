"""The pystan backend: Stan's compiler and C++ from PyPI wheels (httpstan).

Compiled extension modules live in stanhier's cache (httpstan is pointed there);
a build runs under the cache entry's lock and is marked complete when done.
NUTS runs through ``stan.build(...).sample``; the log density and its gradient
call httpstan's compiled module directly (no HTTP, no JSON per call).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import time
import types
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import cache
from ..progress import SamplingProgress, compiling, verbose
from ..errors import SamplingError, StanCompileError, StanhierError
from . import toolchain
from .base import (SAMPLER_STATS, Backend, CompiledModel, LogDensity, RawSample, SampleSettings,
                   code_line, reshape_flat)

__all__ = ["PystanBackend"]

logger = logging.getLogger("stanhier")


def _point_httpstan_at(entry_root: Path) -> None:
    """Make httpstan keep its models under stanhier's cache (children are forked)."""
    import httpstan.cache
    import httpstan.models

    def cache_directory() -> Path:
        return entry_root

    httpstan.cache.cache_directory = cache_directory
    # fits (models/<id>/fits/<fit>) in this process's own folder
    httpstan.cache.fit_path = lambda name: _fits_folder(entry_root) / (name.replace("/", "-") + ".jsonlines.gz")
    # one key for a program whatever the interpreter's spelling (httpstan hashes sys.executable)
    httpstan.models.calculate_model_name = toolchain.model_name_for
    toolchain.use_patient_stanc()
    _guard_progress_parser()
    _poll_chains_briefly()
    _store_fits_uncompressed()


def _fits_folder(entry_root: Path) -> Path:
    """Where httpstan keeps this process's fits (it writes, reads and deletes them in the process
    that asked for them): one folder per process, so that clearing its own fits never deletes a
    fit another process is writing for the same program."""
    return entry_root / "fits" / str(os.getpid())


class _ProgressPattern:
    """httpstan's progress regex, never returning an empty list; it remembers the phase.

    httpstan (4.13) reads sampler progress with ``iteration_info_re.findall(message).pop()``;
    under load a message can arrive split so that it says ``info:Iteration`` without a
    complete progress line, and the ``IndexError`` ends the whole fit. Progress text is
    cosmetic, so an unmatched message gives the last complete one instead. The phase of the
    latest message (``warmup`` or ``sampling``) is kept for stanhier's progress display.
    """

    def __init__(self, pattern) -> None:
        self.pattern = pattern
        self.last = b"Iteration: 0 / 1 [  0%]  (Warmup)"
        self.phase = "warmup"

    def findall(self, message: bytes) -> list[bytes]:
        found = self.pattern.findall(message)
        if found:
            self.last = found[-1]
            self.phase = "sampling" if b"(Sampling)" in self.last else "warmup"
        return found or [self.last]


class _SocketNames:
    """Stands in for ``tempfile`` in httpstan's services module, noting the names it hands out.

    httpstan binds a Unix socket per Stan call at a ``tempfile.mkstemp`` name in the system
    temporary folder and never removes the file (``httpstan_*.sock``): :func:`_remove_sockets`
    removes the ones made during a call.
    """

    def __init__(self) -> None:
        import tempfile

        self._tempfile = tempfile
        self.made: list[str] = []

    def mkstemp(self, *args: Any, **kwargs: Any):
        fd, name = self._tempfile.mkstemp(*args, **kwargs)
        self.made.append(name)
        return fd, name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tempfile, name)


@contextlib.contextmanager
def _remove_sockets():
    """Remove the socket files httpstan creates in the temporary folder during the block."""
    import httpstan.services_stub as stub

    names = stub.tempfile if isinstance(stub.tempfile, _SocketNames) else _SocketNames()
    stub.tempfile = names
    first = len(names.made)
    try:
        yield
    finally:
        for name in names.made[first:]:
            with contextlib.suppress(OSError):
                os.unlink(name)
        del names.made[first:]


def _guard_progress_parser() -> _ProgressPattern:
    import httpstan.views

    if not isinstance(httpstan.views.iteration_info_re, _ProgressPattern):
        httpstan.views.iteration_info_re = _ProgressPattern(httpstan.views.iteration_info_re)
    return httpstan.views.iteration_info_re


class _BriefSelect:
    """The ``select`` module as httpstan's chain readers see it: a wait is at most
    :data:`_POLL_SECONDS` (see :func:`_poll_chains_briefly`)."""

    def __init__(self, module) -> None:
        self.module = module

    def select(self, rlist, wlist, xlist, timeout=None):
        wait = _POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS)
        return self.module.select(rlist, wlist, xlist, wait)


#: the longest a chain reader blocks the event loop in ``select`` (httpstan's own: 10 ms)
_POLL_SECONDS = 0.001


def _poll_chains_briefly() -> None:
    """httpstan (4.13) reads each chain's output from its socket in a coroutine that blocks the
    event loop in ``select`` for up to 10 ms at a time. Meanwhile no other chain's output is read,
    so a chain whose socket buffer fills up waits, and chains sampled at once take turns instead
    of running side by side. With waits of at most 1 ms (an idle reader then yields through
    httpstan's own ``asyncio.sleep(0.001)``), 2 or 4 chains on 2 cores sample in two thirds of
    the time (``benchmarks/bench_pystan_chains.py``, recorded in
    ``benchmarks/results/pystan_chains.txt``); the draws are the same."""
    import select

    import httpstan.services_stub as stub

    if getattr(stub, "select", None) is select:
        stub.select = _BriefSelect(select)


class _StoredGzip:
    """The ``zlib`` module as httpstan's services module sees it: the gzip members it writes
    each chain's output into are stored, not compressed (level 0; still gzip).

    httpstan compresses every message (level 1) into a fit file that pystan reads back once,
    decompressing it, and that stanhier deletes right after (:meth:`_PystanModel._drop_cached_fits`).
    Compressing costs the Python process, which competes with the chains for the cores, about
    a third of its CPU time in a 4-chain sleepstudy fit (0.6 against 0.9 CPU-s); the draws are
    the same.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(zlib, name)

    @staticmethod
    def compressobj(level: int = -1, *args: Any, **kwargs: Any):
        return zlib.compressobj(0, *args, **kwargs)


def _store_fits_uncompressed() -> None:
    import httpstan.services_stub as stub

    if getattr(stub, "zlib", None) is zlib:
        stub.zlib = _StoredGzip()


#: lines of Stan's console output that are information, not a problem
_INFO = re.compile(r"Gradient evaluation took|transitions using \d+ leapfrog|Adjust your expectations|"
                   r"Messages received during sampling|Messages from stanc|^\s*$")


class _Output:
    """One of pystan's console sections (clikit): text goes to the buffer; sampling progress
    lines (``Sampling:  45% (3600/8000)``) move stanhier's display."""

    def __init__(self, console: "_Console") -> None:
        self.console = console

    def write(self, text: str) -> None:
        self.console.take(text)

    write_line = write

    def clear(self) -> None:
        pass


class _Console:
    """Stands in for clikit's ``ConsoleIO`` in ``stan.model`` while stanhier samples."""

    def __init__(self, buffer: io.StringIO, bar_factory) -> None:
        self.buffer = buffer
        self.bar_factory = bar_factory
        self.bar: SamplingProgress | None = None
        self.messages: list[str] = []

    def __call__(self) -> "_Console":  # stan.model calls ConsoleIO()
        return self

    def section(self) -> "_Console":
        return self

    @property
    def output(self) -> _Output:
        return _Output(self)

    error_output = output

    def supports_ansi(self) -> bool:
        return True

    def take(self, text: str) -> None:
        text = re.sub(r"</?[\w=;,]*>", "", str(text))  # clikit's style tags
        self.buffer.write(text + "\n")
        m = re.search(r"Sampling:\s+\d+%\s+\((\d+)/(\d+)\)", text)
        if m and self.bar_factory is not None:
            if self.bar is None:
                self.bar = self.bar_factory()
            if self.bar is not None:
                self.bar.update(int(m.group(1)), _guard_progress_parser().phase)

    def error_line(self, text: str) -> None:
        text = re.sub(r"</?[\w=;,]*>", "", str(text))
        self.buffer.write(text + "\n")
        if not _INFO.search(text):
            self.messages.append(text.strip())

    write_line = error_line
    line = error_line


def _summarise(messages: list[str]) -> str:
    """One line for Stan's warnings during sampling (rejected proposals and why)."""
    reasons = [m for m in messages if m.startswith("Exception")]
    if not reasons:
        return ""
    common = max(set(reasons), key=reasons.count)
    return (f"Stan rejected {len(reasons)} proposal{'s' if len(reasons) != 1 else ''} while sampling "
            f"(harmless when rare, e.g. early in warmup); most often: {common}")


@contextlib.contextmanager
def _quiet(progress: bool, buffer: io.StringIO):
    """pystan's console output goes to ``buffer`` (for error messages and the log), and
    stanhier's sampling display shows progress unless ``progress`` is false. With
    ``STANHIER_VERBOSE=1`` pystan prints its own output as it always does."""
    import sys

    import stan.model

    if verbose():
        yield
        return
    stderr = sys.stderr
    shape: dict[str, int] = {}
    original_create_fit = stan.model.Model._create_fit

    def create_fit(model, *, function, num_chains, **kwargs):  # learn chains/iterations for the display
        shape.update(chains=int(num_chains), warmup=int(kwargs.get("num_warmup", 1000)),
                     samples=int(kwargs.get("num_samples", 1000)))
        return original_create_fit(model, function=function, num_chains=num_chains, **kwargs)

    def make_bar() -> SamplingProgress | None:
        if not shape:
            return None
        return SamplingProgress(shape["chains"], shape["warmup"] + shape["samples"], shape["warmup"],
                                enabled=True, file=stderr)

    console = _Console(buffer, make_bar if progress else None)
    saved = stan.model.ConsoleIO
    stan.model.ConsoleIO = console
    stan.model.Model._create_fit = create_fit
    ok = False
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
        ok = True
    finally:
        stan.model.ConsoleIO = saved
        stan.model.Model._create_fit = original_create_fit
        if console.bar is None and progress and ok:
            console.bar = make_bar()  # sampling ended before pystan reported any progress
        if console.bar is not None:
            console.bar.close(ok)
        if console.messages:
            logger.info("Stan's messages while sampling:\n%s", "\n".join(console.messages))
        summary = _summarise(console.messages)
        if summary and progress and ok:
            print(summary, file=stderr, flush=True)


@contextlib.contextmanager
def _fd_to_file(path: Path):
    """Send the C++ compiler's output (file descriptors 1 and 2) to ``path`` instead of the terminal."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as fh:
        try:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class _PystanDensity(LogDensity):
    def __init__(self, module, data: dict) -> None:
        self._module = module
        self._data = data
        self.param_names = tuple(module.get_param_names(data))
        self.dims = tuple(tuple(d) for d in module.get_dims(data))
        self.n_params = self._count_unconstrained()

    def _count_unconstrained(self) -> int:
        """httpstan does not expose the size: find the length ``log_prob`` accepts.

        Each try passes the whole data set to C++, so likely sizes come first: the
        running totals of the variables' sizes (exact when every parameter is
        unconstrained or simply bounded, as in stanhier's ML programs), the same with each
        square matrix counted as a Cholesky factor of correlations (``K (K - 1) / 2``
        unconstrained entries, as in stanhier's brm programs), then the rest.
        """
        sizes = [int(np.prod(d)) if d else 1 for d in self.dims]
        corr = [d[0] * (d[0] - 1) // 2 if len(d) == 2 and d[0] == d[1] else n for d, n in zip(self.dims, sizes)]
        likely = list(dict.fromkeys(np.cumsum([0] + sizes).tolist() + np.cumsum([0] + corr).tolist()))
        for n in likely + [n for n in range(int(sum(sizes)) + 1) if n not in set(likely)]:
            try:
                self._module.log_prob(self._data, [0.0] * n, False)
                return n
            except RuntimeError as exc:
                if "number of parameters does not match" not in str(exc):
                    return n
        raise SamplingError("Could not determine the number of unconstrained parameters.")

    def log_prob(self, theta, jacobian=False):
        return float(self._module.log_prob(self._data, list(map(float, theta)), bool(jacobian)))

    def log_prob_grad(self, theta, jacobian=False):
        theta = list(map(float, theta))
        lp = self._module.log_prob(self._data, theta, bool(jacobian))
        grad = self._module.log_prob_grad(self._data, theta, bool(jacobian))
        return float(lp), np.asarray(grad, float)

    def constrain(self, theta):
        flat = np.asarray(self._module.write_array(self._data, list(map(float, theta)), True, True))
        out, pos = {}, 0
        for name, dims in zip(self.param_names, self.dims):
            size = int(np.prod(dims)) if dims else 1
            out[name] = reshape_flat(flat[pos:pos + size][None, None, :], tuple(dims))[0, 0]
            pos += size
        return out


#: the functions of each model's extension module loaded in this process, by model name.
#: Every httpstan model module is named "stan_services" and is a single-phase extension, so
#: CPython (3.11) re-imports an already loaded file by updating the dict of
#: ``sys.modules["stan_services"]`` -- one module object shared by all models, whose functions
#: change each time httpstan (e.g. while pystan samples another program) imports a model.
#: A module object held across calls can therefore turn into another model's (the symptom:
#: "variable does not exist ... variable name=Y" from a different program). We keep a
#: snapshot of the functions taken right after the import, checked against the file.
_LOADED_MODULES: dict[str, Any] = {}


def _import_services(model_name: str):
    if model_name not in _LOADED_MODULES:
        import httpstan.cache
        import httpstan.models

        module = httpstan.models.import_services_extension_module(model_name)
        functions = types.SimpleNamespace(**vars(module))
        expected = httpstan.cache.model_directory(model_name).resolve()
        if Path(functions.__file__).resolve().parent != expected:
            raise StanhierError(f"Loading the compiled model {model_name!r} returned another model's module "
                                f"({functions.__file__}); please report this.")
        _LOADED_MODULES[model_name] = functions
    return _LOADED_MODULES[model_name]


class _PystanModel(CompiledModel):
    def __init__(self, code: str, model_name: str, cache_hit: bool, seconds: float) -> None:
        self.code = code
        self.backend = "pystan"
        self.model_name = model_name
        self.cache_hit = cache_hit
        self.compile_seconds = seconds
        self._module = None

    def _services(self):
        if self._module is None:
            self._module = _import_services(self.model_name)
        return self._module

    def log_density(self, data: dict) -> LogDensity:
        # numpy arrays stay arrays: httpstan flattens the data on every call, and nested
        # lists make that the dominant cost (2x slower ML fits on 1,000-group data)
        return _PystanDensity(self._services(), _numeric(data))

    def sample(self, data: dict, settings: SampleSettings) -> RawSample:
        import stan

        data = _numeric(data)  # pystan's JSON encoder takes numpy arrays
        kwargs = dict(num_chains=settings.chains, num_samples=settings.iter - settings.warmup,
                      num_warmup=settings.warmup, num_thin=settings.thin,
                      delta=float(settings.adapt_delta), max_depth=int(settings.max_treedepth))
        inits = settings.inits_for_chains()
        if inits is not None:
            kwargs["init"] = inits
        else:
            kwargs["init_radius"] = settings.init_radius
        start = time.perf_counter()
        seed_drawn = settings.seed is None
        settings = settings.with_seed()  # the seed used is returned with the draws (and recorded)
        seed = int(settings.seed)
        console = io.StringIO()
        self._drop_cached_fits()  # never serve a stored fit: every call really samples
        try:
            with _quiet(settings.progress, console), _remove_sockets():
                posterior = stan.build(self.code, data=data, random_seed=int(seed))
                # pystan swallows Ctrl-C and returns None; its workers ignore SIGINT
                fit = posterior.sample(**kwargs) if posterior is not None else None
        except KeyboardInterrupt:
            fit = None
        except RuntimeError as exc:
            message = str(exc).split(", traceback:")[0]
            stan_says = "\n".join(ln for ln in _relevant_warnings(console.getvalue()).splitlines()
                                  if ln.strip() and "Building" not in ln and "Sampling" not in ln)[-3000:]
            raise SamplingError(f"Stan failed while sampling: {message}{code_line(message, self.code)}"
                                f"\n{stan_says}".rstrip()) from None
        finally:
            self._drop_cached_fits()
        if fit is None:
            _stop_workers()
            raise KeyboardInterrupt("sampling interrupted: the chains were stopped")
        seconds = time.perf_counter() - start
        draws_all = np.asarray(fit._draws)  # (rows, draw, chain)
        flat = np.transpose(draws_all, (2, 1, 0))  # (chain, draw, rows)
        n_stats = len(fit.sample_and_sampler_param_names)
        stats = {name: flat[:, :, i] for i, name in enumerate(fit.sample_and_sampler_param_names)}
        draws, pos = {}, n_stats
        for name, dims in zip(fit.param_names, fit.dims):
            size = int(np.prod(dims)) if dims else 1
            draws[name] = reshape_flat(flat[:, :, pos:pos + size], tuple(dims))
            pos += size
        stats = {k: stats[k] for k in SAMPLER_STATS if k in stats}
        return RawSample(draws=draws, stats=stats, settings=settings, seconds=seconds, seed_drawn=seed_drawn)

    def _drop_cached_fits(self) -> None:
        """httpstan stores every seeded fit on disk; stanhier keeps draws itself. Only this
        process's fits are dropped (:func:`_fits_folder`)."""
        import httpstan.cache

        shutil.rmtree(_fits_folder(httpstan.cache.cache_directory()), ignore_errors=True)


def _numeric(data: dict) -> dict:
    """numpy arrays kept (as float64/int64), numpy scalars -> Python numbers."""
    out = {}
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            out[key] = value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else float)
        elif isinstance(value, (np.integer,)):
            out[key] = int(value)
        elif isinstance(value, (np.floating,)):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _relevant_warnings(text: str) -> str:
    """Drop stanc's pedantic 'has no priors' notes: priors sit in ``lprior`` (transformed parameters)."""
    blocks = re.split(r"\n(?=Warning)", text or "")
    return "\n".join(b for b in blocks if "has no priors" not in b and b.strip())


def _stop_workers() -> None:
    """Terminate httpstan's chain processes and give it a fresh pool for later fits."""
    import concurrent.futures
    import multiprocessing as mp

    import httpstan.services_stub as stub

    old = stub.executor
    for proc in list(getattr(old, "_processes", {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in list(getattr(old, "_processes", {}).values()):
        with contextlib.suppress(Exception):
            proc.join(timeout=5)
    with contextlib.suppress(Exception):
        old.shutdown(wait=False, cancel_futures=True)
    stub.executor = concurrent.futures.ProcessPoolExecutor(mp_context=mp.get_context("fork"),
                                                           initializer=stub.init_worker)


class PystanBackend(Backend):
    """Compile with httpstan's stanc + C++ toolchain; sample with pystan."""

    name = "pystan"

    def __init__(self) -> None:
        import httpstan  # noqa: F401  - fail here if not installed

        self._root = cache.cache_dir() / "pystan"
        self._root.mkdir(parents=True, exist_ok=True)
        _point_httpstan_at(self._root)

    @property
    def stan_version(self) -> str:
        import httpstan

        return f"httpstan-{httpstan.__version__}"

    def compile(self, code: str, *, progress: bool = True, show_cached: bool = True) -> CompiledModel:
        import httpstan.cache
        import httpstan.models

        model_name = httpstan.models.calculate_model_name(code)  # stanhier's key (see toolchain)
        model_id = model_name.split("/")[1]
        entry = self._root / "models" / model_id
        with compiling(progress, show_cached=show_cached) as stage:
            if cache.is_complete(entry):
                stage.cached()
                return _PystanModel(code, model_name, True, 0.0)
            start = time.perf_counter()
            key_root = self._root / "models"
            key_root.mkdir(parents=True, exist_ok=True)
            with cache.locked_entry("pystan/models", model_id) as entry:
                if cache.is_complete(entry):  # another process built it while we waited
                    stage.cached()
                    return _PystanModel(code, model_name, True, 0.0)
                stage.building("stanc")
                cpp, stanc_warnings = toolchain.stanc(code, model_name)  # stanc first: its errors are the clearest
                flags = toolchain.compile_flags()
                stage.building("C++")
                try:
                    # the compiler's messages go to the cache entry's log, never the terminal
                    with _fd_to_file(entry / "compiler.log"), contextlib.chdir(entry), \
                            toolchain.header_alongside(flags, on_build=stage.also("the shared Stan header")) as header:
                        output = toolchain.build_services_module(code, model_name, flags, header, cpp=cpp,
                                                                 on_build=stage.also("httpstan's services object"))
                except Exception as exc:
                    log = (entry / "compiler.log").read_text(errors="replace")[-2000:]
                    raise StanCompileError(f"The C++ compiler failed on the generated program: {exc}\n{log}") from None
                (entry / "model.stan").write_text(code)
                # what httpstan's own cache lookup (used by stan.build) expects to find
                httpstan.cache.dump_stanc_warnings(_relevant_warnings(stanc_warnings), model_name)
                httpstan.cache.dump_services_extension_module_compiler_output(str(output), model_name)
                cache.mark_complete(entry)
            seconds = time.perf_counter() - start
        logger.debug("compiled %s in %.1f s (precompiled header: %s)", model_name, seconds, header)
        return _PystanModel(code, model_name, False, seconds)
