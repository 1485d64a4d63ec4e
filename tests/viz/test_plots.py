"""Verification plots name the verified variable and its units in their titles."""

import numpy as np
import xarray as xr

from def_ray.viz.plots import _event


def test_event_names_the_variable_and_units():
    qpe = xr.DataArray(np.zeros(3), name="qpe_01h", attrs={"units": "mm"})
    assert _event(qpe, 2.5) == "qpe_01h ≥ 2.5 mm"
    assert _event(xr.DataArray(np.zeros(3), name="refc"), 35.0) == "refc ≥ 35"
    assert _event(xr.DataArray(np.zeros(3)), 1.0) == "value ≥ 1"


# -- the plots themselves ---------------------------------------------------------------------------------------------

import pytest  # noqa: E402

import def_ray.viz.plots as plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    kept = []
    save = plots._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _case(leads=(3,), members=6, seed=0):
    rng = np.random.default_rng(seed)
    truth = xr.DataArray(rng.normal(20, 15, (2, len(leads), 16, 16)).astype("float32"), dims=("case", "lead", "y", "x"),
                         coords={"lead": list(leads)}, name="refc", attrs={"units": "dBZ"})
    fc = {"diffusion": xr.DataArray(rng.normal(20, 15, (2, members, len(leads), 16, 16)).astype("float32"),
                                    dims=("case", "member", "lead", "y", "x"), coords={"lead": list(leads)}),
          "persistence": xr.DataArray(rng.normal(20, 15, (2, 1, len(leads), 16, 16)).astype("float32"),
                                      dims=("case", "member", "lead", "y", "x"), coords={"lead": list(leads)})}
    return fc, truth


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_reliability_has_sharpness_histogram_no_skill_and_climatology(tmp_path, figures):
    fc, truth = _case()
    plots.reliability_plot(tmp_path / "r.png", fc, truth, [20.0])
    fig = figures[-1]
    top, bottom = fig.axes
    clim = float((truth.values >= 20).mean())
    labels = {line.get_label(): line for line in top.get_lines()}
    assert {"perfect", "no skill", "diffusion"} <= set(labels) and any(k.startswith("climatology") for k in labels)
    x, y = labels["no skill"].get_data()
    assert np.allclose(y, (np.asarray(x) + clim) / 2)  # halfway between climatology and the diagonal
    # the sharpness histogram: counts per forecast-probability bin add up to every point
    hist = [p for p in bottom.patches if p.get_label() == "diffusion"][0]
    assert hist.get_data().values.sum() == truth.size and "count" in bottom.get_ylabel()
    assert "lead 3" in _titles(fig)[0]
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_fss_against_scale_in_km_at_the_data_lead(tmp_path, figures):
    fc, truth = _case(leads=(2, 4))
    plots.fss_plot(tmp_path / "f.png", fc, truth, [20.0], [1, 3, 9], km_per_pixel=3.0, step_minutes=30)
    fig = figures[-1]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "neighbourhood width (km)"
    assert np.allclose(ax.get_lines()[0].get_xdata(), [3, 9, 27])
    assert [t.split(", ")[-1] for t in _titles(fig)] == ["lead +1 h", "lead +2 h"]  # leads 2 and 4 of 30 min
    # without a spacing: grid points, said so
    plots.fss_plot(tmp_path / "g.png", fc, truth, [20.0], [1, 3], step_minutes=None)
    assert figures[-1].axes[0].get_xlabel() == "neighbourhood width (grid points)"
    assert "lead 2" in _titles(figures[-1])[0]


def test_no_plot_says_lead_1_for_other_leads(tmp_path, figures):
    fc, truth = _case(leads=(5,))
    plots.verification_plots(tmp_path, fc, truth, [20.0, 35.0], [1, 3], km_per_pixel=1.0)
    text = " ".join(t for fig in figures for t in _titles(fig))
    assert "lead 1" not in text and "lead 5" in text
    fss = [f for f in figures if "FSS" in " ".join(_titles(f))][0]
    assert np.allclose(fss.axes[0].get_lines()[0].get_xdata(), [1, 3])


