"""Sampling and ML fitting with the pystan engine, programs compiled with ``STAN_THREADS`` (as
httpstan compiles them, linked with httpstan's services object) and without (stanhier's
default, ``stanhier.backends.toolchain.macros``), and CmdStan on the same programs for
reference, in one run.

Each configuration compiles into a fresh cache of its own (no precompiled header: compile
time is not what this measures), then, alternating between configurations, each in a new
process, fits:

* brms's program for Penicillin (``diameter ~ 1 + (1 | plate) + (1 | sample)``,
  ``marginalize=False``) with 1 and 4 chains, 3000 iterations each (1000 warmup);
* the seed model (``fish_num ~ 1 + temperature + (temperature | weather)``, Poisson), 4 chains
  of 2000 iterations.

(``lmer`` and ``glmer`` on these data run on numpy, not on a Stan program.)

Prints, per fit, wall seconds of sampling (``fit.raw.seconds``), the CPU
seconds of httpstan's chain processes, whether both configurations gave the same draws (same
seed), the ratio of the mean seconds with / without ``STAN_THREADS``, CmdStan's seconds (its
executables link the objects compiled without it), and the machine.

    CMDSTAN=~/.cache/stanhier/cmdstan-2.35.0 python benchmarks/bench_stan_threads.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: label -> $STANHIER_STAN_THREADS (with: httpstan's build; without: stanhier's)
CONFIGS = {"STAN_THREADS": "1", "without": "0"}

CHILD = r'''
import json, os, sys, warnings
warnings.simplefilter("ignore")
import numpy as np, pandas as pd
import stanhier as sh

DATA = os.path.join(sys.argv[1], "tests", "data")
engine = sys.argv[2]
penicillin = pd.read_csv(os.path.join(DATA, "Penicillin.csv"))
fish = pd.read_csv(os.path.join(DATA, "fish.csv"))
fish["weather"] = (fish["weather"] == "sunny").astype(int)


sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
from pytest_cpu import tree_cpu


def worker_cpu():
    """CPU seconds of httpstan's chain processes so far (they outlive each fit)."""
    if engine != "pystan":
        return float("nan")
    import httpstan.services_stub as stub
    return sum(tree_cpu(proc.pid) for proc in getattr(stub.executor, "_processes", {}).values())


rows = []
fits = [("Penicillin, 1 chain", dict(formula="diameter ~ 1 + (1 | plate) + (1 | sample)", data=penicillin,
                                     chains=1, iter=3000, warmup=1000, marginalize=False)),
        ("Penicillin, 4 chains", dict(formula="diameter ~ 1 + (1 | plate) + (1 | sample)", data=penicillin,
                                      chains=4, iter=3000, warmup=1000, marginalize=False)),
        ("fish (seed), 4 chains", dict(formula="fish_num ~ 1 + temperature + (temperature | weather)", data=fish,
                                       family="poisson", chains=4, iter=2000, control={"adapt_delta": 0.95}))]
for name, kwargs in fits:
    c0 = worker_cpu()
    fit = sh.brm(**kwargs, seed=1, backend=engine, progress=False)
    rows.append({"fit": name, "seconds": fit.raw.seconds, "chain cpu s": worker_cpu() - c0,
                 "draws": float(np.mean(fit.raw.stats["lp__"]))})
print(json.dumps(rows))
'''


def run(cache: Path, threads: str, engine: str) -> list[dict]:
    env = {**os.environ, "STANHIER_CACHE_DIR": str(cache), "STANHIER_STAN_THREADS": threads, "STANHIER_PCH": "0",
           "STANHIER_BACKEND": engine}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), engine], env=env, capture_output=True, text=True,
                          timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from stanhier.backends import available_backends

    root = Path(tempfile.mkdtemp(prefix="stanhier-bench-threads-"))
    try:
        caches = {config: root / f"cache{i}" for i, config in enumerate(CONFIGS)}
        for config, threads in CONFIGS.items():
            run(caches[config], threads, "pystan")  # compiles (not timed)
        cmdstan = "cmdstanpy" in available_backends()
        if cmdstan:
            run(caches[list(CONFIGS)[1]], "0", "cmdstanpy")  # links the objects compiled for pystan
        results: dict[str, list[list[dict]]] = {config: [] for config in CONFIGS}
        results["CmdStan"] = []
        for _ in range(args.repeats):
            for config, threads in CONFIGS.items():
                results[config].append(run(caches[config], threads, "pystan"))
            if cmdstan:
                results["CmdStan"].append(run(caches[list(CONFIGS)[1]], "0", "cmdstanpy"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    on, off = list(CONFIGS)
    table = []
    for i, name in enumerate(r["fit"] for r in results[on][0]):
        def col(config: str, key: str) -> str:
            values = [rep[i][key] for rep in results[config]]
            return ", ".join(f"{v:.1f}" for v in values if not np.isnan(v)) or "-"

        mean = {c: np.mean([rep[i]["seconds"] for rep in results[c]]) for c in (on, off)}
        same = len({rep[i]["draws"] for c in (on, off) for rep in results[c]}) == 1
        table.append({"fit": name, f"{on} s": col(on, "seconds"), f"{off} s": col(off, "seconds"),
                      "ratio": round(mean[on] / mean[off], 2), f"chain cpu s, {on}": col(on, "chain cpu s"),
                      f"chain cpu s, {off}": col(off, "chain cpu s"),
                      "same draws": same,
                      "CmdStan s": col("CmdStan", "seconds") if results["CmdStan"] else "-"})
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(pd.DataFrame(table).to_string(index=False))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end; {platform.platform()}; {args.repeats} runs each, alternating")


if __name__ == "__main__":
    main()
