"""Data larger than one machine (issue 12): lmer on a Dask LocalCluster, lme4 for comparison,
and exact aggregation of a Poisson GLMM.

1. ``lmer("y ~ x1 + x2 + (x1 | g)")`` on ``--rows`` rows (default 100,000,000) and
   ``--groups`` groups (10,000), generated *inside the workers* (``dask.dataframe.from_map``:
   every partition is simulated from its own seed; the client never holds rows), fitted on a
   ``distributed.LocalCluster`` of ``--workers`` processes of this machine. Reported: wall time
   of the fit, the seconds of each pass over the data, rows per second of the statistics pass
   (the per-group cross-products) and the client process's peak RSS (target <= 1 GB).
2. The same model on ``--lme4-rows`` rows (default 10,000,000) with lme4 (``Rscript``; the
   data are simulated in R), in the same run: wall time of ``lmer`` and R's peak RSS, or lme4's
   failure.
3. A Poisson GLMM with categorical predictors on ``--count-rows`` rows (default 1,000,000),
   fitted raw (``aggregate=False``) and aggregated (automatic): logLik (equal to 1e-8) and
   times (aggregated >= 10x faster).

Each part runs in its own process so that its peak RSS is its own. Compile time is excluded
(each program is compiled first on small data).

    python benchmarks/bench_dask.py [--rows 100000000] [--partitions 200] [--groups 10000]
        [--workers 2] [--lme4-rows 10000000] [--count-rows 1000000] [--json out.json]
        [--skip lme4,counts]
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
import textwrap
import time

DASK_CHILD = """
import json, resource, sys, time, warnings
import numpy as np, pandas as pd
warnings.simplefilter("ignore")
rows, parts, groups, workers = map(int, sys.argv[1:5])
import dask.dataframe as dd
from distributed import Client, LocalCluster
import stanhier as sh

