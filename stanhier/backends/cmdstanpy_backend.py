"""The cmdstanpy backend (CmdStan): NUTS via ``sample``, ML via ``optimize(jacobian=False)``.

Programs are written to ``<cache>/cmdstanpy/<key>/model.stan`` and compiled there
under the entry's lock; the executable is reused by every later fit.
Used where ``cmdstanpy.cmdstan_path()`` finds an installation
(``python -m cmdstanpy.install_cmdstan``).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import cache
from ..errors import SamplingError, StanCompileError
from .base import (SAMPLER_STATS, Backend, CompiledModel, LogDensity, OptimizeResult, RawSample,
                   SampleSettings)

__all__ = ["CmdStanPyBackend"]


def _jsonable(data: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}


class _CmdStanDensity(LogDensity):
    """Log density and gradient through ``CmdStanModel.log_prob`` (one CmdStan call each).

    cmdstanpy's ``log_prob`` takes values on the *constrained* scale (a dict of
    parameter variables) and returns ``lp__`` and the gradient with respect to the
    unconstrained parameters. This class is meant for programs whose parameters are
    all unconstrained (stanhier's ML programs), where both scales coincide: the flat
    vector ``theta`` is split into the parameter variables in declaration order
    (column-major within each variable, as Stan's unconstrained vector).
    Slow (a process per call): used for the few evaluations after CmdStan's own
    optimizer (Newton polishing, Hessian), not inside an optimizer loop.
    """

    def __init__(self, model, data: dict) -> None:
        self._model = model
        scratch = cache.cache_dir() / "cmdstanpy" / "scratch"  # stays inside stanhier's cache
        scratch.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="density-", dir=scratch))
        self._data_file = self._tmp / "data.json"
        self._data_file.write_text(json.dumps(_jsonable(data)))
        self.shapes = self._parameter_shapes()
        self.n_params = int(sum(int(np.prod(s)) for s in self.shapes.values()))

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names (declaration order) and shapes of the ``parameters`` block's variables."""
        info = self._model.src_info()
        names = list(info.get("parameters", {}))
        fit = self._model.optimize(data=str(self._data_file), jacobian=False, iter=1,
                                   algorithm="lbfgs", show_console=False, require_converged=False)
        values = fit.stan_variables()
        return {name: tuple(np.shape(values[name])) for name in names}

    def to_dict(self, theta: np.ndarray) -> dict:
        """Split a flat vector into the parameter variables (Stan's column-major order)."""
        out, pos = {}, 0
        theta = np.asarray(theta, float)
        for name, shape in self.shapes.items():
            size = int(np.prod(shape)) if shape else 1
            chunk = theta[pos:pos + size]
            out[name] = float(chunk[0]) if not shape else chunk.reshape(shape, order="F").tolist()
            pos += size
        return out

    def flatten(self, params: dict) -> np.ndarray:
        """The inverse of :meth:`to_dict` (constrained values -> flat vector)."""
        parts = [np.ravel(np.asarray(params[name], float), order="F") for name in self.shapes]
        return np.concatenate(parts) if parts else np.zeros(0)

    def log_prob_grad(self, theta, jacobian=False):
        path = self._tmp / "params.json"
        path.write_text(json.dumps(self.to_dict(theta)))
        out = self._model.log_prob(params=str(path), data=str(self._data_file),
                                   jacobian=bool(jacobian), sig_figs=18)
        values = out.iloc[0].to_numpy(float)
        return float(values[0]), values[1:]

    def log_prob(self, theta, jacobian=False):
        return self.log_prob_grad(theta, jacobian)[0]

    def constrain(self, theta):
        return {k: np.asarray(v) for k, v in self.to_dict(theta).items()}


class _CmdStanModel(CompiledModel):
    def __init__(self, code: str, model, cache_hit: bool, seconds: float) -> None:
        self.code = code
        self.backend = "cmdstanpy"
        self.cache_hit = cache_hit
        self.compile_seconds = seconds
        self._model = model

    def log_density(self, data: dict) -> LogDensity:
        return _CmdStanDensity(self._model, data)

    def sample(self, data: dict, settings: SampleSettings) -> RawSample:
        inits = settings.inits_for_chains()
        start = time.perf_counter()
        try:
            fit = self._model.sample(
                data=_jsonable(data), chains=settings.chains,
                parallel_chains=settings.cores or settings.chains,
                iter_warmup=settings.warmup, iter_sampling=settings.iter - settings.warmup,
                thin=settings.thin, seed=settings.seed, adapt_delta=settings.adapt_delta,
                max_treedepth=settings.max_treedepth,
                inits=inits if inits is not None else settings.init_radius,
                show_progress=settings.progress,
            )
        except RuntimeError as exc:
            raise SamplingError(f"CmdStan failed while sampling: {exc}") from None
        seconds = time.perf_counter() - start
        draws = {}
        chains = settings.chains
        for name, values in fit.stan_variables().items():
            arr = np.asarray(values)
            draws[name] = arr.reshape((chains, arr.shape[0] // chains) + arr.shape[1:])  # also size-0 b
        method = fit.method_variables()
        stats = {k: np.asarray(method[k]).T for k in SAMPLER_STATS if k in method}
        return RawSample(draws=draws, stats=stats, settings=settings, seconds=seconds)

    def optimize(self, data: dict, theta0=None, *, seed: int = 1) -> OptimizeResult:
        """CmdStan's L-BFGS with the Jacobian off; ``theta0``: a dict of (constrained) initial values."""
        inits = None if theta0 is None else theta0  # a dict of constrained values
        try:
            fit = self._model.optimize(data=_jsonable(data), jacobian=False, algorithm="lbfgs",
                                       seed=seed, inits=inits, iter=10000, show_console=False,
                                       require_converged=False, sig_figs=18, tol_rel_grad=1e3,
                                       tol_rel_obj=1e2)
        except RuntimeError as exc:
            raise SamplingError(f"CmdStan's optimizer failed: {exc}") from None
        params = {k: np.asarray(v) for k, v in fit.stan_variables().items()}
        lp = float(fit.optimized_params_dict["lp__"])
        return OptimizeResult(theta=np.array([]), params=params, lp=lp,
                              converged=bool(getattr(fit, "converged", True)), message="CmdStan L-BFGS")


class CmdStanPyBackend(Backend):
    """CmdStan through cmdstanpy (``pip install 'cmdstanpy<2'`` and ``python -m cmdstanpy.install_cmdstan``)."""

    name = "cmdstanpy"

    @property
    def stan_version(self) -> str:
        import cmdstanpy

        return "cmdstan-" + ".".join(map(str, cmdstanpy.cmdstan_version() or ()))

    def compile(self, code: str, *, progress: bool = True) -> CompiledModel:
        import cmdstanpy

        if not progress:
            logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
        key = cache.program_key(code, self.name, self.stan_version)
        entry = cache.entry_dir(self.name, key)
        stan_file = entry / "model.stan"
        if cache.is_complete(entry):
            return _CmdStanModel(code, cmdstanpy.CmdStanModel(stan_file=str(stan_file),
                                                              exe_file=str(entry / "model")), True, 0.0)
        start = time.perf_counter()
        with cache.locked_entry(self.name, key) as entry:
            if cache.is_complete(entry):
                model = cmdstanpy.CmdStanModel(stan_file=str(stan_file), exe_file=str(entry / "model"))
                return _CmdStanModel(code, model, True, 0.0)
            stan_file.write_text(code)
            try:
                model = cmdstanpy.CmdStanModel(stan_file=str(stan_file))
            except ValueError as exc:
                raise StanCompileError(f"Stan could not compile the program:\n{exc}") from None
            cache.mark_complete(entry)
        return _CmdStanModel(code, model, False, time.perf_counter() - start)
