"""Group-level effects of a marginalized Gaussian fit, drawn from their exact conditionals.

The program ``brm_marginal.stan`` samples (b, Intercept, sigma, sd, L) from their
marginal posterior with the group-level effects integrated out. Given one such draw,
the effects of each block are Gaussian (Lambda is the block's covariance Cholesky
factor relative to sigma, ``u = Lambda v``):

    v | y, theta ~ normal(A^-1 Lambda' Z'(y - X beta), sigma^2 A^-1),   A = I + Lambda' Z'Z Lambda,

so one normal draw per posterior draw and block gives exact joint posterior draws of
brms's model. Everything is vectorized over draws and blocks (numpy's batched
Cholesky and solves), in chunks of draws to bound memory, and reproducible: the
random numbers come from ``numpy.random.default_rng(SeedSequence([seed, 0x6d61726b]))``
with the fit's seed. The draws are returned as the ordinary program returns them
(``r_k`` with shape (chain, draw, N_k, M_k)), so every downstream function works
unchanged.

Example
-------
>>> import numpy as np
>>> # one block, q = 1: prior sd 2 (Lambda = 2 / sigma), sigma 1, Z'Z = 4, Z'(y - X beta) = 8
>>> args = (np.array([[[2.0]]]), np.array([1.0]), np.array([[[4.0]]]), np.array([[[8.0]]]))
>>> mean = conditional_draws(*args, eps=np.zeros((1, 1, 1)))    # posterior mean 4 * 8 / (1 + 16)
>>> round(float(mean[0, 0, 0]), 6)
1.882353
>>> eps = np.random.default_rng(1).standard_normal((1, 1, 1))   # sd sqrt(4 / 17)
>>> round(float((conditional_draws(*args, eps=eps) - mean)[0, 0, 0] / eps[0, 0, 0]) ** 2, 6)
0.235294
"""

from __future__ import annotations

import dataclasses
import time
import numpy as np

from ..backends.base import RawSample, SampleSettings
from ..errors import ArgumentError
from ..stan import names
from ..stan.codegen import ModelSpec
from ..stan.marginal import MarginalLayout, marginal_layout

__all__ = ["SEED_STREAM", "relative_factors", "conditional_draws", "draw_group_effects",
           "complete_draws", "marginal_settings"]

#: second word of the seed sequence of the conditional draws ("mark")
SEED_STREAM = 0x6D61726B


def relative_factors(spec: ModelSpec, draws: dict[str, np.ndarray], layout: MarginalLayout) -> np.ndarray:
    """(S, q, q) block Cholesky factors of the effects' covariance, relative to sigma."""
    sigma = draws["sigma"].reshape(-1)
    S = sigma.shape[0]
    Lam = np.zeros((S, layout.q, layout.q))
    for k, (gt, o, R) in enumerate(zip(spec.design.terms, layout.offsets, layout.copies)):
        M = gt.M
        sd = draws[names.term(k).sd].reshape(S, M)
        if gt.correlated:
            T = sd[:, :, None] * draws[names.term(k).L].reshape(S, M, M)
        else:
            T = sd[:, :, None] * np.eye(M)[None]
        T = T / sigma[:, None, None]
        for j in range(R):
            s = o + j * M
            Lam[:, s:s + M, s:s + M] = T
    return Lam


def conditional_draws(Lam: np.ndarray, sigma: np.ndarray, ZtZ: np.ndarray, Ztr: np.ndarray,
                      eps: np.ndarray) -> np.ndarray:
    """Effects u = Lambda v of every block, (S, G, q), from standard normals ``eps`` (S, G, q).

    ``Lam`` (S, q, q), ``sigma`` (S,), ``ZtZ`` (G, q, q), ``Ztr`` (S, G, q) = Z'(y - X beta).
    ``eps = 0`` gives the conditional means.
    """
    # optimize=True contracts pairwise through BLAS (the plain three-operand einsum is ~50x slower)
    A = np.einsum("sji,gjk,skl->sgil", Lam, ZtZ, Lam, optimize=True) + np.eye(Lam.shape[-1])
    rhs = np.einsum("sji,sgj->sgi", Lam, Ztr, optimize=True)
    # A^-1 = W'W with W = L_A^-1 (A >= I, so |W| <= 1): one batched inverse serves the mean
    # A^-1 rhs = W'(W rhs) and the noise sigma W'eps (covariance sigma^2 A^-1)
    W = np.linalg.inv(np.linalg.cholesky(A))
    z = np.einsum("sgij,sgj->sgi", W, rhs, optimize=True) + sigma[:, None, None] * eps
    v = np.einsum("sgji,sgj->sgi", W, z, optimize=True)
    return np.einsum("sij,sgj->sgi", Lam, v, optimize=True)


