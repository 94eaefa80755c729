"""The ``stanhier`` command line: exit codes, error lines, stancode, fit/summary/predict/example."""

from __future__ import annotations

import argparse
import inspect
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stanhier as sh
from stanhier.cli import (CLI_FLAGS, PYTHON_ONLY, brm_kwargs, build_parser, cli_wording, example_data_path, main,
                          ml_kwargs, parse_prior)
from stanhier.record import save

ROOT = Path(__file__).resolve().parents[1]
FISH_FORMULA = "fish_num ~ 1 + temperature + (temperature | weather)"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fish_csv(fish, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "fish.csv"
    fish.to_csv(path, index=False)
    return path


@pytest.mark.engine_free  # no Stan program runs
def test_parse_prior():
    assert parse_prior("normal(0,1):b:temperature") == sh.prior("normal(0, 1)", class_="b", coef="temperature")
    assert parse_prior("student_t(3, 0, 5):sd::weather") == sh.prior("student_t(3,0,5)", class_="sd", group="weather")
    assert parse_prior("normal(0, 10)") == sh.prior("normal(0, 10)", class_="b")
    assert parse_prior("lkj(2):cor").class_ == "cor"
    with pytest.raises(sh.StanhierError):
        parse_prior("normal(0,1):b:x:g:extra")
    with pytest.raises(sh.PriorError):
        parse_prior("normal(0,1):bogus")


@pytest.mark.engine_free  # no Stan program runs
def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["fit", "y ~ x"]) == 2  # --data missing
    assert main(["fit", "y ~ x", "--data", "d.csv", "--chains", "many"]) == 2
    assert main(["nonsense"]) == 2
    assert main(["--version"]) == 0
    assert "stanhier" in capsys.readouterr().out


@pytest.mark.engine_free  # no Stan program runs
def test_user_errors_exit_1_one_line(fish_csv):
    code, out, err = run(["stancode", "y ~ x", "--data", "no/such/file.csv"])
    lines = err.strip().splitlines()
    assert code == 1 and lines[0] == "error: Data file 'no/such/file.csv' does not exist."
    assert lines[1].startswith("hint: ") and len(lines) == 2 and "Traceback" not in err

    code, _, err = run(["stancode", "fish_num ~ temp + (1 | weather)", "--data", str(fish_csv)])
    assert code == 1 and err.startswith("error: ") and "'temp'" in err and "Traceback" not in err
    code, _, err = run(["stancode", FISH_FORMULA, "--data", str(fish_csv), "--family", "poison"])
    assert code == 1 and "Unknown family 'poison'" in err
    code, _, err = run(["stancode", FISH_FORMULA, "--data", str(fish_csv), "--prior", "nromal(0,1):b"])
    assert code == 1 and err.startswith("error: ") and "hint: write priors as" in err
    # --debug adds the traceback
    code, _, err = run(["--debug", "stancode", "fish_num ~ temp", "--data", str(fish_csv)])
    assert code == 1 and "Traceback" in err and "error: " in err


def test_console_script_exit_codes(fish_csv):
    """The installed entry point (python -m stanhier.cli) returns the same codes to the shell."""
    res = subprocess.run([sys.executable, "-m", "stanhier.cli", "stancode", "fish_num ~ temp",
                          "--data", str(fish_csv)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "stanhier.cli", "fit"], capture_output=True, text=True)
    assert res.returncode == 2 and "usage:" in res.stderr


@pytest.mark.engine_free  # no Stan program runs
def test_stancode_prints_and_writes(fish, fish_csv, tmp_path):
    code, out, _ = run(["stancode", FISH_FORMULA, "--data", str(fish_csv), "--family", "poisson"])
    assert code == 0 and out == sh.make_stancode(FISH_FORMULA, fish, "poisson")
    target = tmp_path / "m" / "model.stan"
    code, out, _ = run(["stancode", FISH_FORMULA, "--data", str(fish_csv), "--family", "poisson",
                        "--prior", "normal(0,1):b:temperature", "--out", str(target)])
    assert code == 0
    prior = [sh.prior("normal(0, 1)", coef="temperature")]
    assert target.read_text() == sh.make_stancode(FISH_FORMULA, fish, "poisson", prior)
    data = json.loads((tmp_path / "m" / "model.data.json").read_text())
    ref = sh.make_standata(FISH_FORMULA, fish, "poisson", prior)
    assert set(data) == set(ref)
    for k, v in ref.items():
        assert np.array_equal(np.asarray(data[k]), np.asarray(v)), k
    assert isinstance(data["X"][0], list)  # matrices as lists of rows