def test_spread_error_axes_are_equal_log_scales_with_the_20_percent_band(tmp_path, figures):
    fc, truth = _case(leads=(1, 2))
    plots.spread_error_plot(tmp_path / "s.png", fc, truth)
    fig = figures[-1]
    for ax in fig.axes:
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert ax.get_xlim() == pytest.approx(ax.get_ylim()) and ax.get_aspect() == 1.0  # the diagonal at 45 degrees
        assert ax.xaxis.get_major_formatter()(0.2) == ax.yaxis.get_major_formatter()(0.2) == "0.2"  # plain numbers
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert "persistence" not in " ".join(lines)  # a single member has no spread
        x, y = lines["consistent"].get_data()
        assert np.allclose(x, y)
        band = ax.collections[0].get_paths()[0].vertices  # spread within 20 % of the RMSE: RMSE in [x / 1.2, x / 0.8]
        inner = band[(band[:, 0] > x[1]) & (band[:, 0] < x[-2])]
        assert np.allclose(np.sort(np.unique(np.round(inner[:, 1] / inner[:, 0], 6))), [1 / 1.2, 1 / 0.8])
        spread, rmse = lines[next(k for k in lines if k.startswith("diffusion"))].get_data()
        assert ax.get_xlim()[0] < np.min(spread) and np.max(rmse) < ax.get_ylim()[1]  # every bin in view


@pytest.mark.parametrize("varying", [True, False])
def test_reliability_bars_show_where_a_calibrated_ensemble_would_fall(tmp_path, figures, varying):
    """Members and truth drawn alike (a calibrated ensemble of 20): its points lie inside their 90 % bars but for
    chance, also where every point has the same probability 0.5, whose diagram is flat at 0.5, far off the diagonal
    (a finite ensemble's shares spread around 0.5 while the truth stays at it): the bars follow it there.  The truth
    25 dBZ wetter than the members' distribution: every point above its bar but the top one (a bar there can reach
    frequency 1)."""
    from matplotlib.collections import LineCollection

    rng = np.random.default_rng(3)
    mean = rng.uniform(-10, 50, (2, 1, 64, 64)) if varying else np.full((2, 1, 64, 64), 20.0)
    dims = ("case", "member", "lead", "y", "x")
    fc = {"diffusion": xr.DataArray(rng.normal(mean[:, None], 15, (2, 20, 1, 64, 64)), dims=dims,
                                    coords={"lead": [1]})}

    def points_and_bars(truth_shift):
        truth = xr.DataArray(rng.normal(mean, 15) + truth_shift, dims=("case", "lead", "y", "x"),
                             coords={"lead": [1]}, name="refc", attrs={"units": "dBZ"})
        plots.reliability_plot(tmp_path / "r.png", fc, truth, [20.0])
        top = figures[-1].axes[0]
        line = next(ln for ln in top.get_lines() if ln.get_label() == "diffusion")
        bars = next(c for c in top.collections if isinstance(c, LineCollection)
                    and c.get_label() == "diffusion: 90 % if calibrated")
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        segs = {round(float(s[0][0]), 9): (float(s[0][1]), float(s[1][1])) for s in bars.get_segments()}
        assert sorted(segs) == [round(float(v), 9) for v in x]  # one bar a point
        bar = [segs[round(float(v), 9)] for v in x]
        return x, y, bar

    x, y, bar = points_and_bars(0.0)
    inside = [lo <= v <= hi for (lo, hi), v in zip(bar, y)]
    assert len(inside) >= 8 and sum(inside) >= len(inside) / 2 + 1
    if not varying:  # flat at 0.5: bars of the well-filled bins at 0.2-0.35 lie far above the diagonal, at 0.65-0.8
        low, high = (x >= 0.2) & (x <= 0.35), (x >= 0.65) & (x <= 0.8)  # far below
        assert low.sum() >= 1 and high.sum() >= 1
        assert all(bar[i][0] > x[i] + 0.1 for i in np.flatnonzero(low))
        assert all(bar[i][1] < x[i] - 0.1 for i in np.flatnonzero(high))
    x, y, bar = points_and_bars(25.0)
    assert all(v > hi for (_, hi), v in zip(bar[:-1], y[:-1]))
    # two members: the points, but no bars (one member against one other gives no calibrated draws)
    fc["diffusion"] = fc["diffusion"].isel(member=slice(0, 2))
    truth = xr.DataArray(rng.normal(mean, 15), dims=("case", "lead", "y", "x"), coords={"lead": [1]}, name="refc")
    plots.reliability_plot(tmp_path / "r2.png", fc, truth, [20.0])
    top = figures[-1].axes[0]
    assert any(ln.get_label() == "diffusion" for ln in top.get_lines())
    assert not any(c.get_label().endswith("90 % if calibrated") for c in top.collections)
