"""Families: numpy helpers against scipy.stats, Stan snippets against numpy, and beta end to end.

Each family module of ``stanhier/families/`` is checked here; a new family needs a
scipy reference in ``SCIPY`` (the test ``test_every_family_has_a_reference`` says so).
The Stan likelihood of each family is checked inside its real ``brm`` program: the
log density with the likelihood on minus the one with ``prior_only = 1`` is the
likelihood alone (priors and Jacobians cancel), compared with the numpy sum.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import stanhier as sh
import stanhier.families as fams
from stanhier.backends import get_backend
from stanhier.errors import FamilyError, PriorError
from stanhier.stan.codegen import build_model
from conftest import quiet_brm


def _mu(eta):
    return np.exp(eta)


#: family -> scipy frozen distribution of y given (eta, aux, trials): independent of stanhier's formulas
SCIPY = {
    "gaussian": lambda eta, a, n: stats.norm(eta, a["sigma"]),
    "student": lambda eta, a, n: stats.t(a["nu"], eta, a["sigma"]),
    "lognormal": lambda eta, a, n: stats.lognorm(a["sigma"], scale=np.exp(eta)),
    "Gamma": lambda eta, a, n: stats.gamma(a["shape"], scale=_mu(eta) / a["shape"]),
    "poisson": lambda eta, a, n: stats.poisson(_mu(eta)),
    "negbinomial": lambda eta, a, n: stats.nbinom(a["shape"], a["shape"] / (a["shape"] + _mu(eta))),
    "bernoulli": lambda eta, a, n: stats.bernoulli(special.expit(eta)),
    "binomial": lambda eta, a, n: stats.binom(n, special.expit(eta)),
    "beta": lambda eta, a, n: stats.beta(special.expit(eta) * a["phi"], (1 - special.expit(eta)) * a["phi"]),
}

#: random auxiliary values in a range where each family is well defined (student: nu > 2 for a variance)
AUX_DRAW = {
    "sigma": lambda r, k: r.uniform(0.3, 3.0, k),
    "nu": lambda r, k: r.uniform(2.5, 30.0, k),
    "shape": lambda r, k: r.uniform(0.5, 20.0, k),
    "phi": lambda r, k: r.uniform(1.0, 50.0, k),
}

#: dispersion of the unit deviance: deviance = 2 * dispersion * (loglik(saturated) - loglik)
DISPERSION = {"gaussian": lambda a: a["sigma"] ** 2, "Gamma": lambda a: 1 / a["shape"]}

NAMES = sorted(fams.FAMILIES)
#: every (family, link) a family takes
COMBOS = [(name, link) for name in NAMES for link in fams.FAMILIES[name].links]


def eta_shift(fam) -> float:
    """Keeps mu inside the family's range at links that do not: positive eta at the identity
    and inverse links of positive families, negative eta at the log link of probabilities."""
    if fam.link in ("identity", "inverse") and fam.mean_range[0] == 0:
        return 5.0
    return -5.0 if fam.link == "log" and fam.mean_range[1] == 1 else 0.0


def random_point(name: str, k: int = 50, seed: int = 0):
    """Random eta, aux, trials and y (drawn from scipy, not from the family) for one family."""
    r = np.random.default_rng(seed)
    fam = sh.families.get_family(name)
    eta = r.normal(0, 1, k) + (0.5 if fam.link == "log" else 0.0)
    aux = {p: AUX_DRAW[p](r, k) for p in fam.aux}
    trials = r.integers(1, 30, k) if fam.uses_trials else None
    y = np.asarray(SCIPY[name](eta, aux, trials).rvs(random_state=r), float)
    if fam.support == "unit":
        y = np.clip(y, 1e-6, 1 - 1e-6)
    return fam, eta, aux, trials, y


def test_every_family_has_a_reference():
    assert set(SCIPY) == set(fams.FAMILIES), "add a scipy reference for each new family"
    assert all(p in AUX_DRAW for cls in fams.FAMILIES.values() for p in (a.name for a in cls.aux_params))


@pytest.mark.parametrize("name", NAMES)
def test_loglik_mean_variance_against_scipy(name):
    fam, eta, aux, trials, y = random_point(name)
    ref = SCIPY[name](eta, aux, trials)
    ll_ref = ref.logpmf(y) if fam.is_discrete else ref.logpdf(y)
    np.testing.assert_allclose(fam.loglik(y, eta, aux, trials), ll_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fam.mean(eta, aux, trials), ref.mean(), rtol=1e-9)
    np.testing.assert_allclose(fam.variance(eta, aux, trials), ref.var(), rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_rng_matches_mean_and_variance(name):
    """50,000 draws at one point: sample mean within 5 standard errors of scipy's mean,
    sample variance within 5% of scipy's variance."""
    fam, eta, aux, trials, _ = random_point(name, k=1, seed=3)
    ref = SCIPY[name](eta, aux, trials)
    n = 50_000
    draws = fam.rng(np.repeat(eta, n), {a: np.repeat(v, n) for a, v in aux.items()}, np.random.default_rng(1),
                    None if trials is None else np.repeat(trials, n))
    assert draws.shape == (n,)
    mean, var = float(ref.mean()[0]), float(ref.var()[0])
    assert abs(draws.mean() - mean) < 5 * np.sqrt(var / n), (draws.mean(), mean)
    if name != "student":  # heavy tails: the sample variance converges slowly
        assert draws.var() == pytest.approx(var, rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_unit_deviance_is_twice_the_loglik_gap_to_the_saturated_model(name):
    fam, eta, aux, trials, y = random_point(name)
    try:
        dev = fam.unit_deviance(y, eta, aux, trials)
    except FamilyError:
        assert not fam.glmm_capable and name != "gaussian", f"{name}: glmer/lmer residuals need a deviance"
        return
    with np.errstate(divide="ignore"):
        eta_sat = fam.linkfun(y / trials if fam.uses_trials else y)
    ref, sat = SCIPY[name](eta, aux, trials), SCIPY[name](eta_sat, aux, trials)
    if fam.is_discrete:
        gap = sat.logpmf(y) - ref.logpmf(y)
    else:
        gap = sat.logpdf(y) - ref.logpdf(y)
    disp = DISPERSION.get(name, lambda a: 1.0)(aux)
    np.testing.assert_allclose(dev, 2 * disp * gap, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in NAMES if fams.FAMILIES[n].glmm_lpmf is not None])
