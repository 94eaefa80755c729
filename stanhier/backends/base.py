"""What every backend provides: compile (cached), sample (NUTS), log density (value,
gradient, many points at once), constrain, and optionally a native optimizer.

Backends take the same Stan program and the same data dict and return the same
plain objects (:class:`RawSample`, :class:`LogDensity`), so nothing above this
layer knows which one ran: callers never branch on a backend's name.

Example
-------
>>> settings = SampleSettings(chains=2, iter=100, seed=1)
>>> settings.warmup, settings.draws_per_chain
(50, 50)
>>> code_line("Exception: x is -1 (in 'm.stan', line 1, column 0)", "real<lower=0> x;")
'\\nGenerated code, line 1: real<lower=0> x;'
"""

from __future__ import annotations

import abc
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ArgumentError, StanCompileError

__all__ = [
    "SampleSettings", "RawSample", "LogDensity", "CompiledModel", "Backend",
    "reshape_flat", "fd_hessian", "code_line", "compile_error", "SAMPLER_STATS", "fresh_seed", "MAX_SEED",
]

#: seeds stanhier draws lie in [0, MAX_SEED): valid for Stan (unsigned 32-bit) and numpy
MAX_SEED = 2**31 - 1


def fresh_seed() -> int:
    """A seed from the operating system's entropy, for a fit given none (it is recorded).

    >>> 0 <= fresh_seed() < MAX_SEED
    True
    """
    return int(np.random.SeedSequence().entropy % MAX_SEED)

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

    def with_seed(self) -> "SampleSettings":
        """These settings with a seed: the given one, else a fresh one (:func:`fresh_seed`).

        Backends sample with the result and return it in :class:`RawSample`, so a fit always
        knows the seed its draws came from and re-running with that seed reproduces them.

        >>> SampleSettings(seed=7).with_seed().seed
        7
        >>> SampleSettings().with_seed().seed is not None
        True
        """
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=fresh_seed())

    def chain_seeds(self) -> list[dict[str, int]]:
        """What seeds each chain: Stan seeds every chain with ``seed`` and advances its random
        number generator by the chain id (1, 2, ...), on both engines.

        >>> SampleSettings(chains=2, seed=5).chain_seeds()
        [{'chain': 1, 'seed': 5, 'chain_id': 1}, {'chain': 2, 'seed': 5, 'chain_id': 2}]
        """
        return [{"chain": i + 1, "seed": self.seed, "chain_id": i + 1} for i in range(self.chains)]

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
    #: True when no seed was given and the backend drew ``settings.seed`` itself
    seed_drawn: bool = False


class LogDensity(abc.ABC):
    """The model's log density on the unconstrained scale, for one data set.

    Every backend evaluates Stan's ``log_prob`` with ``propto=True`` (constants of ``~``
    statements dropped; ``target +=`` keeps everything), so values agree across backends.
    """

    n_params: int

    @abc.abstractmethod
    def log_prob_grad(self, theta: np.ndarray, jacobian: bool = False) -> tuple[float, np.ndarray]:
        """Log density and its gradient at ``theta``; raises a ``RuntimeError`` subclass
        where Stan throws (e.g. a ``reject`` or a domain error)."""

    def log_prob(self, theta: np.ndarray, jacobian: bool = False) -> float:
        return self.log_prob_grad(theta, jacobian)[0]

    def log_prob_grad_many(self, thetas: np.ndarray, jacobian: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Log densities ``(m,)`` and gradients ``(m, n)`` at the rows of ``thetas``.

        Rows where Stan throws give ``-inf`` and a NaN gradient. Backends where each call
        has a fixed cost (a process) evaluate all rows at once.
        """
        thetas = np.atleast_2d(np.asarray(thetas, float))
        lps = np.empty(len(thetas))
        grads = np.empty(thetas.shape)
        for i, row in enumerate(thetas):
            try:
                lps[i], grads[i] = self.log_prob_grad(row, jacobian)
            except (RuntimeError, ValueError):
                lps[i], grads[i] = -np.inf, np.nan
        return lps, grads

    @abc.abstractmethod
    def constrain(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Every variable of the program at ``theta`` (unconstrained): parameters,
        transformed parameters and generated quantities, by Stan name, with Stan's shapes
        (size-0 and size-1 variables included as arrays of that shape)."""

    def hessian(self, theta: np.ndarray, step: float = 1e-5) -> np.ndarray:
        """Hessian by central differences of the gradient (Jacobian off); the ``2n``
        gradients are evaluated in one :meth:`log_prob_grad_many` call."""
        x = np.asarray(theta, float)
        n = len(x)
        h = step * np.maximum(1.0, np.abs(x))
        E = np.diag(h)
        _, grads = self.log_prob_grad_many(np.vstack([x + E, x - E]))
        H = ((grads[:n] - grads[n:]) / (2 * h[:, None])).T
        return (H + H.T) / 2


def code_line(message: str, code: str) -> str:
    """'Generated code, line n: ...' for the first ``line n, column m`` Stan's message names.

    >>> code_line("Exception: bad (in 'model.stan', line 2, column 2 to column 9)", "a\\n  b ~ c;")
    '\\nGenerated code, line 2: b ~ c;'
    """
    lines = code.splitlines()
    match = re.search(r"line (\d+), column (\d+)", message)
    if match and 1 <= int(match.group(1)) <= len(lines):
        n = int(match.group(1))
        return f"\nGenerated code, line {n}: {lines[n - 1].strip()}"
    return ""


def compile_error(message: str, code: str) -> StanCompileError:
    """The error for a program Stan rejects (stanc's message and the generated line it names)."""
    return StanCompileError(f"Stan could not compile the program:\n{message.strip()}{code_line(message, code)}")


def fd_hessian(value_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], x: np.ndarray,
               step: float = 1e-5) -> np.ndarray:
    """Symmetrised central differences of a gradient; steps relative to each parameter's size.

    Prefer :meth:`LogDensity.hessian`, which evaluates the ``2n`` gradients in one batch.

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


class Backend(abc.ABC):
    name: str

    @property
    @abc.abstractmethod
    def stan_version(self) -> str: ...

    @abc.abstractmethod
    def compile(self, code: str, *, progress: bool = True, show_cached: bool = True) -> CompiledModel:
        """Compile ``code`` (or find it in the cache). ``progress``: show the compile display
        (elapsed time while compiling; a ``cached`` line on a cache hit unless ``show_cached``
        is false)."""


def reshape_flat(flat: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """(chain, draw, P) with P in Stan's column-major order -> (chain, draw, *dims)."""
    c, d, _ = flat.shape
    if not dims:
        return flat[:, :, 0]
    arr = flat.reshape((c, d) + tuple(reversed(dims)))
    return arr.transpose((0, 1) + tuple(range(len(dims) + 1, 1, -1)))
