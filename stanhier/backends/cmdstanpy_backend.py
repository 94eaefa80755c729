"""The cmdstanpy backend (CmdStan): NUTS via ``sample``, ML via ``optimize(jacobian=False)``.

Programs are written to ``<cache>/cmdstanpy/<key>/model.stan`` and compiled there under
the entry's lock; ``key`` hashes the program text, the CmdStan version *and* the CmdStan
path (executables link that tree's ``libtbb.so.2`` by rpath), and a cache hit is trusted
only after the executable runs (``model info``).

Shapes come from the program's declarations (:mod:`.declarations`) and CmdStan's CSV
header, never from a probe run: size-0 variables (left out of CmdStan's CSV) are filled
in, and size-1 vectors stay vectors. The log density and its gradient use CmdStan's
``log_prob`` method, which evaluates many unconstrained vectors in one process: a
finite-difference Hessian costs one process, not ``2n``. Every file is written to a
temporary directory that is removed when the call (or the density object) is done.

Example
-------
>>> from stanhier.backends import cmdstan_available
>>> ok, why = cmdstan_available()
>>> ok or "install_cmdstan" in why
True
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .. import cache
from ..progress import SamplingProgress, compiling, verbose
from ..errors import BackendError, SamplingError, StanCompileError
from . import toolchain
from .base import (SAMPLER_STATS, Backend, CompiledModel, LogDensity, RawSample, SampleSettings,
                   code_line, compile_error)
from .declarations import (Declaration, ParameterLayout, UnsupportedDeclaration, parse_declarations,
                           variables_from_columns)

__all__ = ["CmdStanPyBackend", "cmdstan_release", "adopt_cmdstanpy_tmpdir"]

logger = logging.getLogger("stanhier")

#: ``make`` variables for every program: CmdStan's precompiled model header stays on (it is
#: CmdStan's default with g++; an environment that turned it off would double compile times).
CPP_OPTIONS = {"PRECOMPILED_HEADERS": "true"}

#: CmdStan's L-BFGS tolerances for ML (tighter than CmdStan's defaults; Newton polishing follows).
OPTIMIZE_ARGS = ("iter=10000", "algorithm=lbfgs", "tol_rel_grad=1e3", "tol_rel_obj=1e2")


def cmdstan_release(path: str | Path) -> str:
    """The CmdStan version of the tree at ``path`` (from its makefile), e.g. ``'2.35.0'``."""
    try:
        text = (Path(path) / "makefile").read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r"CMDSTAN_VERSION\s*:?=\s*([\w.\-]+)", text)
    return m.group(1) if m else ""


@contextlib.contextmanager
def _cmdstanpy_logging(progress: bool) -> Iterator[None]:
    """Keep cmdstanpy's log lines (``CmdStan start processing``, ...) off the console unless
    the user asks for them (``STANHIER_VERBOSE=1``); the logger's level is restored afterwards.
    ``progress`` is kept for callers; stanhier's own displays replace cmdstanpy's."""
    from cmdstanpy.utils import get_logger

    logger = get_logger()  # the first call configures the logger; do it before saving the level
    saved = logger.level
    if not verbose():
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(saved)


@contextlib.contextmanager
def _one_progress_display(settings: SampleSettings) -> Iterator[None]:
    """cmdstanpy draws one bar per chain; stanhier shows one for all chains (iterations done of
    ``chains * iter``, warmup or sampling) by replacing cmdstanpy's progress hook. cmdstanpy's
    padding of stdout after sampling is dropped."""
    import sys

    import cmdstanpy.model

    if not settings.progress or verbose():
        yield
        return
    model_cls = cmdstanpy.model.CmdStanModel
    original = model_cls.__dict__["_wrap_sampler_progress_hook"]
    stderr = sys.stderr
    bars: list[SamplingProgress] = []
    pattern = re.compile(r"(Chain \[(\d+)\] )?Iteration:\s+(\d+)")

    def wrap(chain_ids: list[int], total: int):
        bar = SamplingProgress(len(chain_ids), total, settings.warmup, file=stderr)
        bars.append(bar)
        done: dict[int, int] = {}

        def hook(line: str, idx: int) -> None:
            if line == "Done":
                return
            match = pattern.match(line)
            if match is None:
                return
            chain = int(match.group(2) or chain_ids[idx])
            done[chain] = int(match.group(3))
            bar.update(sum(done.values()), "sampling" if "Sampling" in line else "warmup")

        return hook

    model_cls._wrap_sampler_progress_hook = staticmethod(wrap)
    ok = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
        ok = True
    finally:
        model_cls._wrap_sampler_progress_hook = original
        for bar in bars:
            bar.close(ok)


def _stan_message(text: str) -> str:
    """The lines of CmdStan's console output that say what went wrong."""
    keep = [ln.strip() for ln in text.splitlines()
            if re.search(r"Exception|[Ee]rror|Rejecting|Unrecoverable|[Ii]nitiali[sz]ation|must be|"
                         r"[Mm]ismatch|not found|declared|cannot", ln)
            and "Consider re-running" not in ln and "show_console" not in ln]
    return "\n".join(dict.fromkeys(keep))[-3000:] or text.strip()[-3000:]


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """A CmdStan CSV: column names and the numeric rows (comments skipped)."""
    names: list[str] = []
    rows = []
    with contextlib.suppress(FileNotFoundError):
        with open(path) as fh:
            for line in fh:
                if not line.strip() or line.startswith("#"):
                    continue
                if not names:
                    names = line.strip().split(",")
                    continue
                parts = line.strip().split(",")
                if len(parts) == len(names):
                    rows.append([float(p) for p in parts])
    return names, np.array(rows, float).reshape(len(rows), len(names))


