"""The seed example: how many fish, by temperature, with weather as a grouping factor.

Fits ``fish_num ~ 1 + temperature + (temperature | weather)`` (Poisson) with
``brm`` (brms's settings: 4 chains, iter 4000, warmup 2000, seed 1) and with
``glmer`` (maximum likelihood, Laplace), prints both summaries, and saves the
generated Stan programs. When the default (brms's non-centred) run shows the
funnel problems brms also has on these data, it refits with
``parameterization="centered"`` and prints that summary too.

Run:  bash scripts/main.sh            (or: python examples/fish.py --out runs/fish)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

import stanhier as sh

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fish", help="folder for the .stan file (default runs/fish)")
    parser.add_argument("--iter", type=int, default=4000)
    parser.add_argument("--chains", type=int, default=4)
    args = parser.parse_args()
    # diagnostics are printed in each summary; don't repeat them as Python warnings
    warnings.simplefilter("ignore", sh.StanhierWarning)

    fish = pd.read_csv(HERE / "fish.csv")
    fish["weather"] = (fish["weather"] == "sunny").astype(int)  # 1 = sunny, 0 = otherwise
    fish.attrs["name"] = "fish"  # the name summaries print after 'Data:'
    formula = "fish_num ~ 1 + temperature + (temperature | weather)"

    start = time.perf_counter()
    print(f"brm: {formula} (Poisson), {args.chains} chains x {args.iter} iterations, seed 1 "
          "(the first run compiles the Stan program once)...", flush=True)
    fit = sh.brm(formula, data=fish, family="poisson", chains=args.chains, iter=args.iter,
                 warmup=args.iter // 2, seed=1)  # progress (compiling, sampling) on stderr
    print(fit)
    print(f"\n(compile {'cache hit' if fit.cache_hit else f'{fit.compile_seconds:.1f} s'}, "
          f"sampling {fit.sample_seconds:.1f} s, total {time.perf_counter() - start:.1f} s)")

    diag = fit.diagnostics()
    if diag["divergent_transitions"] or diag["max_rhat"] > 1.01:
        print("\n" + "=" * 78)
        print(f"The default (non-centred, as brms) run had {diag['divergent_transitions']} divergent "
              f"transitions and max Rhat {diag['max_rhat']:.2f}: weather has only 2 levels with 50 counts "
              "each,\nthe case for the centred parameterization. The same model, centred:\n")
        fit = sh.brm(formula, data=fish, family="poisson", chains=args.chains, iter=args.iter,
                     warmup=args.iter // 2, seed=1, parameterization="centered")
        print(fit)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stan_file = out / "fish_brm.stan"
    stan_file.write_text(fit.stancode())
    print(f"Stan program saved to {stan_file.resolve()}")

    if hasattr(sh, "glmer"):
        print("\n" + "=" * 78 + "\nThe same model by maximum likelihood (glmer, Laplace approximation):\n")
        m = sh.glmer(formula, data=fish, family="poisson")
        print(m)
        (out / "fish_glmer.stan").write_text(m.stancode())
        print(f"Stan program saved to {(out / 'fish_glmer.stan').resolve()}")


if __name__ == "__main__":
    main()