def draw_group_effects(spec: ModelSpec, draws: dict[str, np.ndarray], seed: int | None,
                       max_chunk_values: int = 4_000_000) -> dict[str, np.ndarray]:
    """``{"r_k": (chain, draw, N_k, M_k)}`` drawn from the exact conditionals given ``draws``."""
    design = spec.design
    layout = marginal_layout(design)
    cp = spec.standata()  # the cross-products the program sampled with (Dask: reduced on the cluster)
    chains, n_draws = draws["sigma"].shape[:2]
    S = chains * n_draws
    beta = draws[names.B].reshape(S, -1)
    if design.has_intercept:
        beta = np.column_stack([draws[names.INTERCEPT].reshape(S), beta])
    sigma = draws["sigma"].reshape(S)
    Lam = relative_factors(spec, draws, layout)
    G, q = layout.G, layout.q
    rng = np.random.default_rng(np.random.SeedSequence(None if seed is None else [int(seed), SEED_STREAM]))
    eps = rng.standard_normal((S, G, q))
    u = np.empty((S, G, q))
    step = max(1, max_chunk_values // max(1, G * q * q))
    for s0 in range(0, S, step):
        sl = slice(s0, s0 + step)
        Ztr = cp["Zty"][None] - np.einsum("gqk,sk->sgq", cp["ZtA"], beta[sl], optimize=True)
        u[sl] = conditional_draws(Lam[sl], sigma[sl], cp["ZtZ"], Ztr, eps[sl])
    out: dict[str, np.ndarray] = {}
    for k, (gt, o) in enumerate(zip(design.terms, layout.offsets)):
        M, N_k = gt.M, gt.n_levels
        if layout.kind == "blocks":
            r = u[:, :, o:o + M]
        else:
            r = u[:, 0, o:o + N_k * M].reshape(S, N_k, M)
        out[names.term(k).r] = r.reshape(chains, n_draws, N_k, M)
    return out


def complete_draws(spec: ModelSpec, raw: RawSample) -> RawSample:
    """``raw`` with the group-level effects ``r_k`` added (no-op for other programs)."""
    if not spec.structure.marginal:
        return raw
    start = time.perf_counter()
    extra = draw_group_effects(spec, raw.draws, raw.settings.seed)
    seconds = raw.seconds + (time.perf_counter() - start)
    return dataclasses.replace(raw, draws={**raw.draws, **extra}, seconds=seconds)


def marginal_settings(spec: ModelSpec, settings: SampleSettings) -> SampleSettings:
    """``settings`` with initial values of ``sigma`` given as the program's ``log_sigma``: the
    integrated-out program samples log(sigma) (on a scale that keeps Stan's metric adaptation
    accurate at any number of rows) and derives sigma (no-op for other programs or random inits).

    >>> s = SampleSettings(chains=1, init={"sigma": 2.0, "b": [0.5]})
    >>> from stanhier.stan.codegen import build_model
    >>> import pandas as pd
    >>> spec = build_model("y ~ x + (1 | g)", pd.DataFrame({"y": [1.0, 2, 4, 3], "x": [0, 1, 0, 1], "g": list("aabb")}))
    >>> marginal_settings(spec, s).inits_for_chains()
    [{'b': [0.5], 'log_sigma': 0.6931471805599453}]
    """
    inits = settings.inits_for_chains()
    if not spec.structure.marginal or inits is None or not any("sigma" in i for i in inits):
        return settings
    out = []
    for values in inits:
        values = dict(values)
        if "sigma" in values:
            sigma = np.asarray(values.pop("sigma"), dtype=float)
            if sigma.shape != () or not sigma > 0:
                raise ArgumentError(f"init: sigma must be one positive number, got {sigma.tolist()!r}.")
            values[names.LOG_SIGMA] = float(np.log(sigma))
        out.append(values)
    return dataclasses.replace(settings, init=out)
