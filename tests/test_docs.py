"""The documentation builds (mkdocs --strict), its examples run, and its bad-input table is true."""

from __future__ import annotations

import doctest
import importlib
import os
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: modules whose docstring examples need no sampling
DOCTEST_MODULES = ["stanhier", "stanhier.model.formula", "stanhier.model.design", "stanhier.model.priors", "stanhier.families",
                   "stanhier.api", "stanhier.errors", "stanhier.stan.codegen", "stanhier.record", "stanhier.cli",
                   "stanhier.backends.base", "stanhier.stan.names", "stanhier.stan.templating",
                   "stanhier.bayes.summary", "stanhier.bayes.predict", "stanhier.recordfiles",
                   "stanhier.backends", "stanhier.backends.declarations",
                   "stanhier.ml.crossed", "stanhier.ml.crossed_glmm", "stanhier.stan.marginal",
                   "stanhier.bayes.marginal", "stanhier.model.parameterization",
                   "stanhier.bayes.parameterization", "stanhier.model.crossprod", "stanhier.ml.aggregate",
                   "stanhier.progress", "stanhier.backends.toolchain", "stanhier.ml.boot", "stanhier.bayes.plots"]


def _renderer(name: str):
    """A page renderer from docs/assets (the scripts that write the docs' numbers)."""
    sys.path.insert(0, str(DOCS / "assets"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        msg = "mkdocs/mkdocstrings not installed (pip install -e '.[docs]'): docs build not tested"
        if os.environ.get("CI", "").lower() == "true":  # scripts/test.sh installs the docs extra
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "reference" / "api" / "index.html").exists()
    html = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "stanhier.bayes.brm.brm" in html and "Fit a Bayesian hierarchical model" in html


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_module_doctests(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples read tests/data/*.csv
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_markdown_examples_run(monkeypatch):
    """The `>>>` examples in the docs pages run as written."""
    monkeypatch.chdir(ROOT)
    for page in ("formula.md", "families.md", "priors.md"):
        text = (DOCS / page).read_text()
        parser = doctest.DocTestParser()
        test = parser.get_doctest(text, {}, page, str(DOCS / page), 0)
        assert test.examples, page
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test)
        assert runner.failures == 0, page


def test_public_functions_have_examples():
    """Every public function of the API has an example in its docstring."""
    import stanhier as sh
    from stanhier import cli, record

    names = [sh.brm, sh.make_stancode, sh.make_standata, sh.get_prior, sh.prior, record.save, record.load,
             record.write_stan_data, record.to_jsonable, record.data_sha256, cli.main, cli.parse_prior,
             cli.read_data, cli.example_data_path]
    missing = [f.__name__ for f in names if ">>>" not in (f.__doc__ or "")]
    assert not missing, missing


def test_bad_input_page_is_true():
    """Every case of docs/bad_input.md raises (or warns) what the page says."""
    sys.path.insert(0, str(DOCS / "assets"))
    try:
        cases = importlib.import_module("bad_input_cases")
    finally:
        sys.path.pop(0)
    page = (DOCS / "bad_input.md").read_text()
    for what, call, fn, expected in cases.CASES:
        cls, msg = cases.run_case(fn)
        assert cls == expected, (what, cls, msg)
        assert f"| {what} |" in page and f"`{expected}`" in page, what


def test_comparison_page_has_measured_numbers():
    """Every table of docs/comparison.md is the one rendered from the R references
    (tests/reference/*.json) and the measured numbers (docs/assets/comparison_numbers.json)."""
    import json
    import re

    page = (DOCS / "comparison.md").read_text()
    render = _renderer("render_comparison")
    sections = [sec for sec in render.main().split("### ") if sec.strip()]
    assert len(sections) == 7  # five ML and two Bayesian comparisons
    for sec in sections:
        title, _, table = sec.partition("\n")
        assert f"### {title}" in page, title
        assert table.strip() in page, title
    # the benchmark tables, from the files benchmarks/bench_bayes.py --json wrote
    for part in (render.bench_table(), render.seeds_table(), render.seeds_verdict(), render.integrated_intro(),
                 render.integrated_table(), render.integrated_text(), render.run_times_text(),
                 render.fish_divergence_text(), render.treatments_table(), render.centred_text()):
        assert part in page, part
    # spot checks against the JSON files directly (not through the renderer)
    ours = json.loads((DOCS / "assets" / "comparison_numbers.json").read_text())["cases"]
    ref = json.loads((ROOT / "tests" / "reference" / "ml_reference.json").read_text())["cases"]
    row = re.search(r"\| logLik \| (-?[\d.]+) \| (-?[\d.]+) \|", page)
    assert float(row.group(1)) == round(ref["sleepstudy_corr_REML"]["logLik"], 3)
    assert float(row.group(2)) == round(ours["sleepstudy_corr_REML"]["logLik"], 3)
    # cbpp: the independent Laplace calculation reproduces lme4's log-likelihood at lme4's estimates
    # to lme4's own evaluation error (3e-4) and stanhier's at stanhier's to 1e-6
    agg = json.loads((ROOT / "tests" / "reference" / "aggregation_reference.json").read_text())["cbpp_binomial"]
    at_lme4 = render.laplace_loglik_cbpp(list(agg["fixef"].values()), agg["theta"])
    assert abs(at_lme4 - agg["logLik"]) < 5e-4
    cb = ours["cbpp_binomial_laplace"]
    assert abs(render.laplace_loglik_cbpp(list(cb["fixef"].values()), cb["theta"][0]) - cb["logLik"]) < 1e-6
    assert cb["logLik"] > agg["logLik"]
    assert f"stanhier's Laplace optimum is higher than lme4's ({cb['logLik']:.5f} against {agg['logLik']:.5f})" in page
    div = ours["fish_slope_corr"]["diagnostics"]["divergent_transitions"]
    assert f"stanhier's run reports {div} divergent" in page
    centred = ours["fish_centered"]["diagnostics"]["divergent_transitions"]
    assert f'| **stanhier, `parameterization="centered"`** | **{centred}** |' in page
    assert f"for sleepstudy and {ours['fish_slope_corr']['seconds']:.0f} s for fish" in page


def test_large_data_page_has_measured_numbers():
    """docs/large_data.md quotes the worked example's output and the benchmark run verbatim."""
    page = (DOCS / "large_data.md").read_text()
    render = _renderer("render_large_data")
    assert render.example_output() in page
    assert render.bench_table() in page


def test_parameterization_page_table_is_rendered():
    """docs/parameterization.md's table of the auto rule's choices is what the rule decides now."""
    page = (DOCS / "parameterization.md").read_text()
    table = _renderer("render_parameterization").table()
    assert table in page
    assert "| fish `fish_num ~ 1 + temperature + (temperature \\| weather)` (poisson) | " in table


def test_index_page_outputs_are_rendered():
    """docs/index.md shows the brm summary its code printed (sampled once by
    docs/assets/render_index.py --sample) and the glmer printout a fresh fit prints now."""
    page = (DOCS / "index.md").read_text()
    render = _renderer("render_index")
    brm = render.brm_output()
    assert brm in page and "Group-level effects: (Intercept + temperature | weather) " in brm
    m = render._glmer()
    assert render.glmer_output(m) in page
    assert render.glmer_text(m) in page