def test_irls_working_quantities_are_the_glm_ones(name):
    """IRLS weight (dmu/deta)^2 / V(mu) and working response eta + (y - E y) / (dmu/deta),
    with V from the Poisson (log link), binomial (logit link) or constant (gaussian, identity link)
    variance, by finite differences."""
    fam, eta, aux, trials, y = random_point(name)
    n = trials if trials is not None else np.ones_like(y)
    w, z = fam.irls_working(y, eta, n)
    h = 1e-6
    mean = {"log": np.exp, "identity": lambda e: e}.get(fam.link, lambda e: n * special.expit(e))
    dmu = (mean(eta + h) - mean(eta - h)) / (2 * h)
    var = {"log": mean(eta), "identity": np.ones_like(eta)}.get(fam.link, dmu)
    np.testing.assert_allclose(w, dmu ** 2 / var, rtol=1e-6)
    np.testing.assert_allclose(z, eta + (y - mean(eta)) / dmu, rtol=1e-6)


def test_response_checks():
    with pytest.raises(FamilyError, match=r"beta.*outside the open interval \(0, 1\).*row\(s\) 1"):
        fams.beta().check_response(np.array([0.2, 1.0, 0.5]), "y")
    with pytest.raises(FamilyError, match="outside the open interval"):
        fams.beta().check_response(np.array([0.0]), "y")
    fams.beta().check_response(np.array([0.01, 0.99]), "y")
    df = pd.DataFrame({"y": [0.2, 0.0, 0.5, 0.7], "x": [1.0, 2.0, 3.0, 4.0], "g": list("aabb")})
    with pytest.raises(FamilyError, match="column 'y'"):
        sh.make_stancode("y ~ x + (1 | g)", df, family="beta")
    with pytest.raises(FamilyError, match="glmer supports the families poisson, binomial, bernoulli, negbinomial"):
        sh.glmer("y ~ x + (1 | g)", df.assign(y=[0.2, 0.3, 0.5, 0.7]), family="beta")
    with pytest.raises(FamilyError, match="Link 'log' is not supported for family 'beta'"):
        fams.beta("log")


