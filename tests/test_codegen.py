"""Generated Stan programs: golden copies, structure-only text, and stanc on every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stanhier as sh

GOLDEN = Path(__file__).parent / "golden"


def sim_data(n: int = 60, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 6, n)
    h = rng.integers(0, 4, n)
    x = rng.normal(size=n)
    eta = 0.3 + 0.5 * x + rng.normal(0, 0.3, 6)[g]
    size = np.full(n, 10)
    return pd.DataFrame({
        "x": x, "g": g, "h": h,
        "y_real": eta + rng.normal(0, 0.5, n),
        "y_pos": np.exp(eta + rng.normal(0, 0.3, n)),
        "y_count": rng.poisson(np.exp(eta)),
        "y_bin": rng.binomial(1, 1 / (1 + np.exp(-eta))),
        "y_succ": rng.binomial(size, 1 / (1 + np.exp(-eta))),
        "size": size,
        "y_unit": 1 / (1 + np.exp(-eta - rng.normal(0, 0.3, n))),
    })


#: a response column of sim_data() for each kind of support
SUPPORT_RESPONSE = {
    "real": "y_real", "positive": "y_pos", "count": "y_count", "binary": "y_bin",
    "binomial": "y_succ | trials(size)", "unit": "y_unit",
}
#: every registered family (a new family module is checked here without editing this file)
FAMILY_RESPONSE = {name: SUPPORT_RESPONSE[cls.support] for name, cls in sh.families.FAMILIES.items()}
STRUCTURES = {
    "none": "x",
    "corr": "x + (x | g)",
    "uncorr": "x + (x || g)",
    "two": "x + (1 | g) + (x | h)",
}


@pytest.mark.parametrize("family", sorted(FAMILY_RESPONSE))
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_make_stancode_passes_stanc(family, structure):
    import httpstan.compile

    from stanhier.backends.toolchain import use_patient_stanc

    use_patient_stanc()  # as the pystan backend runs stanc: httpstan's 1 s limit is too tight under load

    code = sh.make_stancode(f"{FAMILY_RESPONSE[family]} ~ {STRUCTURES[structure]}", sim_data(),
                            family=family)
    cpp, _warnings = httpstan.compile.compile(code, "model_check")  # raises ValueError on stanc errors
    assert "model_check" in cpp


def test_same_structure_same_bytes(sleep):
    df = sim_data().rename(columns={"y_real": "z", "x": "w", "g": "hh"})
    a = sh.make_stancode("Reaction ~ Days + (Days | Subject)", sleep)
    b = sh.make_stancode("z ~ w + (w | hh)", df)
    assert a == b
    # other prior scales, other data: still the same program
    c = sh.make_stancode("z ~ w + (w | hh)", df, prior=[sh.prior("student_t(3, 0, 10)", class_="sd")])
    assert a == c
    # a different structure gives a different program
    assert a != sh.make_stancode("z ~ w + (w || hh)", df)


@pytest.mark.parametrize("name, formula, family, fixture", [
    ("brm_gaussian_corr", "Reaction ~ Days + (Days | Subject)", "gaussian", "sleep"),
    ("brm_poisson_corr", "fish_num ~ 1 + temperature + (temperature | weather)", "poisson", "fish"),
    ("brm_poisson_uncorr", "fish_num ~ 1 + temperature + (temperature || weather)", "poisson", "fish"),
])
def test_golden_programs(name, formula, family, fixture, request):
    # brms's programs: the non-centred parameterization, group-level effects sampled
    code = sh.make_stancode(formula, request.getfixturevalue(fixture), family=family,
                            parameterization="noncentered", marginalize=False)
    path = GOLDEN / f"{name}.stan"
    assert code == path.read_text(), f"generated code changed; review and update {path}"


@pytest.mark.parametrize("name, formula, parameterization", [
    # the seed model's default program: 2 coefficients per level, written out as scalars
    ("brm_poisson_conditional", "fish_num ~ 1 + temperature + (temperature | weather)", "auto"),
    # 3 coefficients per level: loops over each level's Cholesky factor
    ("brm_poisson_conditional_loop", "fish_num ~ 1 + temperature + T2 + (temperature + T2 | weather)", "conditional"),
])
def test_golden_conditional_program(name, formula, parameterization, fish):
    """The conditional treatment's programs (stanhier.model.parameterization)."""
    code = sh.make_stancode(formula, fish.assign(T2=fish["temperature"] ** 2), family="poisson",
                            parameterization=parameterization)
    path = GOLDEN / f"{name}.stan"
    assert code == path.read_text(), f"generated code changed; review and update {path}"


@pytest.mark.parametrize("name, formula", [
    ("brm_gaussian_marginal", "Reaction ~ Days + (Days | Subject)"),  # 2 x 2 blocks: closed form
    ("brm_gaussian_marginal_loop", "Reaction ~ Days + (Days + D2 | Subject)"),  # 3 x 3 blocks: a loop
])
def test_golden_marginal_program(name, formula, sleep):
    """The default Gaussian program: group-level effects integrated out (stanhier.bayes.marginal)."""
    code = sh.make_stancode(formula, sleep.assign(D2=(sleep["Days"] - 4.5) ** 2))
    path = GOLDEN / f"{name}.stan"
    assert code == path.read_text(), f"generated code changed; review and update {path}"


def test_standata_shapes(sleep):
    data = sh.make_standata("Reaction ~ Days + (Days | Subject)", sleep, marginalize=False)
    assert data["N"] == 180 and data["K"] == 2 and data["N_1"] == 18 and data["M_1"] == 2
    assert data["X"].shape == (180, 2) and data["Z_1"].shape == (180, 2)
    assert data["J_1"].min() == 1 and data["J_1"].max() == 18
    assert data["NC_1"] == 1


def test_centered_parameterization_compiles_with_stanc(sleep):
    import httpstan.compile

    code = sh.make_stancode("Reaction ~ Days + (Days | Subject)", sleep, parameterization="centered",
                            marginalize=False)
    assert "r_1[j, m]" in code and "z_1" not in code  # r is sampled: its prior is written out
    httpstan.compile.compile(code, "model_centered")