@pytest.mark.engine_free  # no Stan program runs
def test_family_flag_takes_a_link(fish, fish_csv):
    """--family with R's link syntax (quoted or not) reaches the program; a bad link is one error line."""
    code, out, _ = run(["stancode", FISH_FORMULA, "--data", str(fish_csv), "--family", "poisson(link=sqrt)"])
    assert code == 0 and out == sh.make_stancode(FISH_FORMULA, fish, sh.family("poisson", link="sqrt"))
    assert "mu = square(mu + Xc * b);" in out
    code, _, err = run(["stancode", FISH_FORMULA, "--data", str(fish_csv), "--family", "poisson(link='logit')"])
    assert code == 1 and err.startswith("error: Link 'logit' is not supported for family 'poisson'; "
                                        "supported links: log, identity, sqrt")
    base = ["fit", "y ~ x + (1 | g)", "--data", "d.csv", "--method", "ml"]
    which, kwargs = ml_kwargs(build_parser().parse_args(base + ["--family", "binomial(link=probit)"]))
    assert which == "glmer" and kwargs["family"] == "binomial(link=probit)"
    which, _ = ml_kwargs(build_parser().parse_args(base + ["--family", "gaussian(link=log)"]))
    assert which == "glmer"  # which says what it does not fit (a FamilyError naming brm)


def test_fit_summary_from_record(fish_fit, fish_csv, tmp_path):
    """fit + --out writes a record; summary reads it back without refitting."""
    out_dir = tmp_path / "run"
    code, out, err = run(["fit", FISH_FORMULA, "--data", str(fish_csv), "--family", "poisson",
                          "--chains", "2", "--iter", "600", "--seed", "1", "--out", str(out_dir)])
    assert code == 0, err
    assert cli_wording(fish_fit.summary()) in out
    rec = json.loads((out_dir / "record.json").read_text())
    assert rec["command"] == ("stanhier fit 'fish_num ~ 1 + temperature + (temperature | weather)' --data "
                              f"{fish_csv} --family poisson --chains 2 --iter 600 --seed 1 --out {out_dir}")
    code, out2, _ = run(["summary", str(out_dir)])
    assert code == 0 and out2.rstrip("\n") == cli_wording(fish_fit.summary())
    code, _, err = run(["summary", str(tmp_path)])
    assert code == 1 and "not a stanhier run record" in err


def test_predict_from_record(fish_fit, fish, tmp_path):
    folder = save(fish_fit, tmp_path / "run")
    new = fish.head(5)
    new.to_csv(tmp_path / "new.csv", index=False)
    code, _, err = run(["predict", str(folder), "--newdata", str(tmp_path / "new.csv"),
                        "--out", str(tmp_path / "pred.csv")])
    assert code == 0, err
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 5 and "Estimate" in pred.columns
    direct = fish_fit.fitted(newdata=new)
    est = direct["Estimate"].to_numpy() if isinstance(direct, pd.DataFrame) else np.asarray(direct)[:, 0]
    np.testing.assert_allclose(pred["Estimate"].to_numpy(), est, rtol=1e-12)


def test_example_fish_ships_and_runs(fish_fit, tmp_path):
    shipped = example_data_path("fish")
    assert shipped.read_bytes() == (ROOT / "examples" / "fish.csv").read_bytes()
    code, out, err = run(["example", "fish", "--chains", "2", "--iter", "600", "--out", str(tmp_path / "ex")])
    assert code == 0, err
    assert cli_wording(fish_fit.summary()) in out  # same data, seed 1, same draws
    # advice the Python fit gives in Python terms (adapt_delta) names the CLI flag instead
    if any("adapt_delta" in m for m in fish_fit.diagnostic_messages()):
        assert "--adapt-delta" in out + err
    for python in ("control=", "adapt_delta", "allow_new_levels=", "parameterization=", "help("):
        assert python not in out + err, python
    assert build_parser().parse_args(["example", "fish"]).seed == 1