def make_partition(i, n=rows // parts, groups=groups):
    # runs in a worker: the group effects come from one fixed seed, the rows from the partition's
    u = np.random.default_rng(0).normal(0, [1.0, 0.5], size=(groups, 2))
    rng = np.random.default_rng(1000 + i)
    g = rng.integers(0, groups, n)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    y = 2.0 + u[g, 0] + (0.5 + u[g, 1]) * x1 - 0.3 * x2 + rng.normal(0, 2.0, n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": g})

formula = "y ~ x1 + x2 + (x1 | g)"
sh.lmer(formula, make_partition(0, n=20000, groups=50), REML=False)  # compile (excluded)
with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
        Client(cluster):
    ddf = dd.from_map(make_partition, list(range(parts)))
    t = time.perf_counter()
    m = sh.lmer(formula, ddf, REML=False)
    seconds = time.perf_counter() - t
    timings = {k: round(v, 2) for k, v in m.design.source.timings.items()}
    out = {"rows": m.nobs(), "partitions": parts, "groups": int(m.ngrps().iloc[0]), "workers": workers,
           "fit_seconds": round(seconds, 1), "pass_seconds": timings,
           "stats_pass_rows_per_second": round(m.nobs() / next(v for k, v in timings.items() if k.startswith("lmm"))),
           "fixef": [round(v, 5) for v in m.fixef().tolist()], "theta": [round(v, 5) for v in m.theta],
           "sigma": round(m.sigma(), 5), "logLik": round(m.logLik(), 2)}
out["client_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""

LME4_SCRIPT = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(TRUE); n <- as.numeric(args[1]); groups <- as.integer(args[2])
set.seed(1)
u1 <- rnorm(groups, 0, 1); u2 <- rnorm(groups, 0, 0.5)
g <- sample.int(groups, n, replace = TRUE)
x1 <- rnorm(n); x2 <- rnorm(n)
d <- data.frame(y = 2 + u1[g] + (0.5 + u2[g]) * x1 - 0.3 * x2 + rnorm(n, 0, 2), x1 = x1, x2 = x2, g = factor(g))
rm(g, x1, x2); invisible(gc(reset = TRUE))
t <- system.time(m <- lmer(y ~ x1 + x2 + (x1 | g), d, REML = FALSE))[["elapsed"]]
mem <- sum(gc()[, 6])  # max used since reset, MB (Ncells + Vcells)
cat(sprintf('{"rows": %.0f, "groups": %d, "fit_seconds": %.1f, "r_max_used_mb": %.0f, "fixef": [%s], "logLik": %.2f}\n',
            n, groups, t, mem, paste(sprintf("%.5f", fixef(m)), collapse = ", "), as.numeric(logLik(m))))
"""

COUNT_CHILD = """
import json, sys, time, warnings
import numpy as np, pandas as pd
warnings.simplefilter("ignore")
import stanhier as sh
rows = int(sys.argv[1])
rng = np.random.default_rng(7)
g = rng.integers(0, 50, rows); a = rng.integers(0, 4, rows); b = rng.integers(0, 3, rows)
u = rng.normal(0, 0.5, 50)
y = rng.poisson(np.exp(-0.3 + 0.25 * a - 0.2 * (b == 2) + u[g]))
df = pd.DataFrame({"y": y, "a": np.char.add("a", a.astype(str)), "b": np.char.add("b", b.astype(str)), "g": g})
formula = "y ~ a + b + (1 | g)"
sh.glmer(formula, df.iloc[:2000], family="poisson", aggregate=False)  # compile (excluded)
t = time.perf_counter(); agg = sh.glmer(formula, df, family="poisson"); t_agg = time.perf_counter() - t
t = time.perf_counter(); raw = sh.glmer(formula, df, family="poisson", aggregate=False); t_raw = time.perf_counter() - t
print(json.dumps({"rows": rows, "patterns": agg.aggregation.n_patterns, "aggregated_seconds": round(t_agg, 2),
                  "raw_seconds": round(t_raw, 2), "speedup": round(t_raw / t_agg, 1),
                  "logLik_aggregated": agg.logLik(), "logLik_raw": raw.logLik(),
                  "logLik_rel_diff": abs(agg.logLik() - raw.logLik()) / abs(raw.logLik()),
                  "fixef_max_abs_diff": float(np.max(np.abs(agg.fixef() - raw.fixef())))}))
"""


def _run(cmd: list[str], timeout: float) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:], "returncode": proc.returncode}
    out = json.loads(lines[-1])
    out["process_wall_seconds"] = round(wall, 1)
    return out


def _peak_rss_of(cmd: list[str]) -> list[str]:
    """Prefix ``cmd`` with GNU time (when present) to record the process's max RSS."""
    return ["/usr/bin/time", "-f", "MAXRSS_KB=%M"] + cmd if os.path.exists("/usr/bin/time") else cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lme4-rows", type=int, default=10_000_000)
    ap.add_argument("--count-rows", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: dask, lme4, counts")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "python": sys.version.split()[0],
                                 "load_average_start": [round(x, 2) for x in os.getloadavg()]}}
    if "dask" not in skip:
        results["dask_lmer"] = _run([sys.executable, "-c", textwrap.dedent(DASK_CHILD), str(a.rows),
                                     str(a.partitions), str(a.groups), str(a.workers)], a.timeout)
        print(json.dumps({"dask_lmer": results["dask_lmer"]}), flush=True)
    if "lme4" not in skip:
        if shutil.which("Rscript") is None:
            results["lme4"] = {"error": "Rscript not found"}
        else:
            with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
                fh.write(LME4_SCRIPT)
            cmd = _peak_rss_of(["Rscript", fh.name, str(a.lme4_rows), str(a.groups)])
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            os.unlink(fh.name)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            res = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "error": proc.stderr.strip().splitlines()[-3:], "returncode": proc.returncode}
            rss = [ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB=")]
            if rss:
                res["peak_rss_mb"] = round(int(rss[-1].split("=")[1]) / 1024)
            res["process_wall_seconds"] = round(time.perf_counter() - start, 1)
            results["lme4"] = res
        print(json.dumps({"lme4": results["lme4"]}), flush=True)
    if "counts" not in skip:
        results["poisson_aggregation"] = _run([sys.executable, "-c", textwrap.dedent(COUNT_CHILD),
                                               str(a.count_rows)], a.timeout)
        print(json.dumps({"poisson_aggregation": results["poisson_aggregation"]}), flush=True)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