def test_beta_priors_and_program():
    df = pd.DataFrame({"y": [0.2, 0.4, 0.5, 0.7], "x": [1.0, 2.0, 3.0, 4.0], "g": list("aabb")})
    tab = sh.get_prior("y ~ x + (1 | g)", df, family="beta")
    phi = tab[tab["class"] == "phi"].iloc[0]
    assert phi["prior"] == "gamma(0.01, 0.01)" and phi["lb"] == "0"
    assert tab[tab["class"] == "Intercept"].iloc[0]["prior"] == "student_t(3, 0, 2.5)"  # logit link: brms's
    code = sh.make_stancode("y ~ x + (1 | g)", df, family="beta")
    assert "real<lower=0> phi;  // precision parameter" in code
    assert "target += beta_lpdf(Y | mu * phi, (1 - mu) * phi);" in code
    with pytest.raises(PriorError, match="no such parameter"):
        sh.get_prior("y ~ x + (1 | g)", df, family="beta", prior=[sh.prior("normal(0, 1)", class_="sigma")])


def test_family_module_doctests():
    """Every family module's examples run (a new module is picked up without listing it)."""
    for mod in pkgutil.iter_modules(fams.__path__):
        module = importlib.import_module(f"stanhier.families.{mod.name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and (mod.name == "base" or result.attempted > 0), mod.name


# --------------------------------------------------------------------------- Stan snippets
def snippet_data(fam, seed: int = 11) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    n = 40
    g = np.repeat(np.arange(5), n // 5)
    x = r.normal(size=n)
    eta = 0.3 + 0.5 * x + r.normal(0, 0.3, 5)[g]
    aux = {p: np.full(n, AUX_DRAW[p](r, 1)[0]) for p in fam.aux}
    trials = r.integers(1, 20, n) if fam.uses_trials else None
    y = SCIPY[fam.name](eta, aux, trials).rvs(random_state=r).astype(float)
    if fam.support == "unit":
        y = np.clip(y, 1e-4, 1 - 1e-4)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    if trials is not None:
        df["n"] = trials
    return df


def harness_program() -> str:
    """One Stan program holding every registered family's ``brm`` likelihood statements at each
    of its links, each inside its own ``_lp`` function, chosen by the data ``family`` (one
    compile for all). The context is ``brm.stan``'s: ``mu`` is the linear predictor without ``Xc * b``."""
    aux = sorted(fams.aux_names())
    funcs, calls = [], []
    for i, (name, link) in enumerate(COMBOS, start=1):
        fam = fams.family(name, link)
        ytype, ydata = ("array[] int", "Y_int") if fam.is_discrete else ("vector", "Y_real")
        args = [f"{ytype} Y", "array[] int trials", "vector mu_in", "matrix Xc", "vector b"]
        args += [f"real {a}" for a in fam.aux]
        body = "\n".join(f"    {line}" for line in fam.stan_model.splitlines())
        funcs.append(f"  void lik_{i}_lp({', '.join(args)}) {{  // {name}, {link} link\n"
                     f"    vector[rows(mu_in)] mu = mu_in;\n{body}\n  }}")
        call_args = ", ".join([ydata, "trials", "mu", "Xc", "b"] + list(fam.aux))
        calls.append(f"  if (family == {i}) {{\n    lik_{i}_lp({call_args});\n  }}")
    aux_data = "".join(f"  real {a};\n" for a in aux)
    return (
        "functions {\n" + "\n".join(funcs) + "\n}\n"
        "data {\n  int<lower=1> N;\n  int<lower=0> Kc;\n  matrix[N, Kc] Xc;\n  vector[N] mu_re;\n"
        "  array[N] int Y_int;\n  vector[N] Y_real;\n  array[N] int trials;\n  int family;\n" + aux_data + "}\n"
        "parameters {\n  vector[Kc] b;\n  real Intercept;\n}\n"
        "model {\n  vector[N] mu = Intercept + mu_re;\n" + "\n".join(calls) + "\n}\n"
    )


@pytest.fixture(scope="module")
def harness():
    return get_backend("pystan").compile(harness_program(), progress=False)


@pytest.mark.pystan  # names pystan: runs once
@pytest.mark.parametrize("name,link", COMBOS)
def test_stan_likelihood_matches_numpy(name, link, harness):
    """Each family's Stan likelihood statements at each of its links (the link's Stan inverse,
    e.g. Stan's ``Phi``) against its numpy log-likelihood (the link's numpy inverse, e.g.
    scipy's ``ndtr``), summed over 40 rows, at three random (b, Intercept) with random
    auxiliary values."""
    fam = fams.family(name, link)
    df = snippet_data(fams.get_family(name))
    r = np.random.default_rng(5)
    y = df["y"].to_numpy()
    Xc = np.column_stack([df["x"] - df["x"].mean(), r.normal(size=len(df))])
    offset = r.normal(0, 0.3, len(df)) + eta_shift(fam)
    trials = df["n"].to_numpy() if fam.uses_trials else np.ones(len(df), int)
    for _ in range(3):
        aux = {a: float(AUX_DRAW[a](r, 1)[0]) for a in fams.aux_names()}
        data = dict(N=len(df), Kc=2, Xc=Xc, mu_re=offset, Y_int=np.round(y).astype(int) if fam.is_discrete
                    else np.zeros(len(df), int), Y_real=y if not fam.is_discrete else np.zeros(len(df)),
                    trials=trials.astype(int), family=COMBOS.index((name, link)) + 1, **aux)
        theta = r.uniform(-1, 1, 3)  # b[1], b[2], Intercept
        eta = theta[2] + offset + Xc @ theta[:2]
        expected = float(np.sum(fam.loglik(y, eta, aux, trials if fam.uses_trials else None)))
        got = harness.log_density(data).log_prob(theta)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-8), (name, link, got, expected)


@pytest.mark.parametrize("name,link", [c for c in COMBOS if c[1] != fams.FAMILIES[c[0]].links[0]])
def test_a_link_changes_only_mu(name, link):
    """At any link the family is its distribution at mu = inverse link(eta): loglik, mean,
    variance and deviance equal the default link's at the eta giving the same mu."""
    fam, base = fams.family(name, link), fams.get_family(name)
    _, eta, aux, trials, y = random_point(name)
    if eta_shift(fam) or link == "sqrt":
        eta = np.sign(eta_shift(fam) or 1.0) * (np.abs(eta) + 0.2)
    eta_base = base.linkfun(fam.inverse_link(eta))
    for method in ("loglik", "unit_deviance"):
        try:
            got = getattr(fam, method)(y, eta, aux, trials)
        except FamilyError:
            continue
        np.testing.assert_allclose(got, getattr(base, method)(y, eta_base, aux, trials), rtol=1e-9, atol=1e-9)
    for method in ("mean", "variance"):
        np.testing.assert_allclose(getattr(fam, method)(eta, aux, trials), getattr(base, method)(eta_base, aux, trials),
                                   rtol=1e-9)


@pytest.mark.parametrize("link", sorted(fams.LINKS))
def test_link_functions(link):
    """Each link: link(inverse(eta)) = eta, mu_eta = d inverse / d eta (central differences),
    log_mu / log1m_mu = log(mu) / log(1 - mu), and the inverse against an independent formula."""
    lk = fams.LINKS[link]
    eta = np.linspace(0.2, 2.5, 12) if link in ("sqrt", "inverse") else np.linspace(-2.5, 2.5, 12)
    mu = lk.inverse(eta)
    np.testing.assert_allclose(lk.link(mu), eta, rtol=1e-9, atol=1e-12)
    h = 1e-6
    np.testing.assert_allclose(lk.mu_eta(eta), (lk.inverse(eta + h) - lk.inverse(eta - h)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(lk.log_mu(eta), np.log(mu), rtol=1e-12)
    if lk.mu_range == (0.0, 1.0):
        np.testing.assert_allclose(lk.log1m_mu(eta), np.log1p(-mu), rtol=1e-12)
    independent = {"identity": eta, "log": np.exp(eta), "logit": 1 / (1 + np.exp(-eta)),
                   "probit": stats.norm.cdf(eta), "cloglog": 1 - np.exp(-np.exp(eta)),
                   "cauchit": stats.cauchy.cdf(eta), "sqrt": eta ** 2, "inverse": 1 / eta}
    np.testing.assert_allclose(mu, independent[link], rtol=1e-12)
    assert np.all((mu >= lk.mu_range[0]) & (mu <= lk.mu_range[1]))


def test_tail_stable_binomial_loglik():
    """Far in the tails the binomial and Bernoulli log-likelihoods use the link's log(mu)
    and log(1 - mu): finite where 1 - mu rounds to 0 (probit eta = 10: log(1 - mu) = -53.2)."""
    ll = fams.family("bernoulli", "probit").loglik(np.array([0.0]), np.array([10.0]), {})
    assert ll[0] == pytest.approx(stats.norm.logsf(10.0), rel=1e-12)
    ll = fams.family("binomial", "cloglog").loglik(np.array([0.0]), np.array([4.0]), {}, np.array([3]))
    assert ll[0] == pytest.approx(-3 * np.exp(4.0), rel=1e-12)


def test_family_strings_and_link_errors():
    assert fams.get_family("binomial(link='probit')") == fams.family("binomial", link="probit")
    assert fams.get_family('poisson(link = "sqrt")').link == "sqrt"
    assert fams.get_family("binomial(cloglog)").link == "cloglog"
    assert fams.get_family("Gamma(link=inverse)").spec == "Gamma(link='inverse')"
    assert sh.family("gaussian", link="log").stan_model.startswith("mu = exp(mu + Xc * b);")
    with pytest.raises(ValueError, match=r"Link 'probit' is not supported for family 'poisson'; "
                                         r"supported links: log, identity, sqrt"):
        sh.family("poisson", link="probit")
    with pytest.raises(ValueError, match=r"Link 'logt' is not supported for family 'binomial'; "
                                         r"supported links: logit, probit, cloglog, cauchit, log"):
        fams.get_family("binomial(link='logt')")
    with pytest.raises(FamilyError, match="Cannot read the family"):
        fams.get_family("binomial(link=)")
    with pytest.raises(FamilyError, match="Unknown family 'binomal'"):
        fams.get_family("binomal(link='probit')")


# --------------------------------------------------------------------------- beta end to end
@pytest.fixture(scope="module")
def beta_fit():
    rng = np.random.default_rng(2024)
    n_groups, per = 20, 20
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    u = rng.normal(0, 0.5, n_groups)
    mu = special.expit(-0.5 + 1.0 * x + u[g])
    phi = 10.0
    y = rng.beta(mu * phi, (1 - mu) * phi)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{k:02d}" for k in g]})
    return quiet_brm("y ~ x + (1 | g)", data=df, family="beta", chains=2, iter=1000, seed=8)


def test_beta_against_known_truth(beta_fit):
    """400 rows, 20 groups: each true value within 3 posterior SDs of the posterior mean."""
    t = beta_fit.summary_table()
    for name, truth in [("b_Intercept", -0.5), ("b_x", 1.0), ("sd_g__Intercept", 0.5), ("phi", 10.0)]:
        est, sd = t.loc[name, "Estimate"], t.loc[name, "Est.Error"]
        assert abs(est - truth) < 3 * sd, (name, est, sd)
        assert t.loc[name, "Rhat"] < 1.05, name
    text = beta_fit.summary()
    assert " Family: beta " in text and "  Links: mu = logit; phi = identity " in text


def test_beta_predictions_and_loo(beta_fit):
    ep = beta_fit.posterior_epred()
    assert ep.shape == (1000, 400) and np.all((ep > 0) & (ep < 1))
    pp = beta_fit.posterior_predict(ndraws=50, seed=1)
    assert np.all((pp > 0) & (pp < 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = beta_fit.loo()
    # elpd_loo is the sum of log predictive densities: finite and below the in-sample lpd
    ll = beta_fit.log_lik()  # (chain, draw, N)
    assert ll.shape == (2, 500, 400)
    ll = ll.reshape(-1, 400)
    lpd = float(np.sum(special.logsumexp(ll, axis=0) - np.log(ll.shape[0])))
    assert np.isfinite(res.elpd_loo) and res.elpd_loo < lpd
    assert lpd - res.elpd_loo == pytest.approx(res.p_loo, rel=1e-6)


@pytest.mark.pystan  # names pystan: runs once
def test_beta_brm_program_likelihood_matches_numpy(beta_fit):
    """In the real brm program of the fit (cached: no compile): log density minus the one with
    prior_only = 1 is the likelihood alone (priors and Jacobian cancel) = the numpy sum."""
    spec = beta_fit.spec
    model = get_backend("pystan").compile(spec.code, progress=False)
    data = spec.standata()
    full, prior = model.log_density(data), model.log_density({**data, "prior_only": 1})
    d, gt = spec.design, spec.design.terms[0]
    r = np.random.default_rng(5)
    for _ in range(3):
        theta = r.uniform(-1.5, 1.5, full.n_params)
        v = full.constrain(theta)
        eta = d.X @ np.concatenate([np.atleast_1d(v["b_Intercept"]), np.atleast_1d(v["b"])])
        eta = eta + np.sum(gt.Z * np.asarray(v["r_1"])[gt.J], axis=1)
        expected = float(np.sum(spec.family.loglik(d.y, eta, {"phi": float(np.ravel(v["phi"])[0])})))
        assert full.log_prob(theta) - prior.log_prob(theta) == pytest.approx(expected, rel=1e-8)
