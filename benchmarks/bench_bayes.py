"""brms (via Rscript) against stanhier's ``brm`` on the same machine, in the same run.

For each case both programs are compiled first (excluded), then sampled with brms's
defaults (4 chains, iter 2000, warmup 1000; ``cores`` as given) and timed: sampling
wall time and min bulk ESS over the parameters brms prints, per second. brms refits
with ``update(fit, recompile = FALSE, seed = ...)``; stanhier uses its defaults
(Gaussian: group-level effects integrated out; others: ``parameterization="auto"``).

    python benchmarks/bench_bayes.py [--cases sleepstudy,fish,germination] [--seeds 1] [--cores 2] [--json out.json]

``--json``: also write the results (machine, load averages, every run) to that file;
docs/assets/render_comparison.py renders docs/comparison.md's benchmark tables from
``docs/assets/bench_bayes_results.json`` (brms against stanhier) and
``docs/assets/bench_bayes_seeds.json`` (``--cases fish --seeds 1,2,3,4,5 --no-brms``).

Needs R with brms (``Rscript``). On a shared machine, say so next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import stanhier as sh  # noqa: E402
from stanhier.bayes.parameterization import term_choices  # noqa: E402

DATA = ROOT / "tests" / "data"

CASES = {
    "sleepstudy": dict(formula="Reaction ~ Days + (Days | Subject)", family="gaussian", data="sleepstudy",
                       r_family="gaussian()", prep=""),
    "fish": dict(formula="fish_num ~ 1 + temperature + (temperature | weather)", family="poisson", data="fish",
                 r_family="poisson()", prep='d$weather <- as.integer(d$weather == "sunny")'),
    "germination": dict(formula="cbind(germination, fail) ~ solar + (1 | nutrition)", family="binomial",
                        data="germination", r_family="binomial()", prep="d$fail <- d$size - d$germination",
                        r_formula="germination | trials(size) ~ solar + (1 | nutrition)"),
}

R_SCRIPT = r"""
suppressMessages({library(brms); library(posterior)})
if (dir.exists("/usr/include/boost")) rstan::rstan_options(boost_lib = "/usr/include")
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1]); formula <- args[2]; fam <- eval(parse(text = args[3])); prep <- args[4]
seeds <- as.integer(strsplit(args[5], ",")[[1]]); cores <- as.integer(args[6]); out <- args[7]
if (nchar(prep)) eval(parse(text = prep))
t0 <- Sys.time()
fit0 <- brm(as.formula(formula), data = d, family = fam, chains = 0, silent = 2, refresh = 0)
compile <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
res <- list()
for (s in seeds) {
  t <- Sys.time()
  fit <- update(fit0, recompile = FALSE, chains = 4, iter = 2000, warmup = 1000, cores = cores, seed = s,
                silent = 2, refresh = 0)
  wall <- as.numeric(difftime(Sys.time(), t, units = "secs"))
  dr <- as_draws_df(fit)
  keep <- grep("^(b_|sd_|cor_|sigma$|shape$)", variables(dr), value = TRUE)
  sm <- summarise_draws(subset_draws(dr, variable = keep), "rhat", "ess_bulk")
  np <- nuts_params(fit)
  res[[length(res) + 1]] <- list(seed = s, wall = wall, min_ess_bulk = min(sm$ess_bulk), max_rhat = max(sm$rhat),
                                 divergent = sum(np$Value[np$Parameter == "divergent__"]))
}
writeLines(jsonlite::toJSON(list(compile = compile, runs = res), auto_unbox = TRUE), out)
"""


def load(name: str) -> pd.DataFrame:
    df = pd.read_csv(DATA / f"{name}.csv")
    if name == "fish":
        df["weather"] = (df["weather"] == "sunny").astype(int)
    if name == "germination":
        df["fail"] = df["size"] - df["germination"]
    return df


def run_brms(case: dict, seeds: list[int], cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.R"
        script.write_text(R_SCRIPT)
        out = Path(tmp) / "out.json"
        cmd = ["Rscript", str(script), str(DATA / f"{case['data']}.csv"), case.get("r_formula", case["formula"]),
               case["r_family"], case["prep"], ",".join(map(str, seeds)), str(cores), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr[-1500:]}
        return json.loads(out.read_text())


def run_stanhier(case: dict, seeds: list[int], cores: int) -> dict:
    df = load(case["data"])
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    sh.brm(case["formula"], df, case["family"], chains=1, iter=20, warmup=10, seed=1, progress=False)
    compile_s = time.perf_counter() - t
    runs = []
    for s in seeds:
        t = time.perf_counter()
        fit = sh.brm(case["formula"], df, case["family"], chains=4, iter=2000, warmup=1000, seed=s,
                     cores=cores, progress=False)
        wall = time.perf_counter() - t
        d = fit.diagnostics()
        table = fit.summary_table()
        runs.append({"seed": s, "wall": wall, "sample_seconds": fit.sample_seconds,
                     "min_ess_bulk": d["min_bulk_ess"], "min_ess_tail": d["min_tail_ess"], "max_rhat": d["max_rhat"],
                     "divergent": d["divergent_transitions"],
                     "treatment": [c.choice for c in term_choices(fit.spec)],
                     "mean": table["Estimate"].to_dict(), "sd": table["Est.Error"].to_dict()})
    return {"compile": compile_s, "runs": runs}


def long_reference(case: dict, iters: int, cores: int) -> dict:
    """A long centred run (4 chains x ``iters`` post-warmup draws) of the same model: the posterior
    the default fits are checked against (issue 10: within 0.1 posterior SD)."""
    df = load(case["data"])
    fit = sh.brm(case["formula"], df, case["family"], chains=4, iter=2 * iters, warmup=iters, seed=99,
                 cores=cores, progress=False, parameterization="centered", control={"adapt_delta": 0.99})
    table = fit.summary_table()
    d = fit.diagnostics()
    return {"mean": table["Estimate"].to_dict(), "sd": table["Est.Error"].to_dict(),
            "divergent": d["divergent_transitions"], "max_rhat": d["max_rhat"], "min_ess_bulk": d["min_bulk_ess"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="sleepstudy,fish,germination")
    p.add_argument("--seeds", default="1")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--no-brms", action="store_true", help="stanhier only")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--long", type=int, default=0, metavar="ITERS",
                   help="also a long centred run (4 chains x ITERS draws) to check the default fits' posterior against")
    a = p.parse_args()
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "load_average_start": round(os.getloadavg()[0], 1)},
                     "settings": {"chains": 4, "iter": 2000, "warmup": 1000, "cores": a.cores}, "cases": {}}
    seeds = [int(s) for s in a.seeds.split(",")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, {cpu}; load average {os.getloadavg()[0]:.1f}")
    for name in a.cases.split(","):
        case = CASES[name]
        ours = run_stanhier(case, seeds, a.cores)
        theirs = {"runs": []} if a.no_brms else run_brms(case, seeds, a.cores)
        print(f"\n{name}: {case['formula']} ({case['family']})")
        for who, res in (("stanhier", ours), ("brms", theirs)):
            if "error" in res:
                print(f"  {who}: failed: {res['error']}")
                continue
            for r in res["runs"]:
                rate = r["min_ess_bulk"] / r["wall"]
                print(f"  {who:8s} seed {r['seed']}: wall {r['wall']:6.1f} s, min bulk ESS {r['min_ess_bulk']:7.0f}, "
                      f"ESS/s {rate:8.1f}, max Rhat {r['max_rhat']:.3f}, divergent {r['divergent']}"
                      + (f", {'/'.join(r['treatment'])}" if r.get("treatment") else ""))
        results["cases"][name] = {"formula": case["formula"], "family": case["family"], "stanhier": ours,
                                  "brms": theirs}
        if a.long:
            ref = long_reference(case, a.long, a.cores)
            print(f"  long centred run, 4 x {a.long} draws, adapt_delta 0.99: divergent {ref['divergent']}, "
                  f"max Rhat {ref['max_rhat']:.3f}, min bulk ESS {ref['min_ess_bulk']:.0f}")
            for r in ours["runs"]:
                dev = {k: abs(r["mean"][k] - ref["mean"][k]) / ref["sd"][k] for k in ref["mean"]}
                worst = max(dev, key=dev.get)
                print(f"    seed {r['seed']}: max |mean - long mean| / posterior SD = {dev[worst]:.3f} ({worst})")
                r["max_sd_from_long"] = dev[worst]
            results["cases"][name]["long_centred"] = ref
        if ours["runs"] and theirs.get("runs"):
            a_rate = np.median([r["min_ess_bulk"] / r["wall"] for r in ours["runs"]])
            b_rate = np.median([r["min_ess_bulk"] / r["wall"] for r in theirs["runs"]])
            print(f"  min bulk ESS/s, stanhier / brms: {a_rate / b_rate:.1f}x")
    if a.json:
        results["machine"]["load_average_end"] = round(os.getloadavg()[0], 1)
        Path(a.json).write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