@pytest.mark.engine_free  # no Stan program runs
def test_fit_ml_path(fish_csv, tmp_path):
    code, out, err = run(["fit", "fish_num ~ 1 + temperature + (1 | weather)", "--data", str(fish_csv),
                          "--family", "poisson", "--method", "ml", "--out", str(tmp_path / "ml")])
    assert code == 0, err
    assert "Laplace" in out or "logLik" in out
    assert (tmp_path / "ml" / "model.stan").exists() and (tmp_path / "ml" / "record.json").exists()
    code, out2, _ = run(["summary", str(tmp_path / "ml")])
    assert code == 0 and out2.strip() == out.split("\nRun record")[0].strip()
    # predictions from the ML record: estimates and conditional modes, as a direct glmer fit gives
    data = pd.read_csv(fish_csv)
    data.head(5).to_csv(tmp_path / "new.csv", index=False)
    code, out3, err = run(["predict", str(tmp_path / "ml"), "--newdata", str(tmp_path / "new.csv")])
    assert code == 0, err
    direct = sh.glmer("fish_num ~ 1 + temperature + (1 | weather)", data=data, family="poisson")
    np.testing.assert_allclose(pd.read_csv(io.StringIO(out3))["Estimate"],
                               direct.predict(data.head(5), type="response"), rtol=1e-6)
    restored = sh.load(tmp_path / "ml")
    assert restored.logLik() == pytest.approx(direct.logLik(), abs=1e-8)


def test_predict_types_and_population_level(fish_fit, fish, tmp_path):
    folder = save(fish_fit, tmp_path / "run")
    new = fish.head(4)
    new.to_csv(tmp_path / "new.csv", index=False)
    code, out, err = run(["predict", str(folder), "--newdata", str(tmp_path / "new.csv"), "--re-formula", "NA"])
    assert code == 0, err
    pop = pd.read_csv(io.StringIO(out))
    ref = fish_fit.fitted(newdata=new, re_formula="NA")
    np.testing.assert_allclose(pop["Estimate"].to_numpy(), np.asarray(ref["Estimate"] if isinstance(ref, pd.DataFrame)
                                                                      else np.asarray(ref)[:, 0]), rtol=1e-12)
    # every spelling of "no group-level terms" gives the same population-level predictions
    for spelling in ("~0", "none", "~ NA"):
        code, out_s, err = run(["predict", str(folder), "--newdata", str(tmp_path / "new.csv"),
                                "--re-formula", spelling])
        assert code == 0 and out_s == out, (spelling, err)
    code, out, err = run(["predict", str(folder), "--newdata", str(tmp_path / "new.csv"), "--type", "predict",
                          "--seed", "1"])
    assert code == 0, err
    pred = pd.read_csv(io.StringIO(out))
    assert len(pred) == 4 and (pred["Estimate"] >= 0).all()


@pytest.mark.engine_free  # no Stan program runs
def test_sampler_defaults_are_brms_and_shared():
    """brms's defaults (chains = 4, iter = 2000, warmup = iter / 2, thin = 1, adapt_delta = 0.8,
    max_treedepth = 10) in the CLI, in brm's signature and in the settings made from them."""
    import inspect

    from stanhier.backends.base import SampleSettings

    brms = {"chains": 4, "iter": 2000, "thin": 1, "adapt_delta": 0.8, "max_treedepth": 10}
    args = build_parser().parse_args(["fit", "y ~ x", "--data", "d.csv"])
    cli = {k: v for k, v in brms.items() if k != "adapt_delta"}
    # --adapt-delta unset leaves brm's default (0.8, or 0.9 for a conditional program)
    assert {k: getattr(args, k) for k in cli} == cli and args.warmup is None and args.adapt_delta is None
    sig = inspect.signature(sh.brm).parameters
    assert {k: sig[k].default for k in ("chains", "iter", "thin")} == {k: brms[k] for k in ("chains", "iter", "thin")}
    s = SampleSettings()
    assert {k: getattr(s, k) for k in brms} == brms and s.warmup == 1000


def _fit_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["fit"]


