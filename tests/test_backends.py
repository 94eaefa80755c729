"""The backend contract on both engines, and the two engines against each other.

Tests marked ``cmdstan`` need a CmdStan installation (``scripts/test.sh`` builds one on
machines without GitHub); they compare the two engines' results made here, in the test,
not a fixture of the default engine.
"""

from __future__ import annotations

import gc
import glob
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import platformdirs
import pytest

import stanhier as sh
from stanhier import cache
from conftest import LOG_NOTES, quiet_brm
from stanhier.backends import ENGINE_ENV, SampleSettings, cmdstan_available, get_backend
from stanhier.backends.base import fd_hessian

ROOT = Path(__file__).parent.parent

#: A small program with the awkward cases: a size-0 vector, a size-1 vector, a bounded
#: scalar, transformed parameters, generated quantities of size 0 in one dimension, and
#: two far-apart modes in ``x`` (so the initial value decides where a chain stays).
TINY = """data {
  int<lower=0> N;
  vector[N] y;
  int<lower=0> K;
}
parameters {
  real mu;
  real<lower=0> sigma;
  vector[K] z;
  vector[1] one;
  real x;
}
transformed parameters {
  real two_mu = 2 * mu;
}
model {
  y ~ normal(mu, sigma);
  z ~ std_normal();
  one ~ normal(mu, 1);
  target += log_mix(0.5, normal_lpdf(x | -10, 1), normal_lpdf(x | 10, 1));
}
generated quantities {
  vector[K] z_copy = z;
  vector[1] one_copy = one;
  matrix[2, K] m = rep_matrix(mu, 2, K);
  real y_rep = normal_rng(mu, sigma);
}
"""
TINY_DATA = {"N": 5, "y": np.array([1.0, 2.5, 0.3, 1.7, 2.2]), "K": 0}
SHAPES = {"mu": (), "sigma": (), "z": (0,), "one": (1,), "x": (), "two_mu": (), "z_copy": (0,),
          "one_copy": (1,), "m": (2, 0), "y_rep": ()}


# --------------------------------------------------------------------------- selection
def test_unknown_backend_is_a_value_error():
    with pytest.raises(sh.ArgumentError, match="'stanX'.*auto, pystan, cmdstanpy"):
        get_backend("stanX")
    with pytest.raises(ValueError):
        sh.brm("y ~ 1", data={"y": [1.0, 2.0]}, backend="stanX")


def _cmdstan_installed_here() -> bool:
    """Independent of stanhier's lookup: a CmdStan tree where cmdstanpy or scripts/test.sh put one."""
    candidates = [os.environ.get("CMDSTAN", ""), *glob.glob(os.path.expanduser("~/.cmdstan/cmdstan-*")),
                  str(Path(platformdirs.user_cache_dir("stanhier")) / "cmdstan-2.35.0")]
    return any(c and (Path(c) / "makefile").is_file() for c in candidates)


