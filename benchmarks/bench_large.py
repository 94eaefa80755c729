"""Large data: a Gaussian model with 1,000,000 rows and 1,000 groups, by lmer and by brm.

Each fit runs in its own process so that peak memory (max RSS) is its own. ``brm`` runs
with its default (group-level effects integrated out, ``brm_marginal.stan``: the
likelihood from per-group cross-products, then exact conditional draws of every
``r``) and, with ``--only brm``, as brms writes it (``marginalize=False``: per-row
likelihood, 0.16 s per gradient at 1,000,000 rows — hours). Compile time is excluded
(the structures are compiled first, on small data). Acceptance (issue 10): 4 chains x
1,000 post-warmup draws, max Rhat <= 1.01, min bulk ESS >= 400, <= 60 s wall, peak RSS <= 2 GB.

    python benchmarks/bench_large.py [--rows 1000000] [--groups 1000] [--draws 1000] [--chains 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time

CHILD = """
import json, resource, sys, time, warnings
import numpy as np, pandas as pd, stanhier as sh
warnings.simplefilter("ignore")
method, rows, groups, draws = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
param, chains = sys.argv[5], int(sys.argv[6])
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
           marginalize=(method == "brm_marginal"), parameterization=param)
t = time.perf_counter()
if method == "lmer":
    m = sh.lmer(formula, df, REML=False, progress=False)
    est = {"fixef": m.fixef().round(4).tolist(), "logLik": round(m.logLik(), 2)}
else:
    f = sh.brm(formula, df, chains=chains, iter=2 * draws, warmup=draws, seed=1, progress=False,
               marginalize=(method == "brm_marginal"), parameterization=param)
    d = f.diagnostics()
    est = {"fixef": f.fixef()["Estimate"].round(4).tolist(), "max_rhat": round(d["max_rhat"], 4),
           "min_bulk_ess": round(d["min_bulk_ess"]), "divergent": d["divergent_transitions"],
           "sample_seconds": round(f.sample_seconds, 1), "chains": chains, "draws_per_chain": draws}
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
    p.add_argument("--draws", type=int, default=1000, help="post-warmup draws per chain for brm")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--parameterization", choices=["auto", "centered", "noncentered"], default="auto",
                   help="for --only brm (brms's program)")
    p.add_argument("--only", choices=["lmer", "brm_marginal", "brm"], default=None,
                   help="one method only (default: lmer and brm_marginal; plain brm on 1e6 rows takes hours)")
    a = p.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, {cpu}")
    print(f"data: {a.rows:,} rows, {a.groups:,} groups, y ~ x + (x | g)")
    for method in ([a.only] if a.only else ["lmer", "brm_marginal"]):
        # the machine may be shared: its load before and after each timed fit is part of the record
        load = "load %.2f %.2f %.2f" % os.getloadavg()
        start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), method, str(a.rows), str(a.groups),
                              str(a.draws), a.parameterization, str(a.chains)], capture_output=True, text=True)
        if out.returncode != 0:
            print(method, "failed:", out.stderr[-2000:])
            continue
        print(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  ({start}; before: {load}; after: " + "load %.2f %.2f %.2f" % os.getloadavg() + ")")


if __name__ == "__main__":
    main()
