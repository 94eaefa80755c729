"""parameterization="auto": the rule on data with known answers; the choice printed and recorded.

How the seed model samples with defaults over several seeds is measured in benchmarks/bench_bayes.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.bayes.parameterization import term_choices
from stanhier.stan.codegen import build_model



def _poisson(n_groups: int, per: int, sd: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    u = rng.normal(0, sd, n_groups)
    return pd.DataFrame({"y": rng.poisson(np.exp(0.5 + u[g])), "g": g})


def test_rule_follows_the_information_ratio():
    # 200 levels, 2 counts each, small spread: the prior dominates each level -> non-centred
    weak = build_model("y ~ 1 + (1 | g)", _poisson(200, 2, 0.2), "poisson")
    assert [c.choice for c in term_choices(weak)] == ["noncentered"]
    # 8 levels, 300 counts each: the data dominate -> centred
    strong = build_model("y ~ 1 + (1 | g)", _poisson(8, 300, 0.5), "poisson")
    assert [c.choice for c in term_choices(strong)] == ["centered"]
    assert strong.structure.terms == ((False, True),) and "z_1" not in strong.code
    # forced choices are kept, and name themselves as requested
    forced = build_model("y ~ 1 + (1 | g)", _poisson(8, 300, 0.5), "poisson", parameterization="noncentered")
    assert forced.structure.terms == ((False, False),) and "requested" in term_choices(forced)[0].reason
    with pytest.raises(sh.ArgumentError, match="parameterization"):
        build_model("y ~ 1 + (1 | g)", _poisson(8, 30, 0.5), "poisson", parameterization="partial")


def test_choice_printed_and_recorded(fish_fit, tmp_path):
    assert "Group-level effects: (Intercept + temperature | weather) centred" in str(fish_fit)
    fish_fit.save(tmp_path / "run")
    import json

    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["parameterization"] == "auto" and rec["group_effects"][0]["choice"] == "centered"
    assert sh.load(tmp_path / "run").summary() == fish_fit.summary()