@pytest.mark.engine_free  # no Stan program runs
def test_every_keyword_of_brm_lmer_glmer_has_a_flag():
    """Each keyword argument of the Python functions is a CLI flag, or is listed as Python-only
    with a reason; every flag named exists in ``stanhier fit``."""
    options = {s for a in _fit_parser()._actions for s in a.option_strings}
    for name, fn in (("brm", sh.brm), ("lmer", sh.lmer), ("glmer", sh.glmer)):
        for param in inspect.signature(fn).parameters:
            flags = CLI_FLAGS[name].get(param)
            reason = PYTHON_ONLY[name].get(param)
            assert flags or reason, f"{name}({param}=...) has no CLI flag and is not listed as Python-only"
            assert not (flags and reason), f"{name}({param}=...) is both a flag and Python-only"
            if reason:
                assert len(reason) > 20, f"give a reason why {name}({param}=...) is Python-only"
            for flag in flags or ():
                assert flag == "FORMULA" or flag in options, f"{name}({param}=...): no {flag} in stanhier fit"


@pytest.mark.engine_free  # no Stan program runs
def test_flags_reach_brm(tmp_path):
    inits = tmp_path / "inits.json"
    inits.write_text('{"sigma": 1.0}')
    argv = ["fit", "y ~ x", "--data", "d.csv", "--family", "poisson", "--chains", "3", "--iter", "500",
            "--warmup", "100", "--thin", "2", "--seed", "9", "--cores", "1", "--init", str(inits),
            "--adapt-delta", "0.95", "--max-treedepth", "12", "--parameterization", "centered",
            "--sufficient-stats", "--na-action", "raise", "--collinear", "drop", "--backend", "pystan",
            "--progress"]
    args = build_parser().parse_args(argv)
    kwargs = brm_kwargs(args, [])
    assert kwargs == dict(family="poisson", prior=None, chains=3, iter=500, warmup=100, thin=2, seed=9, cores=1,
                          init={"sigma": 1.0}, control={"adapt_delta": 0.95, "max_treedepth": 12},
                          backend="pystan", progress=True, parameterization="centered", na_action="raise",
                          collinear="drop", sufficient_stats=True)
    assert set(kwargs) <= set(inspect.signature(sh.brm).parameters)
    assert build_parser().parse_args(argv[:4] + ["--parameterization", "auto"]).parameterization == "auto"
    assert brm_kwargs(build_parser().parse_args(argv[:4] + ["--init", "0.5"]), [])["init"] == 0.5
    for flag, value in (("--marginalize", True), ("--no-marginalize", False)):
        args = build_parser().parse_args(argv[:4] + [flag])
        if "marginalize" in inspect.signature(sh.brm).parameters:
            assert brm_kwargs(args, [])["marginalize"] is value
        else:
            with pytest.raises(sh.ArgumentError, match="--marginalize"):
                brm_kwargs(args, [])
    # unset flags leave brm's own defaults
    plain = brm_kwargs(build_parser().parse_args(argv[:4]), [])
    assert not {"parameterization", "na_action", "collinear", "marginalize", "sufficient_stats"} & set(plain)


@pytest.mark.engine_free  # no Stan program runs
def test_flags_reach_lmer_and_glmer():
    base = ["fit", "y ~ x + (1 | g)", "--data", "d.csv", "--method", "ml"]
    which, kwargs = ml_kwargs(build_parser().parse_args(
        base + ["--no-REML", "--tol", "1e-10", "--start", '{"theta": [0.5]}', "--na-action", "raise",
                "--collinear", "error", "--backend", "pystan"]))
    assert which == "lmer" and kwargs == dict(REML=False, control={"tol": 1e-10}, start={"theta": [0.5]},
                                              na_action="raise", collinear="error", backend="pystan",
                                              progress=None)
    assert ml_kwargs(build_parser().parse_args(base + ["--REML"]))[1]["REML"] is True
    assert ml_kwargs(build_parser().parse_args(base + ["--ml"]))[1]["REML"] is False  # older spelling
    which, kwargs = ml_kwargs(build_parser().parse_args(base + ["--family", "poisson", "--nAGQ", "7"]))
    assert which == "glmer" and kwargs["nAGQ"] == 7 and kwargs["family"] == "poisson"
    for fn, (which, kwargs) in ((sh.lmer, ml_kwargs(build_parser().parse_args(base))),
                                (sh.glmer, ml_kwargs(build_parser().parse_args(base + ["--family", "poisson"])))):
        assert set(kwargs) <= set(inspect.signature(fn).parameters)
    with pytest.raises(sh.ArgumentError, match="--nAGQ"):
        ml_kwargs(build_parser().parse_args(base + ["--nAGQ", "3"]))
    with pytest.raises(sh.ArgumentError, match="--REML"):
        ml_kwargs(build_parser().parse_args(base + ["--family", "poisson", "--no-REML"]))