def _write_json(path: Path, values: Mapping[str, Any]) -> None:
    import cmdstanpy

    cmdstanpy.write_stan_json(str(path), {k: np.asarray(v) if isinstance(v, (list, tuple)) else v
                                          for k, v in values.items()})


def _complete(found: Mapping[str, np.ndarray], decls: tuple[Declaration, ...], env: Mapping[str, Any],
              lead: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Every declared variable in declaration order; size-0 ones (absent from CmdStan's
    output) as empty arrays of their declared shape after the ``lead`` dimensions."""
    out = {}
    for d in decls:
        if d.name in found:
            out[d.name] = found[d.name]
            continue
        try:
            shape = d.shape(env)
        except UnsupportedDeclaration:
            shape = (0,) * d.ndim
        if int(np.prod(shape)) != 0:
            raise SamplingError(f"CmdStan returned no values for {d.name} (declared shape {shape}).")
        out[d.name] = np.zeros(lead + shape)
    for name, values in found.items():
        out.setdefault(name, values)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _work_root() -> Path:
    """``<cache>/cmdstanpy/work/<pid>``: this process's scratch folder for CmdStan's files.

    Kept in stanhier's cache, not the system temporary folder: a fit (whose log density
    keeps its data file for post-estimation) leaves nothing behind there. Each workspace
    is removed when done or at exit; folders of processes that no longer run (killed) are
    removed when the next process makes its own.
    """
    global _WORK_ROOT
    if _WORK_ROOT is None or not _WORK_ROOT.is_dir():
        base = cache.cache_dir() / "cmdstanpy" / "work"
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            if old.name.isdigit() and int(old.name) != os.getpid() and not _pid_alive(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
        root = base / str(os.getpid())
        root.mkdir(exist_ok=True)
        atexit.register(_remove_own, str(root), os.getpid())
        _WORK_ROOT = root
    return _WORK_ROOT


_WORK_ROOT: Path | None = None


def _remove_own(path: str, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that exits
        shutil.rmtree(path, ignore_errors=True)


def adopt_cmdstanpy_tmpdir() -> None:
    """Point cmdstanpy's scratch folder (made in the system temporary folder when cmdstanpy is
    imported, removed at exit) at stanhier's work folder, and remove the one it made.

    stanhier passes every file path to CmdStan itself, so the folder stays empty; this only
    keeps the system temporary folder as it was.
    """
    import cmdstanpy
    import cmdstanpy.model
    import cmdstanpy.utils.filesystem  # noqa: F401 - holds its own copy of _TMPDIR

    current = Path(getattr(cmdstanpy, "_TMPDIR", ""))
    root = _work_root()
    if current == root:
        return
    if current.is_dir() and current.parent == Path(tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            current.rmdir()  # only if empty: never remove files cmdstanpy put there
        if current.exists():
            return
    import sys

    # every cmdstanpy module that copied the name at import (model, utils.filesystem, ...)
    for name, module in list(sys.modules.items()):
        if (name == "cmdstanpy" or name.startswith("cmdstanpy.")) and hasattr(module, "_TMPDIR"):
            module._TMPDIR = str(root)


class _Workspace:
    """A scratch folder (under :func:`_work_root`) holding one data set's JSON and per-call
    files; removed when the owner is garbage collected or at exit."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ws-", dir=_work_root()))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        self.data_file = self.dir / "data.json"
        _write_json(self.data_file, data)
        self._ids = itertools.count()

    def files(self, *suffixes: str) -> list[Path]:
        i = next(self._ids)
        return [self.dir / f"{i}{s}" for s in suffixes]

    def close(self) -> None:
        self._finalizer()


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=False)


