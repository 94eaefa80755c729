"""Benchmark stanhier's lmer/glmer against lme4 (Rscript) and statsmodels MixedLM, same run.

Times are medians over repeated fits of the identical call, fit only (data already
loaded, the one-time Stan compile excluded: a warm-up fit runs first). Prints the
machine, the times and the ratios stanhier / peer.

Usage::

    python benchmarks/bench_ml.py [--reps 5] [--n 100000] [--groups 1000] [--crossed yes|no|only]
    python benchmarks/bench_ml.py --crossed only --cases glmer_grouseticks   # one case

Needs ``Rscript`` with lme4 (``apt-get install r-base-core r-cran-lme4``) for the lme4
column and statsmodels for its column; a missing peer is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
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
os.environ.setdefault("STANHIER_CACHE_DIR", str(ROOT / ".pytest_cache" / "stanhier"))

from stanhier.ml.api import glmer, lmer  # noqa: E402


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def simulate(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    """y = 1 + 0.5 x + b0[g] + b1[g] x + e with correlated (b0, b1)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    cov = np.array([[1.0, 0.3 * 0.5], [0.3 * 0.5, 0.25]])
    b = rng.multivariate_normal([0, 0], cov, size=groups)
    y = 1 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(scale=2.0, size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def median_time(fun, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fun()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE); dir <- args[1]; reps <- as.integer(args[2])
sleep <- read.csv(file.path(dir, "sleepstudy.csv"))
fish <- read.csv(file.path(dir, "fish.csv"))
sim <- read.csv(file.path(dir, "sim.csv"))
tm <- function(expr) { f <- function() eval(expr); f(); median(replicate(reps, system.time(f())[["elapsed"]])) }
out <- list(
  lmer_sleepstudy = tm(quote(lmer(Reaction ~ Days + (Days | Subject), sleep, REML = FALSE))),
  glmer_poisson = tm(quote(glmer(fish_num ~ weather + temperature + (1 | id), fish, family = poisson))),
  lmer_sim = tm(quote(lmer(y ~ x + (x | g), sim, REML = FALSE)))
)
m <- lmer(y ~ x + (x | g), sim, REML = FALSE)
out$sim_logLik <- as.numeric(logLik(m))
out$lmer_sleepstudy_logLik <- as.numeric(logLik(lmer(Reaction ~ Days + (Days | Subject), sleep, REML = FALSE)))
out$glmer_poisson_logLik <- as.numeric(logLik(glmer(fish_num ~ weather + temperature + (1 | id), fish, family = poisson)))
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA))
"""


def run_lme4(folder: Path, reps: int) -> dict | None:
    if shutil.which("Rscript") is None:
        print("lme4: Rscript not found (apt-get install r-base-core r-cran-lme4)")
        return None
    script = folder / "bench.R"
    script.write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", str(script), str(folder), str(reps)], capture_output=True, text=True)
    if proc.returncode:
        print("lme4 failed:", proc.stderr[-500:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--crossed", choices=["yes", "no", "only"], default="yes",
                        help="crossed random-effects cases (InstEval, 1M-row simulation): run them too, skip, or only them")
    parser.add_argument("--no-lme4-crossed", action="store_true", help="crossed cases without the lme4 column")
    parser.add_argument("--cases", nargs="*", default=None, help=f"crossed cases to run (of {', '.join(CROSSED)})")
    parser.add_argument("--backend", default="auto", help="backend of the small cases (default: what users get)")
    args = parser.parse_args()
    print("Machine:", machine())
    if args.crossed == "only":
        run_crossed(args.no_lme4_crossed, args.cases)
        return

    sleep = pd.read_csv(ROOT / "tests" / "data" / "sleepstudy.csv")
    fish = pd.read_csv(ROOT / "tests" / "data" / "fish.csv")
    fish["weather"] = (fish["weather"] == "sunny").astype(int)
    sim = simulate(args.n, args.groups)

    cases = {
        "lmer_sleepstudy": lambda: lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False, backend=args.backend),
        "glmer_poisson": lambda: glmer("fish_num ~ weather + temperature + (1 | id)", fish, family="poisson",
                                       backend=args.backend),
        "lmer_sim": lambda: lmer("y ~ x + (x | g)", sim, REML=False, backend=args.backend),
    }
    labels = {"lmer_sleepstudy": "lmer sleepstudy (Days|Subject), ML",
              "glmer_poisson": "glmer Poisson fish (1|id), Laplace, 100 groups",
              "lmer_sim": f"lmer simulated N={args.n:,}, {args.groups:,} groups (x|g), ML"}

    ours, extra = {}, {}
    for key, fun in cases.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fun()  # warm-up: compiles (or loads) the program once
        first = time.perf_counter() - start
        extra[key] = dict(first=first, compile=fit.compile_seconds, cache_hit=fit.cache_hit, logLik=fit.logLik(),
                          evaluator=fit.evaluator.split(":")[0], n_evals=fit.optimum.n_evals)
        ours[key] = median_time(fun, args.reps)

    sm = {}
    try:
        import statsmodels.formula.api as smf

        def sm_sleep():
            return smf.mixedlm("Reaction ~ Days", sleep, groups=sleep["Subject"], re_formula="~Days").fit(reml=False)

        def sm_sim():
            return smf.mixedlm("y ~ x", sim, groups=sim["g"], re_formula="~x").fit(reml=False)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm["lmer_sleepstudy"] = median_time(sm_sleep, args.reps)
            sm["lmer_sim"] = median_time(sm_sim, max(1, min(args.reps, 3)))
            sm["sim_logLik"] = float(sm_sim().llf)
    except ImportError:
        print("statsmodels not installed: no MixedLM column")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sleep.to_csv(folder / "sleepstudy.csv", index=False)
        fish.to_csv(folder / "fish.csv", index=False)
        sim.to_csv(folder / "sim.csv", index=False)
        r = run_lme4(folder, args.reps)

    print()
    print(f"{'case':58s} {'stanhier':>9s} {'lme4':>9s} {'ratio':>7s} {'MixedLM':>9s} {'ratio':>7s}")
    for key in cases:
        lme = r.get(key) if r else None
        smt = sm.get(key)
        row = f"{labels[key]:58s} {ours[key]:9.3f}"
        row += f" {lme:9.3f} {ours[key] / lme:7.2f}" if lme else f" {'n/a':>9s} {'':>7s}"
        row += f" {smt:9.3f} {ours[key] / smt:7.2f}" if smt else f" {'n/a':>9s} {'':>7s}"
        print(row)
    print("(seconds, median of repeated fits; ratio = stanhier / peer; MixedLM has no Laplace GLMM)")
    print()
    for key, e in extra.items():
        print(f"{key}: first call {e['first']:.2f} s (compile {e['compile']:.1f} s, cache hit {e['cache_hit']}), "
              f"logLik {e['logLik']:.3f}, {e['n_evals']} evaluations; evaluator: {e['evaluator']}")
    if r:
        print(f"lme4 logLik: sleepstudy {r['lmer_sleepstudy_logLik']:.3f}, fish {r['glmer_poisson_logLik']:.3f}, "
              f"simulated {r['sim_logLik']:.3f}")
    if "sim_logLik" in sm:
        print(f"MixedLM logLik (simulated): {sm['sim_logLik']:.3f}")
    if args.crossed == "yes":
        run_crossed(args.no_lme4_crossed, args.cases)


# --------------------------------------------------------------------------- crossed (issue 11)
# Large crossed designs: each case runs in its own process (ours: ``--case NAME``; lme4: one
# Rscript per case) so that peak RSS is the case's own; one fit each (lme4 takes minutes).
CROSSED = {
    "insteval_ML": ("y ~ service + (1 | s) + (1 | d)", "insteval", False),
    "insteval_REML": ("y ~ service + (1 | s) + (1 | d)", "insteval", True),
    "insteval_full_ML": ("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", "insteval", False),
    "sim_crossed_1M": ("y ~ x + (1 | a) + (1 | b)", "sim1m", False),
    "glmer_poisson_crossed": ("y ~ x + (1 | a) + (1 | b)", "simpois", None),  # None: glmer, Poisson, Laplace
    # lme4's grouseticks (tests/data/grouseticks.csv, written from lme4): three crossed/nested
    # intercepts with 403 + 118 + 63 levels; issue 13 measured 147 s here against lme4's ~1 s
    "glmer_grouseticks": ("TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)", "grouseticks",
                          None),
}
SIMPOIS_TRUTH = {"a": 0.6, "b": 0.4, "(Intercept)": 0.3, "x": 0.4}
SIM1M_TRUTH = {"a": 0.8, "b": 0.5, "Residual": 1.0, "(Intercept)": 1.0, "x": 0.5}

R_CROSSED = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE); file <- args[1]; form <- as.formula(args[2]); reml <- as.logical(args[3])
d <- read.csv(file)
for (v in intersect(c("s", "d", "dept", "service", "a", "b", "INDEX", "BROOD", "YEAR", "LOCATION"), names(d)))
  d[[v]] <- factor(d[[v]])
t <- system.time(m <- if (is.na(reml)) glmer(form, d, family = poisson) else lmer(form, d, REML = reml))[["elapsed"]]
vc <- as.data.frame(VarCorr(m))
mem <- as.numeric(strsplit(grep("VmHWM", readLines("/proc/self/status"), value = TRUE), "[ \t]+")[[1]][2]) / 1024
cat(jsonlite::toJSON(list(seconds = t, logLik = as.numeric(logLik(m)), fixef = unname(fixef(m)),
    sd = as.list(setNames(vc$sdcor, vc$grp)), peak_mb = mem), auto_unbox = TRUE, digits = NA))
"""