@pytest.mark.engine_free  # no Stan program runs
def test_flags_of_the_other_method_are_errors(fish_csv):
    code, _, err = run(["fit", FISH_FORMULA, "--data", str(fish_csv), "--method", "ml", "--chains", "2"])
    assert code == 1 and "--chains applies to --method bayes only" in err
    code, _, err = run(["fit", FISH_FORMULA, "--data", str(fish_csv), "--nAGQ", "2"])
    assert code == 1 and "--nAGQ applies to --method ml only" in err


@pytest.mark.engine_free  # no Stan program runs
def test_ml_flags_change_the_fit(sleep, tmp_path):
    """--no-REML gives lme4's ML fit of sleepstudy, the default its REML fit (lme4's numbers)."""
    csv = tmp_path / "sleepstudy.csv"
    sleep.to_csv(csv, index=False)
    formula = "Reaction ~ Days + (Days | Subject)"
    code, out, err = run(["fit", formula, "--data", str(csv), "--method", "ml", "--no-REML"])
    assert code == 0, err
    assert "logLik" in out and "-876.0" in out and "   Data: sleepstudy" in out
    code, out, err = run(["fit", formula, "--data", str(csv), "--method", "ml"])
    assert code == 0 and "REML criterion at convergence: 1743.6" in out, err


def test_cli_messages_name_flags(fish_fit, fish, tmp_path):
    """A library error printed by the CLI names the CLI flag (--allow-new-levels), not Python syntax."""
    folder = save(fish_fit, tmp_path / "run")
    new = fish.head(3).copy()
    new["weather"] = 7  # a level the fit has not seen
    new.to_csv(tmp_path / "new.csv", index=False)
    code, _, err = run(["predict", str(folder), "--newdata", str(tmp_path / "new.csv")])
    assert code == 1 and "--allow-new-levels" in err and "allow_new_levels=True" not in err, err
    code, _, err = run(["predict", str(folder), "--newdata", str(tmp_path / "new.csv"), "--allow-new-levels"])
    assert code == 0, err


@pytest.mark.cmdstan  # builds (or finds) the files both engines share: once
def test_prepare_builds_the_shared_files_once():
    """``stanhier prepare`` (the test command runs it first) leaves the precompiled header, the
    services object the pystan modules link and, for a CmdStan that links stanhier's objects,
    CmdStan's main object, and compiles the three fixed ML programs, so a first lmer or glmer
    fit compiles nothing: run again, it finds them all and builds nothing."""
    from stanhier.backends import get_backend, shared_cmdstan, toolchain
    from stanhier.ml.api import ml_programs

    code, out, _ = run(["prepare"])
    assert code == 0, out
    files = dict(line.strip().split(": ", 1) for line in out.splitlines() if line.startswith("  "))
    expected = (["the precompiled Stan header"] + ([] if toolchain.stan_threads() else ["httpstan's services object"])
                + (["CmdStan's main object"] if shared_cmdstan() else []))
    assert list(files) == expected + list(ml_programs())
    paths = [Path(files[name]) for name in expected]
    assert (paths[0].parent / "stan_pch.hpp.gch").is_file() and all(p.parent.joinpath("COMPLETE").is_file()
                                                                    for p in paths)
    for name, program in ml_programs().items():  # compiled: a fit finds it in the cache
        model = get_backend("pystan").compile(program, progress=False)
        assert model.cache_hit and model.model_name == files[name]
    builds = [p.parent.joinpath("builds").read_text() for p in paths]
    assert run(["prepare"])[1] == out.replace(out.splitlines()[-1], "done in 0 s")
    assert [p.parent.joinpath("builds").read_text() for p in paths] == builds