class _CmdStanDensity(LogDensity):
    """Log density and gradient through CmdStan's ``log_prob`` method (many rows per process)."""

    def __init__(self, model: "_CmdStanModel", data: Mapping[str, Any]) -> None:
        self._model = model
        self._env = dict(data)
        self._ws = _Workspace(data)
        params = [d for d in model.declarations if d.block == "parameters"]
        try:
            self.n_params = int(sum(d.unconstrained_size(self._env) for d in params))
        except UnsupportedDeclaration as exc:
            raise BackendError(f"Cannot size the program's parameters for CmdStan: {exc}.") from None
        try:
            self._layout: ParameterLayout | None = ParameterLayout(model.declarations, self._env)
        except UnsupportedDeclaration:
            self._layout = None

    def close(self) -> None:
        """Remove the temporary files now (otherwise done when the object is collected)."""
        self._ws.close()

    def _evaluate(self, thetas: np.ndarray, jacobian: bool) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        m = len(thetas)
        lps, grads = np.full(m, -np.inf), np.full((m, self.n_params), np.nan)
        errors: dict[int, str] = {}
        if self.n_params == 0:
            raise SamplingError("The program has no parameters: CmdStan's log_prob method needs at least one.")
        todo = np.arange(m)
        while len(todo):
            upars, out = self._ws.files("-u.json", "-lp.csv")
            # Stan reads JSON arrays column-major, CmdStan then splits the values row by row
            rows_in = thetas[todo]
            upars.write_text(json.dumps({"params_r": rows_in.ravel().reshape(rows_in.shape, order="F").tolist()}))
            proc = _run([str(self._model.exe), "log_prob", f"unconstrained_params={upars}",
                         f"jacobian={int(bool(jacobian))}", "data", f"file={self._ws.data_file}",
                         "output", f"file={out}", "sig_figs=18"])
            names, rows = _read_csv(out)
            for path in (upars, out):
                path.unlink(missing_ok=True)
            k = len(rows)
            lps[todo[:k]], grads[todo[:k]] = rows[:, 0], rows[:, 1:]
            if proc.returncode == 0 and k == len(todo):
                break
            message = _stan_message(proc.stdout + "\n" + proc.stderr)
            if not names or k == len(todo):  # failed before any row: data or setup, not a point
                raise SamplingError(f"CmdStan's log_prob failed: {message}{code_line(message, self._model.code)}")
            errors[int(todo[k])] = message
            todo = todo[k + 1:]
        return lps, grads, errors

    def log_prob_grad(self, theta, jacobian=False):
        theta = np.asarray(theta, float)
        lps, grads, errors = self._evaluate(theta[None, :], jacobian)
        if errors:
            raise SamplingError(f"Stan could not evaluate the log density: {errors[0]}"
                                f"{code_line(errors[0], self._model.code)}")
        return float(lps[0]), grads[0]

    def log_prob_grad_many(self, thetas, jacobian=False):
        lps, grads, _ = self._evaluate(np.atleast_2d(np.asarray(thetas, float)), jacobian)
        return lps, grads

    def constrain(self, theta):
        if self._layout is None:
            raise BackendError("constrain() on CmdStan supports parameters with no constraint, lower/upper "
                               "bounds or offset/multiplier only; use backend='pystan' for this program.")
        params = self._layout.constrain(np.asarray(theta, float))
        if all(d.block == "parameters" for d in self._model.declarations):
            return _complete(params, self._model.declarations, self._env, ())
        init, out = self._ws.files("-init.json", "-gq.csv")
        _write_json(init, params)
        proc = _run([str(self._model.exe), "sample", "num_samples=1", "num_warmup=0", "algorithm=fixed_param",
                     "data", f"file={self._ws.data_file}", f"init={init}", "random", "seed=1",
                     "output", f"file={out}", "sig_figs=18"])
        names, rows = _read_csv(out)
        for path in (init, out):
            path.unlink(missing_ok=True)
        if proc.returncode != 0 or len(rows) != 1:
            message = _stan_message(proc.stdout + "\n" + proc.stderr)
            raise SamplingError(f"CmdStan could not compute the generated quantities: {message}"
                                f"{code_line(message, self._model.code)}")
        keep = [j for j, n in enumerate(names) if not n.endswith("__")]
        found = {k: v[0] for k, v in variables_from_columns([names[j] for j in keep], rows[:, keep]).items()}
        found.update(params)  # the exact values, not their 18-digit print
        return _complete(found, self._model.declarations, self._env, ())


