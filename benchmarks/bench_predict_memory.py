"""Peak memory of a chunked ``predict`` (summaries of ``posterior_predict``) on large new data.

The full ``(draws, rows)`` array of 4,000 draws x 1,000,000 rows would be 32 GB of
float64. ``fit.predict(newdata, summary=True)`` works through the rows in chunks of
about ``CHUNK_ELEMENTS / draws`` rows, so its peak memory is the chunk plus the
(rows x 4) result. This script fits sleepstudy ``Reaction ~ Days + (Days | Subject)``
(4 chains x 1000 draws, the compiled program comes from the cache), builds ``--rows``
rows of new data (10% of them from new subjects, ``allow_new_levels=True``) and reports
the peak traced by ``tracemalloc`` and the process's maximum RSS.

Usage::

    python benchmarks/bench_predict_memory.py --rows 1000000 --ndraws 4000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import stanhier as sh
    from stanhier.bayes.predict import CHUNK_ELEMENTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ndraws", type=int, default=4000)
    ap.add_argument("--chunk-size", type=int, default=None)
    args = ap.parse_args()

    sleep = pd.read_csv(ROOT / "tests" / "data" / "sleepstudy.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sh.brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=4, iter=2000,
                     warmup=1000, seed=1, progress=False)
    rng = np.random.default_rng(1)
    subjects = np.array(sorted(sleep["Subject"].unique()))
    subj = rng.choice(subjects, size=args.rows)
    new = rng.random(args.rows) < 0.1
    subj = np.where(new, 10_000 + rng.integers(0, 50, size=args.rows), subj)
    newdata = pd.DataFrame({"Days": rng.uniform(0, 9, size=args.rows), "Subject": subj})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = newdata.memory_usage(deep=True).sum() / 2**20

    tracemalloc.start()
    t0 = time.perf_counter()
    out = fit.predict(newdata, allow_new_levels=True, ndraws=args.ndraws, chunk_size=args.chunk_size, seed=1)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    full_gb = args.ndraws * args.rows * 8 / 1e9
    chunk = args.chunk_size or max(1, CHUNK_ELEMENTS // args.ndraws)
    print(f"rows={args.rows:,} draws={args.ndraws} chunk_size={chunk} rows")
    print(f"full (draws x rows) float64 array would be: {full_gb:.1f} GB")
    print(f"newdata frame: {base:.0f} MB; result table: {out.memory_usage().sum() / 2**20:.0f} MB")
    print(f"tracemalloc peak during predict(): {peak / 2**20:.0f} MB")
    print(f"max RSS before predict: {rss0:.0f} MB, after: {rss1:.0f} MB")
    print(f"time: {seconds:.1f} s")
    print(out.head())


if __name__ == "__main__":
    main()
