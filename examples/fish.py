"""The seed example: how many fish, by temperature, with weather as a grouping factor.

Fits ``fish_num ~ 1 + temperature + (temperature | weather)`` (Poisson) once with
``brm``'s defaults (brms's sampler settings: 4 chains, iter 2000, warmup 1000; seed 1)
and with ``glmer`` (maximum likelihood, Laplace), prints both summaries, and saves
each generated Stan program with its data (JSON) beside it. ``brm`` chooses how to
sample the group-level effects from the data (``parameterization="auto"``; the
choice is printed under ``Draws:``): with a log link, each weather level's effects and
the population-level effects follow their approximate conditional posterior (the
*conditional* treatment, an exact change of variables), which samples this model
without the funnels that make brms's non-centred program diverge.

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


def save_program(fit, stem: Path) -> None:
    """The fit's Stan program (``stem.stan``) and its data (``stem.data.json``)."""
    stem.with_suffix(".stan").write_text(fit.stancode())
    sh.record.write_stan_data(fit.standata(), stem.with_suffix(".data.json"))
    print(f"Stan program and data saved to {stem.with_suffix('.stan').resolve()} and .data.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fish", help="folder for the .stan file (default runs/fish)")
    parser.add_argument("--iter", type=int, default=2000)
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
    if diag["divergent_transitions"]:
        print(f"\n{diag['divergent_transitions']} divergent transition(s) (brms's non-centred program diverges "
              "hundreds of times here); see docs/parameterization.md.")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_program(fit, out / "fish_brm")

    if hasattr(sh, "glmer"):
        print("\n" + "=" * 78 + "\nThe same model by maximum likelihood (glmer, Laplace approximation):\n")
        m = sh.glmer(formula, data=fish, family="poisson")
        print(m)
        save_program(m, out / "fish_glmer")


if __name__ == "__main__":
    main()
