"""Large data: a Gaussian model with 1,000,000 rows and 1,000 groups, by lmer and by brm.

Each fit runs in its own process so that peak memory (max RSS) is its own. ``brm`` runs
twice: with ``sufficient_stats=True`` (likelihood from per-group cross-products) and
as brms writes it (per-row likelihood: 0.16 s per gradient at 1,000,000 rows).
Compile time is excluded (the structures are compiled first, on small data).

    python benchmarks/bench_large.py [--rows 1000000] [--groups 1000] [--draws 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap

CHILD = """
import json, resource, sys, time, warnings
import numpy as np, pandas as pd, stanhier as sh
warnings.simplefilter("ignore")
method, rows, groups, draws = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
param = sys.argv[5]
rng = np.random.default_rng(1)
g = rng.integers(0, groups, rows)
x = rng.normal(size=rows)
u = rng.normal(0, [2.0, 0.5], size=(groups, 2))
y = 10 + u[g, 0] + (1.5 + u[g, 1]) * x + rng.normal(0, 3, rows)
df = pd.DataFrame({"y": y, "x": x, "g": g})
formula = "y ~ x + (x | g)"
# compile once on a small slice (excluded from the timing)
small = df[df.g < 20]
if method == "lmer":
    sh.lmer(formula, small, REML=False, progress=False)
else:
    sh.brm(formula, small, chains=1, iter=20, warmup=10, seed=1, progress=False,
           sufficient_stats=(method == "brm_suffstat"), parameterization=param)
t = time.perf_counter()
if method == "lmer":
    m = sh.lmer(formula, df, REML=False, progress=False)
    est = {"fixef": m.fixef().round(4).tolist(), "logLik": round(m.logLik(), 2)}
else:
    # 1,000 rows per group: the regime where the centred parameterization samples well
    f = sh.brm(formula, df, chains=2, iter=2 * draws, warmup=draws, seed=1, progress=False,
               sufficient_stats=(method == "brm_suffstat"), parameterization=param)
    est = {"fixef": f.fixef()["Estimate"].round(4).tolist(), "max_rhat": round(f.diagnostics()["max_rhat"], 3)}
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"method": method, "parameterization": param, "seconds": round(seconds, 1), "peak_rss_mb": round(peak),
                  "peak_child_rss_mb": round(children), **est}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--groups", type=int, default=1000)
    p.add_argument("--draws", type=int, default=100, help="post-warmup draws per chain for brm (2 chains)")
    p.add_argument("--parameterization", choices=["centered", "noncentered"], default="centered")
    p.add_argument("--only", choices=["lmer", "brm_suffstat", "brm"], default=None,
                   help="one method only (default: all three; plain brm on 1e6 rows takes hours)")
    a = p.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, {cpu}")
    print(f"data: {a.rows:,} rows, {a.groups:,} groups, y ~ x + (x | g)")
    for method in ([a.only] if a.only else ["lmer", "brm_suffstat", "brm"]):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), method, str(a.rows), str(a.groups),
                              str(a.draws), a.parameterization], capture_output=True, text=True)
        if out.returncode != 0:
            print(method, "failed:", out.stderr[-2000:])
            continue
        print(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