def simulate_crossed(n: int = 1_000_000, n_a: int = 10_000, n_b: int = 2_000, seed: int = 11) -> pd.DataFrame:
    """y = 1 + 0.5 x + a[i] + b[j] + e, SDs 0.8, 0.5, 1 (``SIM1M_TRUTH``), crossed factors."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_a, n)
    b = rng.integers(0, n_b, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + rng.normal(scale=0.8, size=n_a)[a] + rng.normal(scale=0.5, size=n_b)[b]
         + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "a": a, "b": b})


def simulate_poisson_crossed(n: int = 40_000, n_a: int = 1_600, n_b: int = 400, seed: int = 12) -> pd.DataFrame:
    """Poisson log mu = 0.3 + 0.4 x + a[i] + b[j], SDs 0.6 and 0.4 (``SIMPOIS_TRUTH``): 2,000 levels."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_a, n)
    b = rng.integers(0, n_b, n)
    x = rng.normal(size=n)
    eta = 0.3 + 0.4 * x + rng.normal(scale=0.6, size=n_a)[a] + rng.normal(scale=0.4, size=n_b)[b]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "a": a, "b": b})


def crossed_data(name: str) -> pd.DataFrame:
    if name == "grouseticks":  # factors as lme4 has them (YEAR 95 is the baseline)
        return pd.read_csv(ROOT / "tests" / "data" / "grouseticks.csv",
                           dtype={"INDEX": str, "BROOD": str, "YEAR": str, "LOCATION": str})
    if name == "insteval":
        return pd.read_csv(ROOT / "tests" / "data" / "InstEval.csv")
    if name == "simpois":
        return simulate_poisson_crossed()
    return simulate_crossed()


