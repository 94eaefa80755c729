"""Cold compile time and sampling time of three model structures on both engines.

Each engine compiles into a fresh, empty ``STANHIER_CACHE_DIR`` (so every compile is cold:
about six compiles in all, several minutes), then samples 4 chains x 1000 iterations
(500 warmup) with one seed. Prints a table and the machine (CPU model, cores, load).

    CMDSTAN=~/.cache/stanhier/cmdstan-2.35.0 python benchmarks/bench_compile.py [--engines pystan,cmdstanpy]

Example output is in docs/backends.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import stanhier as sh
from stanhier.backends import available_backends

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _binomial_data() -> pd.DataFrame:
    rng = np.random.default_rng(2024)
    g1, g2 = np.repeat(np.arange(12), 10), np.tile(np.arange(10), 12)
    x = rng.normal(size=len(g1))
    eta = -0.3 + 0.8 * x + rng.normal(0, 0.7, 12)[g1] + rng.normal(0, 0.5, 10)[g2]
    n = np.full(len(g1), 20)
    return pd.DataFrame({"y": rng.binomial(n, 1 / (1 + np.exp(-eta))), "n": n, "x": x,
                         "g1": [f"a{i}" for i in g1], "g2": [f"b{i}" for i in g2]})


def cases() -> list[tuple[str, str, pd.DataFrame, str]]:
    fish = pd.read_csv(DATA / "fish.csv")
    fish["weather"] = (fish["weather"] == "sunny").astype(int)
    return [
        ("sleepstudy gaussian", "Reaction ~ Days + (Days | Subject)", pd.read_csv(DATA / "sleepstudy.csv"),
         "gaussian"),
        ("fish poisson (seed)", "fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson"),
        ("binomial, two terms", "y | trials(n) ~ x + (1 | g1) + (1 | g2)", _binomial_data(), "binomial"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(available_backends()))
    parser.add_argument("--iter", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for engine in args.engines.split(","):
        cache = Path(tempfile.mkdtemp(prefix=f"stanhier-bench-{engine}-"))
        os.environ["STANHIER_CACHE_DIR"] = str(cache)
        try:
            for name, formula, data, family in cases():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    fit = sh.brm(formula, data=data, family=family, backend=engine, chains=4, iter=args.iter,
                                 seed=1, progress=False)
                    total = time.perf_counter() - t0
                rows.append({"engine": engine, "model": name, "cache hit": fit.cache_hit,
                             "compile s": round(fit.compile_seconds, 1),
                             "sampling s": round(fit.raw.seconds, 1), "total s": round(total, 1),
                             "max Rhat": round(float(fit.summary_table()["Rhat"].max()), 3)})
                print(rows[-1], flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"\nmachine: {_cpu()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end; "
          f"{platform.platform()}; chains run in parallel; {args.iter} iterations per chain (half warmup)")


if __name__ == "__main__":
    main()
