"""brm on InstEval (issue 11): ``y ~ service + (1 | s) + (1 | d)``, 73,421 rows, 2,972 x 1,128 crossed levels.

The crossed factors hold 4,100 effects, beyond the integrated-out layouts (one grouping
factor, or at most 200 effects), so ``brm`` samples them (brms's program, the centred /
non-centred choice of ``parameterization="auto"``). Prints the wall time (compile
excluded), the diagnostics, and the posterior means against lme4's ML estimates
(``../shared/reference/ml_reference.json``, ``insteval_ML``) in posterior SDs.

    python benchmarks/bench_insteval_brm.py [--chains 2] [--iter 1000] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import stanhier as sh  # noqa: E402

REF = ROOT.parent / "shared" / "reference" / "ml_reference.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--iter", type=int, default=1000)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args()
    warnings.simplefilter("ignore")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    df = pd.read_csv(ROOT / "tests" / "data" / "InstEval.csv")
    formula = "y ~ service + (1 | s) + (1 | d)"
    sh.brm(formula, df.head(2000), chains=1, iter=20, warmup=10, seed=1, progress=False)  # compile (excluded)
    t = time.perf_counter()
    fit = sh.brm(formula, df, chains=a.chains, iter=a.iter, seed=1, cores=a.cores, progress=False)
    wall = time.perf_counter() - t
    d = fit.diagnostics()
    table = fit.summary_table()
    print(f"brm {formula}: {a.chains} chains x {a.iter} iterations, wall {wall:.1f} s (compile excluded), "
          f"treatment {fit.spec.structure.terms}, divergent {d['divergent_transitions']}, "
          f"max Rhat {d['max_rhat']:.3f}, min bulk ESS {d['min_bulk_ess']:.0f}")
    print(table[["Estimate", "Est.Error", "Rhat", "Bulk_ESS"]].round(4).to_string())
    out = {"wall": wall, "diagnostics": d, "estimate": table["Estimate"].to_dict(), "sd": table["Est.Error"].to_dict()}
    if REF.exists():
        case = json.loads(REF.read_text())["cases"]["insteval_ML"]
        # lme4 reads service as a factor (service1); the CSV codes it 0/1, so brm names it b_service
        lme4 = {"b_Intercept": case["fixef"]["(Intercept)"], "b_service": case["fixef"]["service1"],
                "sigma": case["sigma"]}
        for row in case["varcorr"]["table"]:
            if row["grp"] != "Residual":
                lme4[f"sd_{row['grp']}__Intercept"] = row["sdcor"]
        print("\nposterior mean against lme4's ML estimate (difference in posterior SDs):")
        out["lme4"], out["sds_from_lme4"] = lme4, {}
        for name, value in lme4.items():
            z = (table.loc[name, "Estimate"] - value) / table.loc[name, "Est.Error"]
            out["sds_from_lme4"][name] = z
            print(f"  {name:24s} brm {table.loc[name, 'Estimate']:9.4f}  lme4 {value:9.4f}  ({z:+.2f} SD)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
