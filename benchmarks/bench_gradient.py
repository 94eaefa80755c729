"""Time per gradient of stanhier's generated programs: what sampling costs, apart from how
many steps NUTS takes. Changes to the generated Stan code (scalar loops instead of vector
expressions, prior kernels) change the draws in floating point, so sampling seconds of two
program versions are not comparable run by run; seconds per leapfrog step are.

Each structure is fitted twice with one chain (no chains competing for the 2 cores), the same
seed and warmup, and ``n`` then ``2 n`` iterations after warmup, keeping every ``n / 500``-th
draw (so passing draws to Python costs little): the first ``n`` iterations of the two runs are
the same (Stan's random numbers come in sequence), so the difference in sampling seconds,
divided by the leapfrog steps of iterations ``n + 1 .. 2 n`` (one gradient each; estimated as
``n`` times the mean over the kept draws), is the time per gradient, free of warmup and
start-up. ``n`` is chosen per structure so that it takes a few seconds. A shared virtual
machine's speed drifts by tens of percent from run to run, so each run is repeated ``--reps``
times (interleaved) and the fastest of each is used. Run it with
two versions of stanhier to compare them (PYTHONPATH=<other checkout> python
benchmarks/bench_gradient.py); the compile is not timed (bench_compile.py does that).

    python benchmarks/bench_gradient.py [--scale 1] [--reps 3] [--only sleepstudy] [--json out.json] [--backend cmdstanpy]

Recorded runs are in benchmarks/results/compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

import stanhier as sh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compile import _cpu, cases  # noqa: E402  (the three structures of bench_compile)


def _large_sleep(groups: int = 2000) -> pd.DataFrame:
    """sleepstudy's design with many subjects: the marginal program's per-level loop dominates."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(groups), 10)
    days = np.tile(np.arange(10), groups)
    u = rng.multivariate_normal([0, 0], [[600, 10], [10, 35]], size=groups)
    y = 251 + u[g, 0] + (10.5 + u[g, 1]) * days + rng.normal(0, 25.6, len(g))
    return pd.DataFrame({"Reaction": y, "Days": days, "Subject": g})


def seconds_per_gradient(run: Callable[[int, int], tuple[float, np.ndarray]], n: int, reps: int) -> tuple[float, int]:
    """Seconds per gradient from ``run(iters, rep)`` -> (sampling seconds, leapfrog steps of the
    kept draws), one chain with the same seed and warmup for ``n`` and ``2 n`` iterations after
    warmup: the first ``n`` iterations of the two are the same, so the difference in seconds
    divided by the steps of iterations ``n + 1 .. 2 n`` (``n`` times their mean over the kept
    draws) is free of warmup and start-up. The runs are repeated ``reps`` times, interleaved,
    and the fastest of each length counts. Returns the seconds and the steps."""
    runs: dict[int, list] = {}
    for rep in range(reps):
        for iters in (n, 2 * n):
            runs.setdefault(iters, []).append(run(iters, rep))
    t1, s1 = min(runs[n], key=lambda r: r[0])
    t2, s2 = min(runs[2 * n], key=lambda r: r[0])
    assert np.array_equal(s1, s2[:len(s1)]), "the first draws of the two runs differ"
    steps = int(round(n * s2[len(s1):].mean()))
    return (t2 - t1) / steps, steps


def report(rows: list[dict], settings: str, json_path: str | None) -> None:
    """Print the rows as a table and the machine they ran on; write them to ``json_path``."""
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"\nmachine: {_cpu()}, {os.cpu_count()} cores; {platform.platform()}; {settings}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each structure's n")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each run (the fastest counts)")
    parser.add_argument("--only", default="", help="run the structures whose name contains this")
    parser.add_argument("--json", default=None)
    parser.add_argument("--backend", default="pystan", help="the engine (cmdstanpy: with STANHIER_SHARED_OBJECTS=0 "
                        "the executables CmdStan's make builds, else the ones linked from the shared objects)")
    args = parser.parse_args()
    rows = []
    structures = cases() + [("sleepstudy gaussian, 2000 subjects", "Reaction ~ Days + (Days | Subject)",
                             _large_sleep(), "gaussian")]
    iterations = (100_000, 50_000, 20_000, 2_000)  # n of each structure: a few seconds each
    for (name, formula, data, family), n_base in zip(structures, iterations):
        if args.only not in name:
            continue
        n = int(n_base * args.scale) // 500 * 500

        def run(iters: int, rep: int) -> tuple[float, np.ndarray]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = sh.brm(formula, data=data, family=family, backend=args.backend, chains=1, warmup=1000,
                             iter=1000 + iters, thin=n // 500, seed=1, progress=False)
            return fit.raw.seconds, np.asarray(fit.raw.stats["n_leapfrog__"]).ravel()

        seconds, steps = seconds_per_gradient(run, n, args.reps)
        build = "" if args.backend == "pystan" else (
            " (make)" if os.environ.get("STANHIER_SHARED_OBJECTS", "1").strip() in ("0", "false", "no", "off")
            else " (linked)")
        rows.append({"model": name, "engine": args.backend + build, "stanhier": sh.__file__.rsplit("/stanhier/", 1)[0],
                     "n": n, "leapfrog steps": steps, "us per gradient": round(1e6 * seconds, 2)})
        print(rows[-1], file=sys.stderr, flush=True)
    report(rows, f"one chain, 1000 warmup iterations; fastest of {args.reps} runs each", args.json)


if __name__ == "__main__":
    main()
