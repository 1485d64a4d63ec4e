"""Intervals of score differences from resampling init times: known answers on constructed cases."""

import numpy as np
import pytest
import xarray as xr

from def_ray.verify import metrics
from def_ray.verify.significance import compare_to_baselines, comparison_section, interval, resample_weights


def test_resampling_draws_the_cases_of_one_init_time_together():
    groups = np.repeat([10, 20, 30, 40], [1, 2, 3, 4])  # 10 cases of 4 init times
    w = resample_weights(groups, n_boot=2000, seed=1)
    assert w.shape == (2000, 10)
    for g in np.unique(groups):  # every case of a group weighs the same in every resample
        cols = w[:, groups == g]
        assert (cols == cols[:, :1]).all()
    per_group = w[:, [0, 1, 3, 6]]
    assert (per_group.sum(1) == 4).all()  # 4 groups drawn, with replacement
    assert per_group.mean(0) == pytest.approx(np.ones(4), abs=0.05)  # each group drawn once on average
    assert interval(np.array([np.nan, np.nan])) == [None, None]


def _cases(seed=0, n_case=6, n=32):
    """Truth, an ensemble baseline and init-time labels (two tiles an init time) with case difficulty varying
    tenfold."""
    rng = np.random.default_rng(seed)
    truth = xr.DataArray(rng.gamma(0.5, 2.0, size=(n_case, 1, n, n)), dims=("case", "lead", "y", "x"),
                         coords={"lead": [1]})
    difficulty = np.linspace(1, 10, n_case)[:, None, None, None, None]
    noise = rng.normal(size=(n_case, 8, 1, n, n)) * difficulty
    return truth, noise, np.arange(n_case) // 2


def test_a_method_that_is_a_fixed_fraction_better_everywhere_is_told_apart_on_every_resample():
    """Member errors 0.9 x the baseline's at every point: the fair CRPS scales by 0.9 point by point, so the ratio
    is 0.9 in every resample however unequal the cases (a paired comparison: the hard cases move both)."""
    truth, noise, groups = _cases()
    t = truth.values[:, None]
    baseline = xr.DataArray(t + noise, dims=("case", "member", "lead", "y", "x"), coords={"lead": [1]})
    better = xr.DataArray(t + 0.9 * noise, dims=baseline.dims, coords={"lead": [1]})
    out = compare_to_baselines({"model": better, "steps": baseline}, truth, ["steps"], [1.0], 3, groups)
    ratio, lo, hi = out["methods"]["model"][1]["steps"]["crps_ratio"]
    assert ratio == pytest.approx(0.9, rel=1e-9) and lo == pytest.approx(0.9, rel=1e-9)
    assert hi == pytest.approx(0.9, rel=1e-9)
    assert out["units"] == 3 and out["scale"] == 3 and out["level"] == 0.9


def test_a_method_better_on_some_init_times_only_gets_an_interval_that_spans_them():
    """Better (x 0.5 errors) on the first init time, the same on the others: pooled ratio below 1, interval from
    resamples without the first init time (ratio 1) to resamples mostly of it (towards 0.5); its FSS difference is
    the difference of the two pooled FSS computed directly."""
    truth, noise, groups = _cases(seed=2)
    t = truth.values[:, None]
    factor = np.where(groups == 0, 0.5, 1.0)[:, None, None, None, None]
    baseline = xr.DataArray(t + noise, dims=("case", "member", "lead", "y", "x"), coords={"lead": [1]})
    model = xr.DataArray(t + factor * noise, dims=baseline.dims, coords={"lead": [1]})
    out = compare_to_baselines({"model": model, "extrapolation": baseline}, truth, ["extrapolation", "steps"],
                               [1.0, 3.0], 5, groups)
    row = out["methods"]["model"][1]["extrapolation"]
    ratio, lo, hi = row["crps_ratio"]
    direct = float(metrics.crps(model.sel(lead=1), truth.sel(lead=1)) / metrics.crps(baseline.sel(lead=1),
                                                                                      truth.sel(lead=1)))
    assert ratio == pytest.approx(direct, rel=1e-9) and 0.5 < lo < ratio < hi
    assert hi == pytest.approx(1.0, abs=1e-9)  # a resample without init time 0 is all ties
    for thr in (1.0, 3.0):
        diff, d_lo, d_hi = row["fss_difference"][str(thr)]
        expect = float(metrics.fractions_skill_score(model.sel(lead=1), truth.sel(lead=1), thr, 5)
                       - metrics.fractions_skill_score(baseline.sel(lead=1), truth.sel(lead=1), thr, 5))
        assert diff == pytest.approx(expect, abs=1e-12) and d_lo <= diff <= d_hi
    assert set(out["methods"]) == {"model"} and set(out["methods"]["model"][1]) == {"extrapolation"}
    section = comparison_section(out, "5 points (20 km)")
    assert "| model | 1 | extrapolation | " in section and "FSS≥3.0 difference" in section
    assert f"{ratio:.3f} ({lo:.3f} .. {hi:.3f})" in section
