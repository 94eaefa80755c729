"""What every backend provides: compile (cached), sample (NUTS), log density, optimize.

Backends take the same Stan program and the same data dict and return the same
plain objects (:class:`RawSample`, :class:`OptimizeResult`), so nothing above this
layer knows which one ran.

Example
-------
>>> from stanhier.backends import get_backend
>>> backend = get_backend("pystan")          # doctest: +SKIP
>>> model = backend.compile("parameters { real x; } model { x ~ std_normal(); }")  # doctest: +SKIP
>>> model.cache_hit in (True, False)         # doctest: +SKIP
True
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from scipy import optimize as sopt

from ..errors import ArgumentError

__all__ = [
    "SampleSettings", "RawSample", "OptimizeResult", "LogDensity", "CompiledModel", "Backend",
    "reshape_flat", "fd_hessian", "SAMPLER_STATS",
]

#: Stan's per-draw sampler statistics, in Stan's order.
SAMPLER_STATS = ("lp__", "accept_stat__", "stepsize__", "treedepth__", "n_leapfrog__",
                 "divergent__", "energy__")


@dataclass(frozen=True)
class SampleSettings:
    """Validated NUTS settings (brms's argument names).

    >>> SampleSettings(chains=2, iter=200, warmup=100).draws_per_chain
    100
    """

    chains: int = 4
    iter: int = 2000
    warmup: int | None = None
    thin: int = 1
    seed: int | None = None
    cores: int | None = None
    init: Any = None  #: None: uniform(-2, 2) on the unconstrained scale; a number r: uniform(-r, r); a dict/list of dicts
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.warmup is None:
            object.__setattr__(self, "warmup", self.iter // 2)
        for name in ("chains", "iter", "thin", "max_treedepth"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ArgumentError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.warmup, (int, np.integer)) or self.warmup < 0:
            raise ArgumentError(f"warmup must be a non-negative integer, got {self.warmup!r}.")
        if self.iter <= self.warmup:
            raise ArgumentError(
                f"iter ({self.iter}) must be larger than warmup ({self.warmup}): iter counts warmup "
                "and sampling iterations together, as in brms."
            )
        if not (0 < float(self.adapt_delta) < 1):
            raise ArgumentError(f"adapt_delta must be strictly between 0 and 1, got {self.adapt_delta!r}.")
        if self.seed is not None and (not isinstance(self.seed, (int, np.integer)) or self.seed < 0):
            raise ArgumentError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.cores is not None and (not isinstance(self.cores, (int, np.integer)) or self.cores < 1):
            raise ArgumentError(f"cores must be a positive integer, got {self.cores!r}.")

    @property
    def draws_per_chain(self) -> int:
        return (self.iter - self.warmup + self.thin - 1) // self.thin

    def inits_for_chains(self) -> list[dict] | None:
        """Per-chain initial values if given as dicts, else None."""
        if isinstance(self.init, Mapping):
            return [dict(self.init) for _ in range(self.chains)]
        if isinstance(self.init, (list, tuple)):
            if len(self.init) != self.chains:
                raise ArgumentError(f"init has {len(self.init)} entries but chains={self.chains}.")
            return [dict(i) for i in self.init]
        return None

    @property
    def init_radius(self) -> float:
        if self.init is None or isinstance(self.init, (Mapping, list, tuple)):
            return 2.0
        if isinstance(self.init, str) and self.init == "random":
            return 2.0
        try:
            radius = float(self.init)
        except (TypeError, ValueError):
            raise ArgumentError(f"init must be None, 'random', a number, or dict(s) of values; got {self.init!r}.") from None
        if radius < 0:
            raise ArgumentError(f"init radius must be >= 0, got {radius}.")
        return radius


@dataclass(frozen=True, eq=False)
class RawSample:
    """Draws as the backend returned them, arrays shaped (chain, draw, *dims)."""

    draws: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]  #: SAMPLER_STATS -> (chain, draw)
    settings: SampleSettings
    seconds: float
    messages: str = ""


@dataclass(frozen=True, eq=False)
class OptimizeResult:
    """An optimum on the unconstrained scale with its constrained values."""

    theta: np.ndarray  #: unconstrained parameter vector
    params: dict[str, np.ndarray]  #: constrained values (parameters, transformed parameters, GQs)
    lp: float  #: log density at the optimum (Jacobian off)
    converged: bool
    message: str
    grad_norm: float = float("nan")
    n_evals: int = 0


class LogDensity(abc.ABC):
    """The model's log density on the unconstrained scale, for one data set."""

    n_params: int

    @abc.abstractmethod
    def log_prob(self, theta: np.ndarray, jacobian: bool = False) -> float: ...

    @abc.abstractmethod
    def log_prob_grad(self, theta: np.ndarray, jacobian: bool = False) -> tuple[float, np.ndarray]: ...

    @abc.abstractmethod
    def constrain(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Every variable of the program at ``theta`` (unconstrained): parameters,
        transformed parameters and generated quantities, by Stan name, with Stan's shapes
        (size-0 and size-1 variables included as arrays of that shape)."""

    def hessian(self, theta: np.ndarray, step: float = 1e-5) -> np.ndarray:
        """Hessian by central differences of the gradient (Jacobian off)."""
        return fd_hessian(self.log_prob_grad, np.asarray(theta, float), step)


def fd_hessian(value_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], x: np.ndarray,
               step: float = 1e-5) -> np.ndarray:
    """Symmetrised central differences of a gradient; steps relative to each parameter's size.

    >>> fd_hessian(lambda x: (0.0, -2 * x), np.array([1.0, 2.0])).round(6).tolist()
    [[-2.0, 0.0], [0.0, -2.0]]
    """
    n = len(x)
    H = np.empty((n, n))
    for i in range(n):
        h = step * max(1.0, abs(x[i]))
        e = np.zeros(n)
        e[i] = h
        H[:, i] = (value_grad(x + e)[1] - value_grad(x - e)[1]) / (2 * h)
    return (H + H.T) / 2


def lbfgs(density: LogDensity, theta0: np.ndarray, gtol: float = 1e-6, maxiter: int = 5000) -> OptimizeResult:
    """Maximize ``density`` (Jacobian off) with scipy's L-BFGS-B from ``theta0``."""
    count = {"n": 0}

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        count["n"] += 1
        try:
            lp, g = density.log_prob_grad(theta)
        except Exception:
            return 1e300, np.zeros_like(theta)
        if not np.isfinite(lp):
            return 1e300, np.zeros_like(theta)
        return -lp, -np.asarray(g)

    res = sopt.minimize(fun, np.asarray(theta0, float), jac=True, method="L-BFGS-B",
                        options={"maxiter": maxiter, "gtol": gtol, "ftol": 1e-15, "maxcor": 20})
    lp, g = density.log_prob_grad(res.x)
    gnorm = float(np.max(np.abs(g))) if len(g) else 0.0
    return OptimizeResult(theta=res.x, params=density.constrain(res.x), lp=float(lp),
                          converged=bool(np.isfinite(lp) and (res.success or gnorm < 1e-3)),
                          message=str(res.message), grad_norm=gnorm, n_evals=count["n"])


class CompiledModel(abc.ABC):
    """A compiled Stan program; data is given per call."""

    code: str
    backend: str
    cache_hit: bool
    compile_seconds: float

    @abc.abstractmethod
    def sample(self, data: dict, settings: SampleSettings) -> RawSample: ...

    @abc.abstractmethod
    def log_density(self, data: dict) -> LogDensity: ...

    def native_optimizer(self, data: dict) -> Callable[[np.ndarray], np.ndarray] | None:
        """The backend's own optimizer for ``data``, if it has one: a function taking an
        unconstrained start vector and returning the unconstrained optimum (Jacobian off).

        ``None`` (the default) means callers run scipy's L-BFGS on :meth:`log_density`.
        Callers never branch on the backend's name; they ask this method.
        """
        return None

    def optimize(self, data: dict, theta0: np.ndarray | None = None, *, seed: int = 1) -> OptimizeResult:
        """Maximize the log density with the Jacobian off (L-BFGS)."""
        density = self.log_density(data)
        if theta0 is None:
            theta0 = np.random.default_rng(seed).uniform(-2, 2, density.n_params)
        return lbfgs(density, theta0)


class Backend(abc.ABC):
    name: str

    @property
    @abc.abstractmethod
    def stan_version(self) -> str: ...

    @abc.abstractmethod
    def compile(self, code: str, *, progress: bool = True) -> CompiledModel: ...


def reshape_flat(flat: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """(chain, draw, P) with P in Stan's column-major order -> (chain, draw, *dims)."""
    c, d, _ = flat.shape
    if not dims:
        return flat[:, :, 0]
    arr = flat.reshape((c, d) + tuple(reversed(dims)))
    return arr.transpose((0, 1) + tuple(range(len(dims) + 1, 1, -1)))