def run_case(key: str) -> None:
    """One crossed case in this process; prints a JSON line (time, estimates, peak RSS)."""
    import resource

    formula, data_name, reml = CROSSED[key]
    df = crossed_data(data_name)
    start = time.perf_counter()
    fit = glmer(formula, df, family="poisson") if reml is None else lmer(formula, df, REML=reml)
    seconds = time.perf_counter() - start
    vc = fit.VarCorr()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(seconds=seconds, logLik=fit.logLik(), fixef=fit.fixef().tolist(),
                          sd=dict(zip(vc["grp"], vc["sdcor"])), peak_mb=peak_mb,
                          evaluator=getattr(fit, "evaluator", "stan"), n_evals=fit.optimum.n_evals)))


def run_crossed(skip_lme4: bool, only: list[str] | None = None) -> None:
    print()
    print("Crossed random effects (issue 11): one fit per case, each in its own process")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "crossed.R").write_text(R_CROSSED)
        files = {"insteval": ROOT / "tests" / "data" / "InstEval.csv",
                 "grouseticks": ROOT / "tests" / "data" / "grouseticks.csv"}
        for key, (formula, data_name, reml) in CROSSED.items():
            if only and key not in only:
                continue
            proc = subprocess.run([sys.executable, __file__, "--case", key], capture_output=True, text=True)
            if proc.returncode:
                print(f"{key}: stanhier failed: {proc.stderr[-800:]}")
                continue
            ours = json.loads(proc.stdout.strip().splitlines()[-1])
            lme = None
            if not skip_lme4 and shutil.which("Rscript"):
                if data_name not in files:
                    files[data_name] = folder / f"{data_name}.csv"
                    crossed_data(data_name).to_csv(files[data_name], index=False)
                rp = subprocess.run(["Rscript", str(folder / "crossed.R"), str(files[data_name]), formula,
                                     "NA" if reml is None else str(reml).upper()], capture_output=True, text=True)
                if rp.returncode:
                    print(f"{key}: lme4 failed: {rp.stderr[-500:]}")
                else:
                    lme = json.loads(rp.stdout.strip().splitlines()[-1])
            rows.append((key, formula, reml, ours, lme))
    print(f"{'case':18s} {'stanhier s':>10s} {'lme4 s':>8s} {'ratio':>6s} {'RSS MB':>7s} {'lme4 MB':>8s} "
          f"{'dlogLik':>9s} {'max rel dfixef':>14s} {'max rel dSD':>11s}")
    for key, formula, reml, ours, lme in rows:
        line = f"{key:18s} {ours['seconds']:10.2f}"
        if lme:
            fe = np.max(np.abs(np.subtract(ours["fixef"], lme["fixef"])) / np.abs(lme["fixef"]))
            sd = max(abs(ours["sd"][g] / v - 1) for g, v in lme["sd"].items() if g in ours["sd"])
            line += (f" {lme['seconds']:8.2f} {ours['seconds'] / lme['seconds']:6.2f} {ours['peak_mb']:7.0f}"
                     f" {lme['peak_mb']:8.0f} {ours['logLik'] - lme['logLik']:9.2e} {fe:14.2e} {sd:11.2e}")
        else:
            line += f" {'n/a':>8s} {'':>6s} {ours['peak_mb']:7.0f}"
        print(line)
    for key, formula, reml, ours, lme in rows:
        print(f"{key}: {formula} REML={reml}: logLik {ours['logLik']:.4f}"
              + (f" (lme4 {lme['logLik']:.4f})" if lme else "") + f", SDs "
              + ", ".join(f"{g} {v:.4f}" for g, v in ours["sd"].items())
              + f", {ours['n_evals']} evaluations; evaluator: {ours['evaluator'].split(':')[0]}")
    sim = next((r for r in rows if r[0] == "sim_crossed_1M"), None)
    if sim:
        print("simulated truth: SD a 0.8, b 0.5, residual 1.0; fixef (1, 0.5); "
              f"peak RSS {sim[3]['peak_mb'] / 1024:.2f} GB (limit 4 GB)")
    if any(r[0] == "glmer_grouseticks" for r in rows):
        print("grouseticks: lme4's data set, 403 rows; INDEX (403 levels, one per row), BROOD (118), LOCATION (63)")
    if any(r[0] == "glmer_poisson_crossed" for r in rows):
        print("Poisson simulated truth: SD a 0.6, b 0.4; fixef (0.3, 0.4); 1,600 x 400 levels, 40,000 rows")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        warnings.simplefilter("ignore")
        run_case(sys.argv[2])
    else:
        main()