class _CmdStanModel(CompiledModel):
    def __init__(self, code: str, exe: Path, cache_hit: bool, seconds: float) -> None:
        self.code = code
        self.backend = "cmdstanpy"
        self.cache_hit = cache_hit
        self.compile_seconds = seconds
        self.exe = exe
        self.declarations = parse_declarations(code)

    def log_density(self, data: dict) -> LogDensity:
        return _CmdStanDensity(self, data)

    def native_optimizer(self, data: dict) -> Callable[[np.ndarray], np.ndarray] | None:
        """CmdStan's L-BFGS (``optimize jacobian=0``) from an unconstrained start vector."""
        try:
            layout = ParameterLayout(self.declarations, data)
        except UnsupportedDeclaration:
            return None
        ws = _Workspace(data)
        params = [d for d in self.declarations if d.block == "parameters"]

        def optimize(x0: np.ndarray) -> np.ndarray:
            init, out = ws.files("-init.json", "-opt.csv")
            _write_json(init, layout.constrain(np.asarray(x0, float)))
            proc = _run([str(self.exe), "optimize", "jacobian=0", *OPTIMIZE_ARGS, "data",
                         f"file={ws.data_file}", f"init={init}", "random", "seed=1", "output",
                         f"file={out}", "sig_figs=18"])
            names, rows = _read_csv(out)
            for path in (init, out):
                path.unlink(missing_ok=True)
            if len(rows) == 0:  # CmdStan writes its last iterate even when it stops early
                message = _stan_message(proc.stdout + "\n" + proc.stderr)
                raise SamplingError(f"CmdStan's optimizer failed: {message}{code_line(message, self.code)}")
            found = {k: v[-1] for k, v in variables_from_columns(names, rows).items()}
            return layout.unconstrain(_complete(found, tuple(params), data, ()))

        optimize.workspace = ws  # type: ignore[attr-defined]  # lives as long as the function
        return optimize

    def sample(self, data: dict, settings: SampleSettings) -> RawSample:
        import cmdstanpy

        start = time.perf_counter()
        seed_drawn = settings.seed is None
        settings = settings.with_seed()  # the seed used is returned with the draws (and recorded)
        with tempfile.TemporaryDirectory(prefix="stanhier-cmdstan-", dir=_work_root()) as tmp, \
                _cmdstanpy_logging(settings.progress):
            data_file = Path(tmp) / "data.json"
            _write_json(data_file, data)
            inits: Any = settings.init_radius
            if settings.inits_for_chains() is not None:
                inits = []
                for i, values in enumerate(settings.inits_for_chains()):
                    path = Path(tmp) / f"init-{i + 1}.json"
                    _write_json(path, values)
                    inits.append(str(path))
            out_dir = Path(tmp) / "out"
            out_dir.mkdir()
            try:
                model = cmdstanpy.CmdStanModel(exe_file=str(self.exe))
                with _one_progress_display(settings):
                    fit = model.sample(
                        data=str(data_file), chains=settings.chains,
                        parallel_chains=settings.cores or settings.chains,
                        iter_warmup=settings.warmup, iter_sampling=settings.iter - settings.warmup,
                        thin=settings.thin, seed=settings.seed, adapt_delta=settings.adapt_delta,
                        max_treedepth=settings.max_treedepth, inits=inits, output_dir=str(out_dir),
                        show_progress=settings.progress and not verbose(), show_console=verbose(), sig_figs=18,
                    )
                names = list(fit.column_names)
                values = np.asarray(fit.draws(concat_chains=False), float)  # (draw, chain, column)
            except RuntimeError as exc:
                console = "\n".join(p.read_text(errors="replace") for p in sorted(out_dir.glob("*stdout*")))
                message = _stan_message(console or str(exc))
                raise SamplingError(f"Stan failed while sampling: {message}{code_line(message, self.code)}"
                                    ) from None
        seconds = time.perf_counter() - start
        flat = np.transpose(values, (1, 0, 2))  # (chain, draw, column)
        chains, draws = flat.shape[:2]
        stats = {n: flat[:, :, j] for j, n in enumerate(names) if n in SAMPLER_STATS}
        keep = [j for j, n in enumerate(names) if not n.endswith("__")]
        found = variables_from_columns([names[j] for j in keep], flat.reshape(chains * draws, -1)[:, keep])
        found = {k: v.reshape((chains, draws) + v.shape[1:]) for k, v in found.items()}
        variables = _complete(found, self.declarations, data, (chains, draws))
        return RawSample(draws=variables, stats={k: stats[k] for k in SAMPLER_STATS if k in stats},
                         settings=settings, seconds=seconds, seed_drawn=seed_drawn)


