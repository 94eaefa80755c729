"""Compile time and time per gradient of the generated code for correlated group-level terms,
this checkout against another (``--against``): the conditional treatment with 3 coefficients
per level, and the non-centred and centred programs of ``(x | g)``.

For each structure, both versions' programs are generated from the same data (the other
checkout through a child process with its PYTHONPATH), and

* compiled once each as one translation unit with the installation's precompiled header, in a
  scratch cache (compiler CPU-s: user + sys of the compiler processes);
* evaluated at 10 random unconstrained points: the largest relative difference in log density
  and gradient between the versions is printed (rounding only, if they compute the same);
* sampled with one chain, the same seed and warmup, and ``n`` then ``2 n`` iterations after it:
  the difference in seconds divided by the leapfrog steps of iterations ``n + 1 .. 2 n`` is the
  time per gradient (``bench_gradient.seconds_per_gradient``); the fastest of ``--reps`` counts.

    python benchmarks/bench_terms.py --against <checkout> [--levels 1500] [--rows 3000] [--reps 3]

Recorded runs are in benchmarks/results/compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compile import _children_cpu  # noqa: E402
from bench_gradient import report, seconds_per_gradient  # noqa: E402

STRUCTURES = [  # name, formula, parameterization
    ("conditional, 3 coefficients", "y ~ x + x2 + (x + x2 | g)", "conditional"),
    ("non-centred, 2 coefficients", "y ~ x + (x | g)", "noncentered"),
    ("centred, 2 coefficients", "y ~ x + (x | g)", "centered"),
]

GENERATE = """
import json, os, sys, pandas as pd
# the other checkout, not this environment's editable install (whose import hook comes first)
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[4])
import stanhier
assert os.path.realpath(stanhier.__file__).startswith(os.path.realpath(sys.argv[4])), stanhier.__file__
from stanhier.stan.codegen import build_model
df = pd.read_csv(sys.argv[1])
print(json.dumps(build_model(sys.argv[2], df, "poisson", parameterization=sys.argv[3]).code))
"""


def _data(levels: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    g = rng.integers(0, levels, rows)
    x, x2 = rng.normal(size=rows), rng.normal(size=rows)
    u = rng.multivariate_normal([0, 0, 0], np.diag([0.09, 0.04, 0.04]) + 0.01, levels)
    eta = 0.5 + u[g, 0] + (0.3 + u[g, 1]) * x + (-0.2 + u[g, 2]) * x2
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "x2": x2, "g": g})


def _compile_cpu(code: str) -> float:
    from stanhier.backends import toolchain

    flags = toolchain.compile_flags()
    name = toolchain.model_name_for(code)
    cpp, _ = toolchain.stanc(code, name)
    before = _children_cpu()
    toolchain.model_objects(code, name, flags, toolchain.precompiled_header(flags), cpp=cpp)
    return _children_cpu() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="another stanhier checkout (the 'before')")
    parser.add_argument("--levels", type=int, default=1500)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--n", type=int, default=400, help="iterations after warmup of the shorter run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="stanhier-bench-terms-"))
    from stanhier import cache

    home_pch = cache.cache_dir() / "pch"  # the installation's precompiled header, not rebuilt
    os.environ["STANHIER_CACHE_DIR"] = str(scratch)
    os.environ["STANHIER_SPLIT"] = "0"
    (scratch / "pch").symlink_to(home_pch, target_is_directory=True)
    import stanhier as sh
    from stanhier.backends import SampleSettings
    from stanhier.stan.codegen import build_model

    df = _data(args.levels, args.rows)
    csv = scratch / "data.csv"
    df.to_csv(csv, index=False)
    rows = []
    try:
        for name, formula, parameterization in STRUCTURES:
            spec = build_model(formula, df, "poisson", parameterization=parameterization)
            other = subprocess.run([sys.executable, "-c", GENERATE, str(csv), formula, parameterization, args.against],
                                   capture_output=True, text=True, check=True)
            codes = {"before": json.loads(other.stdout.strip().splitlines()[-1]), "after": spec.code}
            cpu = {label: _compile_cpu(code) for label, code in codes.items()}
            models = {label: sh.backends.get_backend("pystan").compile(code, progress=False)
                      for label, code in codes.items()}
            dens = {label: m.log_density(spec.standata()) for label, m in models.items()}
            thetas = np.random.default_rng(2).normal(0, 0.5, (10, dens["after"].n_params))
            pairs = [(dens["before"].log_prob_grad(t, True), dens["after"].log_prob_grad(t, True)) for t in thetas]
            d_lp = max(abs(a[0] - b[0]) / abs(a[0]) for a, b in pairs)
            d_grad = max(float(np.max(np.abs(a[1] - b[1]) / np.maximum(1, np.abs(a[1])))) for a, b in pairs)
            us = {}
            for label, model in models.items():
                def run(iters: int, rep: int, model=model) -> tuple[float, np.ndarray]:
                    settings = SampleSettings(chains=1, iter=300 + iters, warmup=300, seed=3 + rep, progress=False)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        start = time.perf_counter()
                        fit = model.sample(spec.standata(), settings)
                    return time.perf_counter() - start, np.asarray(fit.stats["n_leapfrog__"]).ravel()

                us[label] = 1e6 * seconds_per_gradient(run, args.n, args.reps)[0]
            rows.append({"structure": name, "compile CPU-s before": round(cpu["before"], 1),
                         "after": round(cpu["after"], 1), "ratio": round(cpu["after"] / cpu["before"], 2),
                         "us/gradient before": round(us["before"], 1), "after ": round(us["after"], 1),
                         "ratio ": round(us["after"] / us["before"], 3),
                         "max rel diff lp": f"{d_lp:.1e}", "grad": f"{d_grad:.1e}"})
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(rows, f"Poisson, {args.levels} levels, {args.rows} rows; one chain, 300 warmup, n = {args.n}; "
           f"fastest of {args.reps}", args.json)


if __name__ == "__main__":
    main()
