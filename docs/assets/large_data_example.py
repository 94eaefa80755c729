"""The worked example of docs/large_data.md, run as written; its output is pasted into the page.

    python docs/assets/large_data_example.py > docs/assets/large_data_example.txt

Simulates 2,000,000 rows in 20 Parquet files, starts a LocalCluster of 2 worker processes,
fits lmer and brm's data on the Parquet glob and on the same rows in pandas, and prints
the numbers the page quotes (timings vary with the machine; estimates do not).
"""

from __future__ import annotations

import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def simulate(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    u = rng.normal(0, [1.0, 0.5], size=(groups, 2))
    y = 2 + u[g, 0] + (0.5 + u[g, 1]) * x1 - 0.3 * x2 + rng.normal(0, 2.0, n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "school": np.char.add("s", g.astype(str))})


def main() -> None:
    warnings.simplefilter("ignore")
    import stanhier as sh
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="stanhier-large-") as tmp:  # removed afterwards
        run(Path(tmp), sh, Client, LocalCluster)


def run(folder: Path, sh, Client, LocalCluster) -> None:
    df = simulate(2_000_000, 1000)
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 20)):
        df.iloc[rows].to_parquet(folder / f"part-{i:02d}.parquet")
    formula = "y ~ x1 + x2 + (x1 | school)"
    sh.lmer(formula, df.iloc[:20000])  # compile once (not timed)

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        # --- the example of the page
        t = time.perf_counter()
        m = sh.lmer(formula, str(folder / "*.parquet"))
        t_dask = time.perf_counter() - t
        print(m)
        print("passes (s):", {k: round(v, 2) for k, v in m.design.source.timings.items()})
        t = time.perf_counter()
        data_dask = sh.make_standata(formula, str(folder / "*.parquet"))
        t_brm_data = time.perf_counter() - t
    t = time.perf_counter()
    m_pd = sh.lmer(formula, df)
    t_pandas = time.perf_counter() - t
    data_pd = sh.make_standata(formula, df)
    rel = np.max(np.abs(m.fixef().to_numpy() / m_pd.fixef().to_numpy() - 1))
    same = all(np.array_equal(np.asarray(data_pd[k]), np.asarray(data_dask[k])) for k in data_pd)
    print(f"lmer on the Parquet glob: {t_dask:.1f} s; on the pandas frame: {t_pandas:.1f} s")
    print(f"largest relative difference of the fixed effects: {rel:.1e}")
    print(f"brm's data dict from Dask ({t_brm_data:.1f} s) identical to pandas': {same}")
    print(f"client peak RSS (this process, pandas copy included): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