def _executable_runs(exe: Path) -> bool:
    """Whether a cached executable still starts (its CmdStan tree may have moved)."""
    if not exe.is_file():
        return False
    try:
        return subprocess.run([str(exe), "info"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class CmdStanPyBackend(Backend):
    """CmdStan through cmdstanpy (``pip install 'cmdstanpy<2'`` and ``python -m cmdstanpy.install_cmdstan``)."""

    name = "cmdstanpy"

    def __init__(self) -> None:
        import cmdstanpy

        adopt_cmdstanpy_tmpdir()
        self.path = Path(cmdstanpy.cmdstan_path()).resolve()
        self.release = cmdstan_release(self.path) or ".".join(map(str, cmdstanpy.cmdstan_version() or ()))

    @property
    def stan_version(self) -> str:
        return f"cmdstan-{self.release}"

    def compile(self, code: str, *, progress: bool = True, show_cached: bool = True) -> CompiledModel:
        """Compile ``code`` into a CmdStan executable (cached). When this CmdStan has httpstan's
        Stan release (:func:`toolchain.cmdstan_shares_objects`), the executable is linked from
        the program's objects that the pystan backend links too (compiled once for both, with
        the shared precompiled header) and CmdStan's main object compiled the same way;
        otherwise CmdStan's ``make`` builds it with CmdStan's precompiled model header
        (``PRECOMPILED_HEADERS=true``)."""
        shared = toolchain.cmdstan_shares_objects(self.path)
        how = toolchain.model_name_for(code) if shared else "make"
        key = cache.program_key(code, self.name, f"{self.stan_version}|{self.path}|{how}")
        entry = cache.entry_dir(self.name, key)
        exe = entry / "model"
        with compiling(progress, show_cached=show_cached) as stage:
            if cache.is_complete(entry) and _executable_runs(exe):
                stage.cached()
                return _CmdStanModel(code, exe, True, 0.0)
            start = time.perf_counter()
            with cache.locked_entry(self.name, key) as entry:
                if cache.is_complete(entry):
                    if _executable_runs(exe):  # another process built it while we waited
                        stage.cached()
                        return _CmdStanModel(code, exe, True, 0.0)
                    cache.clear_entry(entry)  # stale: built against a CmdStan tree that is gone
                stan_file = entry / "model.stan"
                stan_file.write_text(code)
                if not (shared and self._link_from_objects(code, exe, stage)):
                    self._make(stan_file, code, progress, stage)
                if not _executable_runs(exe):
                    raise BackendError(f"CmdStan built {exe} but it does not run; check the CmdStan "
                                       f"installation at {self.path}.")
                cache.mark_complete(entry)
            seconds = time.perf_counter() - start
        return _CmdStanModel(code, exe, False, seconds)

    def _make(self, stan_file: Path, code: str, progress: bool, stage) -> None:
        import cmdstanpy

        stage.building("CmdStan")
        with _cmdstanpy_logging(progress):
            try:
                cmdstanpy.CmdStanModel(stan_file=str(stan_file), exe_file=None, cpp_options=dict(CPP_OPTIONS))
            except (ValueError, RuntimeError) as exc:
                raise compile_error(str(exc), code) from None

    def _link_from_objects(self, code: str, exe: Path, stage) -> bool:
        """stanc (httpstan's, the same release), the program's shared objects, CmdStan's main
        object, link; the compilers' messages go to ``compiler.log`` beside the executable.
        False when CmdStan's main object cannot be compiled here (CmdStan's make then builds
        the program)."""
        model_name = toolchain.model_name_for(code)
        stage.building("stanc")
        cpp, _ = toolchain.stanc(code, model_name)  # stanc first: its errors are the clearest
        flags = toolchain.compile_flags()
        stage.building("C++")
        try:
            with toolchain.header_alongside(flags, on_build=stage.also("the shared Stan header")) as header, \
                    toolchain.cmdstan_main_alongside(self.path, flags, header,
                                                     on_build=stage.also("CmdStan's main program")) as main:
                objects, output = toolchain.model_objects(code, model_name, flags, header, cpp=cpp)
            if main.path is None:
                logger.warning("stanhier: CmdStan's main object could not be compiled (see %s); CmdStan's "
                               "make builds the program instead", main.log)
                return False
            toolchain.link_cmdstan(objects, main.path, exe)
        except RuntimeError as exc:
            raise StanCompileError(f"The C++ compiler failed on the generated program: {exc}") from None
        (exe.parent / "compiler.log").write_text(output)
        return True
