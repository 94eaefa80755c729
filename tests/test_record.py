"""Run records: save(fit, dir) / load(dir) restore the same fit without compiling or sampling."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stanhier import DataError
from stanhier.record import data_sha256, load, save

ROOT = Path(__file__).resolve().parents[1]
FISH_FORMULA = "fish_num ~ 1 + temperature + (temperature | weather)"


@pytest.fixture(scope="module")
def fish_record(fish_fit, tmp_path_factory):
    return save(fish_fit, tmp_path_factory.mktemp("rec") / "fish")


def test_record_files(fish_record, fish_fit):
    names = {p.name for p in fish_record.iterdir()}
    assert {"record.json", "command.txt", "model.stan", "model.data.json", "priors.csv", "data.csv",
            "draws.nc", "stan_draws.npz", "summary.txt", "diagnostics.json"} <= names
    rec = json.loads((fish_record / "record.json").read_text())
    assert rec["formula"] == FISH_FORMULA and rec["family"] == "poisson" and rec["link"] == "log"
    assert rec["seed"] == 1 and rec["settings"]["chains"] == 2 and rec["settings"]["iter"] == 600
    for pkg in ("stanhier", "numpy", "pandas", "arviz", "pystan", "httpstan", "stan (httpstan)"):
        assert rec["versions"][pkg], pkg
    assert rec["stan_version"]
    assert rec["data"]["sha256"] == data_sha256(fish_record / "data.csv")
    assert (fish_record / "model.stan").read_text() == fish_fit.stancode()
    assert rec["command"].startswith("sh.brm('fish_num ~ 1 + temperature + (temperature | weather)'")
    assert "seed=1" in (fish_record / "command.txt").read_text()
    # resolved priors, defaults included
    priors = pd.read_csv(fish_record / "priors.csv", keep_default_na=False)
    assert list(priors["prior"]) == list(fish_fit.prior_summary()["prior"])
    diag = json.loads((fish_record / "diagnostics.json").read_text())
    assert set(diag) >= {"divergent_transitions", "max_rhat", "messages"}
    # the Stan data JSON is what Stan reads: matrices as lists of rows
    sd = json.loads((fish_record / "model.data.json").read_text())
    assert np.array_equal(np.asarray(sd["X"]), fish_fit.standata()["X"])
    assert (fish_record / "summary.txt").read_text().rstrip("\n") == fish_fit.summary()


def test_load_restores_fit(fish_record, fish_fit):
    again = load(fish_record)
    assert again.summary() == fish_fit.summary()
    assert again.cache_hit and again.compile_seconds == 0.0
    for name, arr in fish_fit.raw.draws.items():
        assert np.array_equal(again.raw.draws[name], arr), name
    pd.testing.assert_frame_equal(again.fixef(), fish_fit.fixef())
    pd.testing.assert_frame_equal(again.ranef()["weather"], fish_fit.ranef()["weather"])
    assert again.raw.settings == fish_fit.raw.settings
    # the NetCDF draws read back with ArviZ
    import arviz as az

    idata = az.from_netcdf(str(fish_record / "draws.nc"))
    assert np.array_equal(idata.posterior["b_temperature"].values,
                          fish_fit.idata.posterior["b_temperature"].values)


def test_load_without_data(fish_fit, fish, tmp_path):
    folder = save(fish_fit, tmp_path / "nodata", include_data=False)
    assert not (folder / "data.csv").exists()
    with pytest.raises(DataError, match="without its data"):
        load(folder)
    assert load(folder, data=fish).summary() == fish_fit.summary()
    other = fish.assign(temperature=fish["temperature"] + 1)
    with pytest.raises(DataError, match="other Stan data"):
        load(folder, data=other)


def test_load_rejects_tampering_and_non_records(fish_fit, tmp_path):
    with pytest.raises(DataError, match="not a stanhier run record"):
        load(tmp_path)
    folder = save(fish_fit, tmp_path / "t")
    (folder / "data.csv").write_text((folder / "data.csv").read_text().replace("\n1,", "\n2,", 1))
    with pytest.raises(DataError, match="sha256"):
        load(folder)


def test_rerun_in_a_new_process_reproduces_draws(fish_fit, fish, tmp_path):
    """The recorded command, run again in a separate process, gives identical draws."""
    csv = tmp_path / "fish.csv"
    fish.to_csv(csv, index=False)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "stanhier.cli", "fit", FISH_FORMULA, "--data", str(csv),
           "--family", "poisson", "--chains", "2", "--iter", "600", "--seed", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    with np.load(out / "stan_draws.npz") as z:
        for name, arr in fish_fit.raw.draws.items():
            assert np.array_equal(z[f"draw:{name}"], arr), name
    rec = json.loads((out / "record.json").read_text())
    assert rec["command"].startswith("stanhier fit ") and "--seed 1" in rec["command"]
    assert rec["input_file"]["sha256"] == data_sha256(csv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load(out).summary() == fish_fit.summary()


def test_fit_save_and_sh_load(fish_fit, tmp_path):
    """``fit.save(dir)`` and ``sh.load(dir)`` (wired in fit.py / __init__.py) are these functions."""
    import stanhier as sh

    fish_fit.save(tmp_path / "r")
    assert sh.load(tmp_path / "r").summary() == fish_fit.summary()


def test_every_build_argument_is_recorded(sleep, tmp_path):
    """collinear='drop' (and the other builder options) are stored and used again by load:
    rebuilding with the default collinear='error' would refuse this data."""
    import stanhier as sh
    from conftest import quiet_brm

    df = sleep.assign(Days2=2 * sleep["Days"])
    f = "Reaction ~ Days + Days2 + (Days | Subject)"
    with pytest.raises(sh.DataError, match="Days2"):
        sh.make_standata(f, df)
    fit = quiet_brm(f, data=df, chains=2, iter=300, seed=5, collinear="drop", na_action="raise")
    assert list(fit.fixef().index) == ["Intercept", "Days"]
    folder = save(fit, tmp_path / "drop")
    rec = json.loads((folder / "record.json").read_text())
    assert (rec["collinear"], rec["na_action"], rec["marginalize"]) == ("drop", "raise", None)
    assert "collinear='drop'" in rec["command"] and "na_action='raise'" in rec["command"]
    again = load(folder)
    assert again.summary() == fit.summary()
    assert (again.spec.collinear, again.spec.na_action) == ("drop", "raise")
    np.testing.assert_array_equal(again.posterior_epred(), fit.posterior_epred())


def test_brms_program_fit_reloads_as_itself(sleep, tmp_path):
    """A Gaussian fit run with brms's program (marginalize=False) comes back with that program and
    its data, not the marginalized default (whose Stan data would not match model.data.json)."""
    from conftest import quiet_brm

    fit = quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, chains=2, iter=300, seed=6,
                    marginalize=False)
    folder = save(fit, tmp_path / "plain")
    rec = json.loads((folder / "record.json").read_text())
    assert rec["marginalize"] is False and rec["group_effects"][0]["choice"] == "noncentered"
    assert "marginalize=False" in rec["command"]
    again = load(folder)
    assert not again.spec.structure.marginal and "Z_1" in again.standata()
    assert again.stancode() == fit.stancode() and again.summary() == fit.summary()