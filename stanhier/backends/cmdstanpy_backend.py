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
    """Log density through ``CmdStanModel.log_prob`` (one CmdStan call per evaluation)."""

    def __init__(self, model, data: dict) -> None:
        self._model = model
        self._data = _jsonable(data)
        self._tmp = Path(tempfile.mkdtemp(prefix="stanhier-"))
        self._data_file = self._tmp / "data.json"
        self._data_file.write_text(json.dumps(self._data))
        self.n_params = self._count()

    def _count(self) -> int:
        fit = self._model.optimize(data=str(self._data_file), jacobian=False, iter=1,
                                   algorithm="lbfgs", show_console=False, require_converged=False)
        names = [c for c in fit.column_names if c != "lp__"]
        # unconstrained size from the Jacobian-free gradient call
        row = self._model.log_prob(params=self._constrained_dict(fit), data=str(self._data_file),
                                   jacobian=False)
        return len([c for c in row.columns if c.startswith("g_")]) or len(names)

    @staticmethod
    def _constrained_dict(fit) -> dict:
        return {k: np.asarray(v).tolist() for k, v in fit.stan_variables().items()}

    def _unconstrained_to_dict(self, theta: np.ndarray) -> dict:
        # CmdStan's log_prob method takes unconstrained values through a JSON file
        return {"params_r": list(map(float, theta))}

    def log_prob_grad(self, theta, jacobian=False):
        path = self._tmp / "upars.json"
        path.write_text(json.dumps({"params_r": list(map(float, theta))}))
        out = self._model.log_prob(params=str(path), data=str(self._data_file), jacobian=bool(jacobian))
        values = out.iloc[0].to_numpy(float)
        return float(values[0]), values[1:]

    def log_prob(self, theta, jacobian=False):
        return self.log_prob_grad(theta, jacobian)[0]

    def constrain(self, theta):
        raise NotImplementedError("constrain() is done by optimize() on the cmdstanpy backend")


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
            draws[name] = arr.reshape((chains, -1) + arr.shape[1:])
        method = fit.method_variables()
        stats = {k: np.asarray(method[k]).T for k in SAMPLER_STATS if k in method}
        return RawSample(draws=draws, stats=stats, settings=settings, seconds=seconds)

    def optimize(self, data: dict, theta0=None, *, seed: int = 1) -> OptimizeResult:
        inits = None if theta0 is None else theta0  # a dict of constrained values
        try:
            fit = self._model.optimize(data=_jsonable(data), jacobian=False, algorithm="lbfgs",
                                       seed=seed, inits=inits, iter=10000, show_console=False,
                                       require_converged=False)
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
