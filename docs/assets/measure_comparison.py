"""Measure the stanhier column of docs/comparison.md (run from the repository root).

    .venv/bin/python docs/assets/measure_comparison.py [all|ml|bayes|cbpp|treatments] > numbers.json
    .venv/bin/python docs/assets/measure_comparison.py cbpp docs/assets/comparison_numbers.json
        # the second form updates those cases in the file, keeping the others

Same calls as tests/reference/*.json: brm with chains=4, iter=4000, warmup=2000, seed=1
(pystan backend), lmer/glmer with lme4's defaults. ``bayes``: brms's own program (the
non-centred one without integrating anything out: stanhier's defaults when these were
recorded); ``treatments``: stanhier's other treatments of the same models (sleepstudy with
its default, group-level effects integrated out; fish non-centred at adapt_delta 0.99,
centred, and centred without the correlation), each with the load average around it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings

import pandas as pd

import stanhier as sh
from stanhier.ml.api import glmer, lmer

warnings.simplefilter("ignore")
fish = pd.read_csv("tests/data/fish.csv")
fish["weather"] = (fish["weather"] == "sunny").astype(int)
sleep = pd.read_csv("tests/data/sleepstudy.csv")
cbpp = pd.read_csv("tests/data/cbpp.csv").astype({"period": str, "herd": str})
out: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cases": {}}


def bayes(name: str, formula: str, data, family: str, **options) -> None:
    load = round(os.getloadavg()[0], 1)
    t0 = time.time()
    fit = sh.brm(formula, data=data, family=family, chains=4, iter=4000, warmup=2000, seed=1,
                 backend="pystan", progress=False, **options)
    tab = fit.summary_table()
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    out["cases"][name] = {"call": f"sh.brm({formula!r}, family={family!r}, chains=4, iter=4000, warmup=2000, seed=1{extra})",
                          "seconds": round(time.time() - t0, 1), "cache_hit": fit.cache_hit,
                          "load_average": [load, round(os.getloadavg()[0], 1)],
                          "sample_seconds": round(float(fit.sample_seconds), 1),
                          "treatment": [c.choice for c in fit.group_effect_choices()],
                          "table": {k: {c: float(tab.loc[k, c]) for c in ["Estimate", "Est.Error", "l-95% CI", "u-95% CI", "Rhat", "Bulk_ESS"]}
                                    for k in tab.index},
                          "diagnostics": fit.diagnostics()}
    print(name, "done", file=sys.stderr, flush=True)


def ml(name: str, fit, call: str, t0: float) -> None:
    fe = fit.fixef()
    out["cases"][name] = {"call": call, "seconds": round(time.time() - t0, 1),
                          "fixef": {k: float(v) for k, v in fe.items()},
                          "se": [float(s) for s in fit._se()],
                          "logLik": float(fit.logLik()), "varcorr": fit.VarCorr().to_dict("records"),
                          "sigma": float(fit.sigma()) if fit.family.name == "gaussian" else None}
    print(name, "done", file=sys.stderr, flush=True)


WHAT = sys.argv[1] if len(sys.argv) > 1 else "all"
if WHAT in ("all", "ml"):
  t0 = time.time(); ml("sleepstudy_corr_REML", lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=True), "sh.lmer('Reaction ~ Days + (Days | Subject)', sleep, REML=True)", t0)
  t0 = time.time(); ml("sleepstudy_corr_ML", lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False), "sh.lmer('Reaction ~ Days + (Days | Subject)', sleep, REML=False)", t0)
  t0 = time.time(); ml("fish_int_weather_laplace", glmer("fish_num ~ 1 + temperature + (1 | weather)", fish, family="poisson"), "sh.glmer('fish_num ~ 1 + temperature + (1 | weather)', fish, family='poisson')", t0)
  t0 = time.time(); ml("fish_slope_weather_laplace", glmer("fish_num ~ 1 + temperature + (temperature | weather)", fish, family="poisson"), "sh.glmer('fish_num ~ 1 + temperature + (temperature | weather)', fish, family='poisson')", t0)
if WHAT in ("all", "ml", "cbpp"):
  t0 = time.time(); g = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
  ml("cbpp_binomial_laplace", g, "sh.glmer('cbind(incidence, size - incidence) ~ period + (1 | herd)', cbpp, family='binomial')", t0)
  out["cases"]["cbpp_binomial_laplace"]["theta"] = [float(t) for t in g.theta]
if WHAT in ("all", "bayes"):
  bayes("sleepstudy", "Reaction ~ Days + (Days | Subject)", sleep, "gaussian", marginalize=False,
        parameterization="noncentered")
  bayes("fish_slope_corr", "fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson",
        parameterization="noncentered")
if WHAT in ("all", "treatments"):
  bayes("sleepstudy_integrated", "Reaction ~ Days + (Days | Subject)", sleep, "gaussian")
  bayes("fish_noncentered_adapt99", "fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson",
        parameterization="noncentered", control={"adapt_delta": 0.99})
  bayes("fish_centered", "fish_num ~ 1 + temperature + (temperature | weather)", fish, "poisson",
        parameterization="centered")
  bayes("fish_uncorrelated_centered", "fish_num ~ 1 + temperature + (temperature || weather)", fish, "poisson",
        parameterization="centered")
if len(sys.argv) > 2:  # update these cases in an existing file
  from pathlib import Path
  path = Path(sys.argv[2])
  saved = json.loads(path.read_text())
  saved["cases"].update(out["cases"])
  path.write_text(json.dumps(saved, indent=1, default=str) + "\n")
else:
  print(json.dumps(out, indent=1, default=str))
