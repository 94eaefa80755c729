"""pystan's sampling with httpstan's own chain readers and with stanhier's (waits of at most
1 ms in ``select``, ``stanhier.backends.pystan_backend._poll_chains_briefly``), and CmdStan's
on the same program for reference, in one run.

brms's program for Penicillin (``diameter ~ 1 + (1 | plate) + (1 | sample)``,
``marginalize=False``: 30 parameters, 3000 iterations per chain, 1000 warmup) with 1, 2 and 4
chains; each configuration twice, alternating. Prints the seconds of each fit's sampling
(``fit.raw.seconds``), the ratio httpstan's / stanhier's, whether the two pystan runs gave the
same draws (same seed), and the machine.

    CMDSTAN=~/.cache/stanhier/cmdstan-2.35.0 python benchmarks/bench_pystan_chains.py
"""

from __future__ import annotations

import os
import platform
import select
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import stanhier as sh
from stanhier.backends import available_backends, get_backend

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "Penicillin.csv"
FORMULA = "diameter ~ 1 + (1 | plate) + (1 | sample)"
HTTPSTAN, STANHIER = "httpstan's readers", "stanhier's readers"


def fit(data: pd.DataFrame, chains: int, backend: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sh.brm(FORMULA, data=data, chains=chains, iter=3000, warmup=1000, seed=1, marginalize=False,
                      backend=backend, progress=False)


def main() -> None:
    import httpstan.services_stub as stub

    data = pd.read_csv(DATA)
    get_backend("pystan")  # stanhier's readers are installed with the backend
    readers = {HTTPSTAN: select, STANHIER: stub.select}
    fit(data, 1, "pystan")  # compiled (or cached) before timing
    engines = ["pystan"] + (["cmdstanpy"] if "cmdstanpy" in available_backends() else [])
    if "cmdstanpy" in engines:
        fit(data, 1, "cmdstanpy")
    print(f"{'chains':>6}  {'pystan, httpstan readers s':>27}  {'pystan, stanhier readers s':>27}  {'ratio':>5}  "
          f"{'same draws':>10}  {'CmdStan s':>12}")
    for chains in (1, 2, 4):
        seconds: dict[str, list[float]] = {name: [] for name in readers}
        draws = {}
        cmdstan = []
        for _ in range(2):
            for name, module in readers.items():
                stub.select = module
                f = fit(data, chains, "pystan")
                seconds[name].append(f.raw.seconds)
                draws[name] = f.raw.draws["sd_1"]
            stub.select = readers[STANHIER]
            if "cmdstanpy" in engines:
                cmdstan.append(fit(data, chains, "cmdstanpy").raw.seconds)
        old, new = (np.mean(seconds[n]) for n in readers)
        same = np.array_equal(*draws.values())

        def secs(values: list[float]) -> str:
            return ", ".join(f"{v:.1f}" for v in values) or "-"

        print(f"{chains:>6}  {secs(seconds[HTTPSTAN]):>27}  {secs(seconds[STANHIER]):>27}  {old / new:>5.2f}  "
              f"{str(same):>10}  {secs(cmdstan):>12}")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end; {platform.platform()}; sampling seconds (fit.raw.seconds)")


if __name__ == "__main__":
    main()
