"""Plots: files are written, and the plotted numbers are the fit's numbers."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy.stats import gaussian_kde  # noqa: E402

import stanhier as sh  # noqa: E402
from stanhier.bayes.plots import conditional_effects, plot_ranef, pp_check  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _written(path):
    return path.exists() and path.stat().st_size > 1000


def test_trace_plot(sleep_fit, tmp_path):
    fig = sleep_fit.plot(path=tmp_path / "trace.png")
    assert _written(tmp_path / "trace.png")
    names = ["sd_Subject__Intercept", "sd_Subject__Days", "cor_Subject__Intercept__Days",
             "b_Intercept", "b_Days", "sigma"]
    assert list(fig.stanhier_data) == names
    # one trace line per chain in the right-hand panel of the b_Days row, with its draws
    ax = fig.axes[2 * names.index("b_Days") + 1]
    ydata = np.array([line.get_ydata() for line in ax.get_lines()[:4]])
    np.testing.assert_allclose(np.sort(ydata.ravel()),
                               np.sort(np.asarray(sleep_fit.idata.posterior["b_Days"]).ravel()))
    with pytest.raises(sh.ArgumentError, match="b_Weeks"):
        sleep_fit.plot(["b_Weeks"])


def test_pp_check_density_overlay(sleep_fit, sleep, tmp_path):
    fig = sleep_fit.pp_check(ndraws=15, path=tmp_path / "ppc.png")
    assert _written(tmp_path / "ppc.png")
    data = fig.stanhier_data
    y = sleep["Reaction"].to_numpy(float)
    np.testing.assert_allclose(data["y"], gaussian_kde(y)(data["x"]))
    yrep = sleep_fit.posterior_predict(ndraws=15, seed=1)
    np.testing.assert_allclose(data["yrep"], [gaussian_kde(r)(data["x"]) for r in yrep])
    lines = fig.axes[0].get_lines()
    assert len([ln for ln in lines if len(ln.get_xdata())]) == 16
    np.testing.assert_allclose(lines[15].get_ydata(), data["y"])


def test_pp_check_bars_for_counts(fish_fit, fish, tmp_path):
    fig = pp_check(fish_fit, ndraws=20, path=tmp_path / "bars.png")
    assert _written(tmp_path / "bars.png")
    data = fig.stanhier_data
    y = fish["fish_num"].to_numpy()
    heights = np.array([p.get_height() for p in fig.axes[0].patches])
    np.testing.assert_array_equal(heights, [np.sum(y == v) for v in data["x"]])
    yrep = fish_fit.posterior_predict(ndraws=20, seed=1)
    np.testing.assert_allclose(data["yrep"]["mean"], [np.mean(np.sum(yrep == v, axis=1)) for v in data["x"]])
    with pytest.raises(sh.ArgumentError, match="type"):
        pp_check(fish_fit, type="hist")


def test_conditional_effects_line_is_epred_mean(sleep_fit, sleep, tmp_path):
    fig = conditional_effects(sleep_fit, "Days", resolution=25, path=tmp_path / "ce.png")
    assert _written(tmp_path / "ce.png")
    line = fig.axes[0].get_lines()[0]
    x = line.get_xdata()
    np.testing.assert_allclose(x, np.linspace(0, 9, 25))
    ep = sleep_fit.posterior_epred(pd.DataFrame({"Days": x}), re_formula="NA")
    np.testing.assert_allclose(line.get_ydata(), ep.mean(0))
    tab = fig.stanhier_data
    np.testing.assert_allclose(tab["lower__"], np.quantile(ep, 0.025, axis=0))
    np.testing.assert_allclose(tab["upper__"], np.quantile(ep, 0.975, axis=0))
    # the band is the filled polygon between lower and upper
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(tab["lower__"].min())
    assert band[:, 1].max() == pytest.approx(tab["upper__"].max())


def test_conditional_effects_by_grouping_factor(sleep_fit, tmp_path):
    fig = sleep_fit.conditional_effects("Days:Subject", resolution=4, by_levels=[308, 309, 310],
                                        path=tmp_path / "ce_by.png")
    assert _written(tmp_path / "ce_by.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    x = np.linspace(0, 9, 4)
    for subj, line in zip([308, 309, 310], lines):
        ep = sleep_fit.posterior_epred(pd.DataFrame({"Days": x, "Subject": subj}))
        np.testing.assert_allclose(line.get_ydata(), ep.mean(0))
    with pytest.raises(sh.ArgumentError, match="'Weeks'"):
        sleep_fit.conditional_effects("Weeks")


def test_conditional_effects_categorical_predictor(fish_fit, fish):
    # by a categorical column of the data: a numeric 0/1 predictor of the fish model
    fig = conditional_effects(fish_fit, "temperature", by="weather", resolution=10)
    tab = fig.stanhier_data
    assert sorted(tab["weather"].unique()) == [0, 1]
    sub = tab[tab["weather"] == 1]
    ep = fish_fit.posterior_epred(pd.DataFrame({"temperature": sub["temperature"], "weather": 1}))
    np.testing.assert_allclose(sub["estimate__"], ep.mean(0))


def test_ranef_caterpillar_bayes(sleep_fit, tmp_path):
    fig = plot_ranef(sleep_fit, path=tmp_path / "ranef.png")
    assert _written(tmp_path / "ranef.png")
    tab = fig.stanhier_data
    re = sleep_fit.ranef()["Subject"]
    days = tab[tab["coef"] == "Days"].set_index("level")
    np.testing.assert_allclose(days.loc[list(re.index), "estimate"], re[("Days", "Estimate")])
    np.testing.assert_allclose(days.loc[list(re.index), "lower"], re[("Days", "Q2.5")])
    # the plotted points are the sorted estimates
    pts = fig.axes[1].get_lines()[0].get_xdata()
    np.testing.assert_allclose(pts, np.sort(re[("Days", "Estimate")]))


@pytest.mark.engine_free  # no Stan program runs
def test_ranef_caterpillar_ml(sleep, tmp_path):
    from stanhier.ml.api import lmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)
    fig = plot_ranef(m, path=tmp_path / "ranef_ml.png")
    assert _written(tmp_path / "ranef_ml.png")
    tab = fig.stanhier_data
    ref = m.ranef(as_frame=True)
    np.testing.assert_allclose(tab["estimate"], ref["condval"])
    np.testing.assert_allclose(tab["upper"] - tab["estimate"], 1.959964 * ref["condsd"], rtol=1e-5)
    with pytest.raises(sh.ArgumentError, match="Plant"):
        plot_ranef(m, group="Plant")


@pytest.mark.engine_free  # no Stan program runs
def test_conditional_effects_ml_point_line(sleep):
    from stanhier.ml.api import lmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)
    fig = conditional_effects(m, "Days", resolution=5)
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), m.fixef()["(Intercept)"] + m.fixef()["Days"] * np.linspace(0, 9, 5))


@pytest.mark.engine_free  # no Stan program runs
def test_conditional_effects_many_levels_says_so_and_keeps_lines_visible(sleep, tmp_path):
    """18 subjects, 12 drawn by default: a warning and the legend's title say so and name how to
    choose; every drawn level has its own colour; the legend sits beside the axes (no line is
    hidden under it), also when all 18 are drawn."""
    from stanhier.ml.api import lmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False, progress=False)
    with pytest.warns(sh.StanhierWarning, match=r"'Subject' has 18 levels; the plot draws the first 12 "
                                                r"\(max_levels=12\)\. Choose the levels with by_levels="):
        fig = conditional_effects(m, "Days", by="Subject", resolution=5, path=tmp_path / "ce12.png")
    assert _written(tmp_path / "ce12.png")
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "Subject (12 of 18 levels)"
    assert [t.get_text() for t in legend.get_texts()] == [str(s) for s in sorted(sleep["Subject"].unique())[:12]]
    for n, f in ((12, fig), (18, None)):
        if f is None:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # every level drawn: no warning
                f = conditional_effects(m, "Days", by="Subject", max_levels=18, resolution=5)
            assert f.axes[0].get_legend().get_title().get_text() == "Subject"
        lines = f.axes[0].get_lines()
        assert len(lines) == n
        assert len({matplotlib.colors.to_rgba(ln.get_color()) for ln in lines}) == n
        renderer = f.canvas.get_renderer()
        box, axes_box = f.axes[0].get_legend().get_window_extent(renderer), f.axes[0].get_window_extent(renderer)
        assert box.x0 > axes_box.x1  # beside the axes: overlaps no line
