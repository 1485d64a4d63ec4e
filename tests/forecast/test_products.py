"""Probability products against values known by construction and against a second implementation."""

import numpy as np
import pytest
import xarray as xr

from def_ray.forecast.products import (ensemble_mean, ensemble_quantiles, ensemble_spread,
                                       exceedance_probability)


def test_exceedance_counts_members_at_or_above_each_threshold():
    # members 0..9 at every point: P(x >= t) = #{k >= t} / 10 exactly, and ">=" includes the threshold
    ens = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], (10, 3, 4)).copy()
    p = exceedance_probability(ens, [0, 4.5, 5, 9, 9.5, -1])
    assert p.shape == (6, 3, 4) and p.dtype == np.float32
    np.testing.assert_array_equal(p[:, 0, 0], np.float32([1.0, 0.5, 0.5, 0.1, 0.0, 1.0]))


def test_exceedance_on_dataarray_keeps_coords_and_adds_threshold_dim():
    rng = np.random.default_rng(0)
    da = xr.DataArray(rng.normal(30, 10, (20, 2, 5, 6)).astype(np.float32), dims=("member", "lead_time", "y", "x"),
                      coords={"lead_time": [1, 2]}, name="refc")
    p = exceedance_probability(da, [20, 35])
    assert p.dims == ("threshold", "lead_time", "y", "x")
    np.testing.assert_array_equal(p["threshold"].values, [20.0, 35.0])
    np.testing.assert_array_equal(p["lead_time"].values, [1, 2])
    # second implementation: xarray's own mean of the boolean field
    np.testing.assert_allclose(p.sel(threshold=35).values, (da >= 35).mean("member").values, rtol=0, atol=1e-7)


def test_nan_members_count_as_not_exceeding():
    ens = np.array([[np.nan], [50.0], [10.0], [40.0]], dtype=np.float32)
    assert exceedance_probability(ens, [35])[0, 0] == pytest.approx(0.5)


def test_mean_spread_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    ens = rng.gamma(2.0, 5.0, (31, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ensemble_mean(ens), ens.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(ensemble_spread(ens), ens.astype(np.float64).std(0, ddof=1), rtol=1e-6)
    q = ensemble_quantiles(ens, [0.0, 0.5, 1.0])
    # 31 members: the 0.5 quantile is the 16th order statistic exactly; 0 and 1 are min and max
    np.testing.assert_array_equal(q[0], ens.min(0))
    np.testing.assert_array_equal(q[1], np.sort(ens, 0)[15])
    np.testing.assert_array_equal(q[2], ens.max(0))


def test_one_member_has_zero_spread_and_bad_inputs_are_refused():
    assert np.all(ensemble_spread(np.ones((1, 2, 2), np.float32)) == 0)
    with pytest.raises(ValueError, match="quantiles"):
        ensemble_quantiles(np.ones((3, 2)), [1.5])
    with pytest.raises(ValueError, match="thresholds"):
        exceedance_probability(np.ones((3, 2)), [])
    with pytest.raises(ValueError, match="member"):
        ensemble_mean(xr.DataArray(np.ones((3, 2)), dims=("a", "b")))