def test_auto_prefers_cmdstan_and_follows_the_engine_variable(monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert get_backend("auto").name == ("cmdstanpy" if _cmdstan_installed_here() else "pystan")
    monkeypatch.setenv(ENGINE_ENV, "pystan")
    assert get_backend("auto").name == "pystan"
    monkeypatch.setenv(ENGINE_ENV, "stan9")
    with pytest.raises(sh.ArgumentError, match="stan9"):
        get_backend("auto")


def test_missing_cmdstan_says_how_to_install(tmp_path):
    env = dict(os.environ, CMDSTAN=str(tmp_path / "nowhere"), HOME=str(tmp_path),
               XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.pop(ENGINE_ENV, None)
    code = ("import stanhier as sh\nfrom stanhier.backends import get_backend\n"
            "assert get_backend('auto').name == 'pystan'\n"
            "try:\n    get_backend('cmdstanpy')\nexcept sh.BackendError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "install_cmdstan" in out.stdout


# --------------------------------------------------------------------------- per engine
def test_sampler_settings_respected(sleep_fit, engine):
    s = sleep_fit.raw.settings
    assert sleep_fit.backend == engine
    assert sleep_fit.raw.draws["b"].shape == (s.chains, s.draws_per_chain, 1)
    assert sleep_fit.raw.stats["treedepth__"].max() <= s.max_treedepth
    assert sleep_fit.idata.posterior.sizes["draw"] == 1000
    # draws are not rounded to CmdStan's default 6 significant digits
    b = sleep_fit.raw.draws["b"].ravel()
    assert np.mean(np.abs(b - np.array([float(f"{v:.6g}") for v in b])) > 0) > 0.9


@pytest.fixture(scope="module")
def tiny(engine):
    return get_backend(engine).compile(TINY, progress=False)


def test_shapes_of_every_variable(tiny):
    """Size-0 variables present, size-1 vectors kept as vectors, in sampling and constrain."""
    density = tiny.log_density(TINY_DATA)
    assert density.n_params == 4
    values = density.constrain(np.array([0.5, 0.1, 0.2, -0.3]))
    assert {k: np.shape(v) for k, v in values.items()} == SHAPES
    assert float(values["sigma"]) == pytest.approx(np.exp(0.1))
    assert float(values["two_mu"]) == pytest.approx(1.0) and values["one_copy"].tolist() == [0.2]
    raw = tiny.sample(TINY_DATA, SampleSettings(chains=1, iter=400, warmup=200, thin=4, seed=3, init=0,
                                                progress=False))
    assert {k: v.shape[2:] for k, v in raw.draws.items()} == SHAPES
    assert raw.draws["mu"].shape == (1, 50)
    np.testing.assert_array_equal(raw.draws["one_copy"], raw.draws["one"])


@pytest.mark.pystan  # httpstan's fit files
def test_sampling_leaves_other_processes_fits_alone(tiny):
    """httpstan stores each seeded fit on disk, and stanhier drops them before and after sampling:
    only this process's, never a fit another process is writing for the same program (two
    processes sampling one program at once failed with 'Fit ... not found' when they shared the
    program's fit folder). Another process says where it keeps a fit of this program; a fit
    there outlives this process's sampling."""
    code = ("import httpstan.cache\nfrom stanhier.backends import get_backend\n"
            f"model = get_backend('pystan').compile({TINY!r}, progress=False)\n"
            "print(httpstan.cache.fit_path(model.model_name + '/fits/abcdefgh'))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = Path(proc.stdout.strip().splitlines()[-1])
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(b"another process's fit")
    try:
        raw = tiny.sample(TINY_DATA, SampleSettings(chains=2, iter=200, seed=4, init=0, progress=False))
        assert raw.draws["mu"].shape == (2, 100)
        assert other.read_bytes() == b"another process's fit"
    finally:
        other.unlink(missing_ok=True)
        other.parent.rmdir()  # the other process's (it has ended): empty again


def test_init_decides_the_mode(tiny):
    """``x`` has modes at -10 and 10 that NUTS does not cross: the start decides."""
    for start in (-10.0, 10.0):
        raw = tiny.sample(TINY_DATA, SampleSettings(chains=2, iter=300, seed=5, init={"x": start},
                                                    progress=False))
        assert np.all(np.sign(raw.draws["x"]) == np.sign(start))


def test_hessian_in_one_batch_equals_one_by_one(tiny):
    density = tiny.log_density(TINY_DATA)
    x = np.array([0.4, 0.2, -0.1, 9.0])
    np.testing.assert_allclose(density.hessian(x), fd_hessian(density.log_prob_grad, x, 1e-5),
                               rtol=1e-9, atol=1e-9)
    lps, grads = density.log_prob_grad_many(np.vstack([x, x + 1]))
    assert lps[0] == pytest.approx(density.log_prob(x)) and grads.shape == (2, 4)


def test_stan_errors_name_the_generated_code_line(tiny):
    with pytest.raises(sh.SamplingError) as err:
        tiny.sample(TINY_DATA, SampleSettings(chains=1, iter=20, seed=1, init={"sigma": -1.0}, progress=False))
    assert "Generated code, line 8: real<lower=0> sigma;" in str(err.value)
    assert "Lower bounded variable is -1" in str(err.value)


def test_a_program_stanc_rejects_is_a_compile_error_naming_its_line(engine):
    """Both engines run stanc before any C++: its message and the program line it names."""
    bad = "data { int N; }\nparameters { real mu; }\nmodel { mu ~ normal(0, undefined_scale); }\n"
    with pytest.raises(sh.StanCompileError) as err:
        get_backend(engine).compile(bad, progress=False)
    message = str(err.value)
    assert message.startswith("Stan could not compile the program:") and "undefined_scale" in message
    assert "Generated code, line 3: model { mu ~ normal(0, undefined_scale); }" in message


# --------------------------------------------------------------------------- engines compared
@pytest.fixture(scope="module")
def both_tiny():
    return {e: get_backend(e).compile(TINY, progress=False) for e in ("pystan", "cmdstanpy")}


@pytest.mark.cmdstan
def test_log_density_and_constrain_identical(both_tiny):
    dens = {e: m.log_density(TINY_DATA) for e, m in both_tiny.items()}
    assert dens["pystan"].n_params == dens["cmdstanpy"].n_params
    for x in np.random.default_rng(7).normal(size=(3, 4)):
        for jacobian in (False, True):
            (la, ga), (lb, gb) = (d.log_prob_grad(x, jacobian) for d in dens.values())
            assert la == pytest.approx(lb, rel=1e-12) and np.allclose(ga, gb, rtol=1e-12, atol=1e-12)
        a, b = (d.constrain(x) for d in dens.values())
        assert list(a) == list(b)
        for name in a:
            if name != "y_rep":  # a random draw: the engines' RNG streams differ
                np.testing.assert_allclose(np.asarray(a[name], float), np.asarray(b[name], float), rtol=1e-12)


@pytest.mark.cmdstan
def test_native_optimizer_reaches_the_optimum(both_tiny):
    optimize = both_tiny["cmdstanpy"].native_optimizer(TINY_DATA)
    assert optimize is not None and both_tiny["pystan"].native_optimizer(TINY_DATA) is None
    x = optimize(np.array([0.0, 0.0, 0.0, 3.0]))
    lp, g = both_tiny["pystan"].log_density(TINY_DATA).log_prob_grad(x)  # checked by the other engine
    assert np.max(np.abs(g)) < 1e-3 and x[3] == pytest.approx(10.0, abs=1e-3)
    y = TINY_DATA["y"]  # mu solves sum(y - mu)/sigma^2 + (one - mu) = 0 with one = mu at the optimum
    assert x[0] == pytest.approx(y.mean(), abs=1e-4)


ONCE = LOG_NOTES + """
    import json, sys
    import numpy as np
    from stanhier import cache
    from stanhier.backends import SampleSettings, get_backend, toolchain
    code, engines = {code!r}, {engines!r}
    stamps, out = {{}}, {{}}
    for engine in engines:
        model = get_backend(engine).compile(code, progress=False)
        entry = cache.cache_dir() / "objects" / toolchain.model_name_for(code).split("/")[1]
        stamps[engine] = sorted((str(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in entry.glob("*.o"))
        dens = model.log_density({data!r})
        rows = [dens.log_prob_grad(x, jac) for x in np.random.default_rng(3).normal(size=(3, 4)) for jac in (0, 1)]
        draws = model.sample({data!r}, SampleSettings(chains=2, iter=300, warmup=150, seed=11, progress=False)).draws
        out[engine] = {{"exe": str(getattr(model, "exe", "")), "hit": model.cache_hit,
                       "values": [[lp, *g] for lp, g in rows], "mu": np.asarray(draws["mu"]).tolist()}}
    print(json.dumps({{"stamps": stamps, "out": out, "notes": notes}}))
"""


@pytest.mark.cmdstan
def test_one_compile_serves_both_engines_and_make_is_the_fallback(tmp_path, monkeypatch):
    """With CmdStan at httpstan's Stan release, CmdStan's executable is linked from the objects
    the pystan backend compiled (toolchain.model_objects): the objects are not rebuilt. Where
    CmdStan's main object was rejected by the compiler (its folder marked FAILED), it is not
    retried: CmdStan's own make builds the program instead, with one warning. That executable
    computes what the linked one does: the same log density and gradient, and the same draws
    for the same seed. ``STANHIER_SHARED_OBJECTS=0`` sends every program to make."""
    from stanhier.backends import toolchain

    code = TINY  # its objects may be in the session's cache already (test_shapes_of_every_variable)
    data = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in TINY_DATA.items()}

    def run(folder, engines):
        env = {**os.environ, "STANHIER_CACHE_DIR": str(folder)}
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(ONCE.format(code=code, engines=engines, data=data))],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    (tmp_path / "linked").mkdir()
    for name in ("pch", "objects"):  # the session's header, main object and program objects
        (tmp_path / "linked" / name).symlink_to(cache.cache_dir() / name, target_is_directory=True)
    linked = run(tmp_path / "linked", ["pystan", "cmdstanpy"])
    assert linked["stamps"]["pystan"] and linked["stamps"]["cmdstanpy"] == linked["stamps"]["pystan"]
    assert [linked["out"][e]["hit"] for e in ("pystan", "cmdstanpy")] == [False, False]
    assert (Path(linked["out"]["cmdstanpy"]["exe"]).parent / "compiler.log").is_file()  # the linked build's

    pch = tmp_path / "made" / "pch"
    pch.mkdir(parents=True)
    for shared in (cache.cache_dir() / "pch").iterdir():
        if shared.name.startswith("pystan-") and shared.is_dir():  # the session's header
            (pch / shared.name).symlink_to(shared, target_is_directory=True)
        elif shared.name.startswith("cmdstan-main-") and shared.is_dir():  # its main object, as rejected
            (pch / shared.name).mkdir()
            (pch / shared.name / "FAILED").write_text("error: (a compiler that rejected main.cpp)\n")
    assert list(pch.glob("cmdstan-main-*/FAILED"))
    made = run(tmp_path / "made", ["cmdstanpy"])
    assert [n for n in made["notes"] if "main object could not be compiled" in n and "make builds" in n]
    made = made["out"]["cmdstanpy"]
    assert made["hit"] is False and not (Path(made["exe"]).parent / "compiler.log").is_file()  # make's build
    np.testing.assert_allclose(linked["out"]["cmdstanpy"]["values"], made["values"], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(linked["out"]["pystan"]["values"], made["values"], rtol=1e-13, atol=1e-13)
    assert linked["out"]["cmdstanpy"]["mu"] == made["mu"]

    cmdstan = get_backend("cmdstanpy").path
    assert toolchain.cmdstan_shares_objects(cmdstan)
    monkeypatch.setenv(toolchain.SHARED_ENV, "0")
    assert not toolchain.cmdstan_shares_objects(cmdstan)


ML_CASES = [
    ("lmer", "Reaction ~ Days + (Days | Subject)", "sleepstudy", {"REML": False}),
    ("lmer", "Reaction ~ 1 + (1 | Subject)", "sleepstudy", {}),  # size-1 theta and beta
    ("glmer", "fish_num ~ 1 + temperature + (1 | weather)", "fish", {"family": "poisson"}),  # size-0 log_shape
]


@pytest.mark.cmdstan
@pytest.mark.parametrize("fun, formula, data_name, kwargs", ML_CASES)
def test_ml_identical_across_engines(fun, formula, data_name, kwargs, sleep, fish):
    data = {"sleepstudy": sleep, "fish": fish}[data_name]
    fits = {e: getattr(sh, fun)(formula, data=data, backend=e, **kwargs) for e in ("pystan", "cmdstanpy")}
    a, b = fits["pystan"], fits["cmdstanpy"]
    assert a.stancode() == b.stancode()
    if a.evaluator.startswith("numpy"):  # no engine ran the optimizer: both engines' programs define it
        lp = {e: f.density.log_prob(f.optimum.theta) for e, f in fits.items()}
        assert lp["cmdstanpy"] == pytest.approx(lp["pystan"], rel=1e-12)
        assert lp["pystan"] == pytest.approx(a.logLik(), rel=1e-9)
    else:
        assert (a.model.backend, b.model.backend) == ("pystan", "cmdstanpy")
    assert b.logLik() == pytest.approx(a.logLik(), abs=1e-6)
    np.testing.assert_allclose(b.fixef().to_numpy(), a.fixef().to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-4, atol=1e-5)


@pytest.mark.cmdstan
def test_cmdstan_ml_fit_is_quiet_and_tidy(sleep, capfd):
    """progress=False prints nothing, leaves cmdstanpy's logger as it was, and leaves no files."""
    logger = logging.getLogger("cmdstanpy")
    level = logger.level
    pattern = os.path.join(tempfile.gettempdir(), "stanhier-cmdstan-*")
    before = set(glob.glob(pattern))
    fit = sh.lmer("Reaction ~ Days + (1 | Subject)", data=sleep, backend="cmdstanpy", progress=False)
    assert fit.logLik() < 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert logger.level == level
    del fit
    gc.collect()
    assert set(glob.glob(pattern)) <= before
    assert not (cache.cache_dir() / "cmdstanpy" / "scratch").exists()


def _agree(a, b, names, k=4.0):
    """Posterior means differ by less than k combined Monte Carlo standard errors (SD / sqrt(ESS))."""
    ta, tb = a.summary_table(), b.summary_table()
    for name in names:
        ea, eb = (t.loc[name, "Est.Error"] / np.sqrt(t.loc[name, "Bulk_ESS"]) for t in (ta, tb))
        diff = ta.loc[name, "Estimate"] - tb.loc[name, "Estimate"]
        assert abs(diff) < k * np.hypot(ea, eb), (name, diff, ea, eb)


@pytest.mark.cmdstan
def test_posteriors_agree_within_monte_carlo_error(sleep, fish):
    fits = [quiet_brm("Reaction ~ Days + (Days | Subject)", data=sleep, backend=e, chains=4, iter=2000,
                      seed=s) for e, s in (("pystan", 11), ("cmdstanpy", 12))]
    assert [f.backend for f in fits] == ["pystan", "cmdstanpy"] and fits[0].stancode() == fits[1].stancode()
    _agree(*fits, ["b_Intercept", "b_Days", "sd_Subject__Intercept", "sd_Subject__Days", "sigma"])
    # the seed model with defaults (the conditional program: parameters transformed in Stan)
    fits = [quiet_brm("fish_num ~ 1 + temperature + (temperature | weather)", data=fish, family="poisson",
                      backend=e, chains=4, iter=2000, seed=s) for e, s in (("pystan", 11), ("cmdstanpy", 12))]
    _agree(*fits, ["b_Intercept", "b_temperature", "sd_weather__Intercept", "sd_weather__temperature"])


def test_a_pystan_model_keeps_its_functions_when_httpstan_loads_another(sleep):
    """httpstan names every model module "stan_services"; CPython re-imports an already loaded one
    by rewriting the shared ``sys.modules["stan_services"]``. pystan does that while it samples, so
    a model's log density must not change when another program is (re)imported in between
    (CI once saw every lmer fit run a brm program's code after a brm fit)."""
    import httpstan.models

    other = sh.lmer("Reaction ~ Days + (1 | Subject)", data=sleep, backend="pystan", progress=False)
    assert other.density is not None  # the fit ran on numpy: load its program on pystan
    tiny = get_backend("pystan").compile(TINY, progress=False)
    density = tiny.log_density(TINY_DATA)  # the module loaded last: sys.modules["stan_services"]
    theta = np.array([0.3, -0.2, 0.1, 0.4])
    before = density.log_prob(theta)
    # a file loaded before is imported again (as httpstan does for every pystan call)
    httpstan.models.import_services_extension_module(httpstan.models.calculate_model_name(other.stancode()))
    assert density.log_prob(theta) == before
    assert tiny.log_density(TINY_DATA).log_prob(theta) == before
