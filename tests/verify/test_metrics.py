"""Verification metrics against values known analytically and against a second implementation.

Second implementations: scoringrules (Brier), xskillscore (RMSE, rank histogram, reliability), pysteps (FSS,
contingency scores), scipy (Mann-Whitney U for ROC AUC) and direct numpy formulas. Agreement is asked to 1e-6
relative. Statistical checks draw seeded samples and derive their tolerance from the sample size.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import scoringrules
import xarray as xr
import xskillscore as xs
from pysteps.verification.detcatscores import det_cat_fct
from pysteps.verification.spatialscores import fss as pysteps_fss
from pysteps.verification.spatialscores import fss_accum, fss_compute, fss_init

from def_ray.verify import (
    brier_decomposition,
    brier_score,
    contingency_scores,
    crps,
    crps_skill_score,
    ensemble_mean_rmse,
    ensemble_spread,
    exceedance_probability,
    fractions_skill_score,
    rank_histogram,
    reliability_diagram,
    roc_auc,
    roc_curve,
    spread_skill_ratio,
)

RTOL = 1e-6
DIMS = ("time", "y", "x")


def ensemble(values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims=("member", *DIMS[-(values.ndim - 1):]))


def field(values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims=DIMS[-values.ndim:])


def consistent_sample(rng: np.random.Generator, m: int, shape: tuple[int, ...], sigma: float = 1.0,
                      member_sigma: float | None = None) -> tuple[xr.DataArray, xr.DataArray]:
    """Truth and members drawn from the same N(mu, sigma^2) at every point (mu varies), or narrower members."""
    mu = rng.normal(0, 3, size=shape)
    truth = mu + rng.normal(0, sigma, size=shape)
    members = mu + rng.normal(0, sigma if member_sigma is None else member_sigma, size=(m, *shape))
    return ensemble(members), field(truth)


# --------------------------------------------------------------------------------------------------------- CRPS
def fair_crps_numpy(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """E|X - y| - sum_{i != j} |x_i - x_j| / (2 M (M - 1)), member axis first."""
    m = members.shape[0]
    skill = np.abs(members - truth).mean(0)
    pairs = np.abs(members[:, None] - members[None, :]).sum((0, 1))
    return skill - pairs / (2 * m * (m - 1))


def test_crps_of_single_member_is_mae() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1, 4, 6, 5)), rng.normal(size=(4, 6, 5))
    y[0, 0, :] = np.nan  # no coverage: left out of the mean
    expected = np.nanmean(np.abs(x[0] - y))
    assert float(crps(ensemble(x), field(y))) == pytest.approx(expected, rel=RTOL)


def test_crps_matches_direct_fair_formula_per_dim_and_skips_nan() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.gamma(2.0, size=(7, 3, 5, 4)), rng.gamma(2.0, size=(3, 5, 4))
    y[1, 2, 3] = np.nan
    x[4, 0, 0, 0] = np.nan  # a broken member also removes its point
    got = crps(ensemble(x), field(y), dim=["y", "x"])
    pointwise = fair_crps_numpy(x, y)
    pointwise[0, 0, 0] = np.nan
    assert got.dims == ("time",)
    np.testing.assert_allclose(got.values, np.nanmean(pointwise, axis=(1, 2)), rtol=RTOL)


def test_crps_matches_scoringrules_fair_estimator() -> None:
    rng = np.random.default_rng(21)
    x, y = consistent_sample(rng, 12, (3, 8, 8))
    expected = scoringrules.crps_ensemble(y.values, x.values, m_axis=0, estimator="fair", backend="numpy")
    np.testing.assert_allclose(crps(x, y, dim=[]).values, expected, rtol=RTOL)


def test_fair_crps_is_unbiased_for_a_small_consistent_ensemble() -> None:
    # Truth and 3 members from N(mu, 1): the expected CRPS of N(mu, 1) at its own draws is 1/sqrt(pi). The fair
    # estimator is unbiased for any M (the plain one would be too high by E|X-X'| / (2M) = 1/(3 sqrt(pi)), 33 %).
    rng = np.random.default_rng(3)
    x, y = consistent_sample(rng, 3, (40, 50, 50))
    point = crps(x, y, dim=[])
    tolerance = 4 * float(point.std()) / np.sqrt(point.size)  # 4 standard errors of the mean of iid scores
    assert float(point.mean()) == pytest.approx(1 / np.sqrt(np.pi), abs=tolerance)


def test_crps_skill_score() -> None:
    rng = np.random.default_rng(4)
    x, y = consistent_sample(rng, 5, (2, 6, 6))
    assert float(crps_skill_score(x, y, reference=x)) == pytest.approx(0.0, abs=1e-12)
    perfect = xr.concat([y] * 5, "member")
    assert float(crps_skill_score(perfect, y, reference=x)) == pytest.approx(1.0, abs=1e-12)
    # a deterministic reference (persistence-like) is scored by its absolute error
    reference = y + 2.0
    expected = 1 - fair_crps_numpy(x.values, y.values).mean() / 2.0
    assert float(crps_skill_score(x, y, reference=reference)) == pytest.approx(expected, rel=RTOL)


# ---------------------------------------------------------------------------------------- RMSE, spread, ratio
def test_rmse_spread_ratio_on_a_hand_example() -> None:
    x = ensemble(np.array([[[1.0]], [[3.0]]]))  # members 1 and 3: mean 2, variance (ddof=1) 2
    y = field(np.array([[0.0]]))
    assert float(ensemble_mean_rmse(x, y)) == pytest.approx(2.0)
    assert float(ensemble_spread(x, y)) == pytest.approx(np.sqrt(2.0))
    assert float(spread_skill_ratio(x, y)) == pytest.approx(np.sqrt(3 / 2) * np.sqrt(2.0) / 2.0)


def test_rmse_and_spread_match_xskillscore_and_numpy() -> None:
    rng = np.random.default_rng(5)
    x, y = consistent_sample(rng, 6, (3, 7, 8))
    y[0, 0, 0] = np.nan
    y = y.copy(data=y.values)
    mean = x.mean("member").where(y.notnull())
    np.testing.assert_allclose(ensemble_mean_rmse(x, y, dim=["y", "x"]).values,
                               xs.rmse(mean, y, dim=["y", "x"], skipna=True).values, rtol=RTOL)
    var = x.values.var(axis=0, ddof=1)
    var[np.isnan(y.values)] = np.nan
    np.testing.assert_allclose(ensemble_spread(x, y, dim="time").values,
                               np.sqrt(np.nanmean(var, axis=0)), rtol=RTOL)


@pytest.mark.parametrize("member_sigma", [1.0, 0.5, 2.0])
def test_spread_skill_ratio_detects_dispersion(member_sigma: float) -> None:
    # Truth ~ N(mu, 1); members ~ N(mu, s^2): MSE of the mean = 1 + s^2/M, so the corrected ratio is
    # s * sqrt((M+1)/M) / sqrt(1 + s^2/M) (exactly 1 for s = 1). Relative standard error of the ratio from N points:
    # 0.5 * sqrt(2/N + 2/(N(M-1))) (sample variances of N Gaussians); 5 standard errors allowed.
    m, shape = 10, (8, 40, 40)
    rng = np.random.default_rng(6)
    x, y = consistent_sample(rng, m, shape, member_sigma=member_sigma)
    n = np.prod(shape)
    theory = member_sigma * np.sqrt((m + 1) / m) / np.sqrt(1 + member_sigma ** 2 / m)
    assert (theory == 1.0) if member_sigma == 1.0 else (theory < 0.6 or theory > 1.7)
    rel_se = 0.5 * np.sqrt(2 / n + 2 / (n * (m - 1)))
    assert float(spread_skill_ratio(x, y)) == pytest.approx(theory, rel=5 * rel_se)


def test_spread_needs_two_members() -> None:
    with pytest.raises(ValueError, match="at least 2 members"):
        spread_skill_ratio(ensemble(np.zeros((1, 2, 2))), field(np.zeros((2, 2))))


# ------------------------------------------------------------------------------------------------ rank histogram
def test_rank_histogram_extremes_and_nan() -> None:
    x = ensemble(np.random.default_rng(7).uniform(0, 1, size=(4, 5, 6)))
    below = field(np.full((5, 6), -1.0))
    above = field(np.full((5, 6), 2.0))
    above[0, 0] = np.nan
    assert rank_histogram(x, below).values.tolist() == [30, 0, 0, 0, 0]
    assert rank_histogram(x, above).values.tolist() == [0, 0, 0, 0, 29]


def test_rank_histogram_matches_xskillscore_without_ties() -> None:
    rng = np.random.default_rng(8)
    x, y = consistent_sample(rng, 5, (4, 9, 9))
    ours = rank_histogram(x, y, dim=["y", "x"])
    theirs = xs.rank_histogram(y, x, dim=["y", "x"], member_dim="member", random_for_tied=False)
    np.testing.assert_array_equal(ours.transpose("time", "rank").values, theirs.transpose("time", "rank").values)


def test_rank_histogram_breaks_ties_at_random_reproducibly() -> None:
    # Dry truth and an all-dry ensemble of M = 4 members: every rank 0..4 is equally likely. Counts are binomial
    # (n = 5000, p = 1/5): sd = sqrt(n p (1 - p)) = 28; 5 sd allowed.
    x, y = ensemble(np.zeros((4, 50, 100))), field(np.zeros((50, 100)))
    first, again, other = rank_histogram(x, y, seed=3), rank_histogram(x, y, seed=3), rank_histogram(x, y, seed=4)
    np.testing.assert_array_equal(first.values, again.values)
    assert not np.array_equal(first.values, other.values)
    assert int(first.sum()) == 5000
    np.testing.assert_allclose(first.values, 1000, atol=5 * np.sqrt(5000 * 0.2 * 0.8))


def test_rank_histogram_is_flat_for_consistent_ensemble_and_not_for_a_biased_one() -> None:
    rng = np.random.default_rng(9)
    x, y = consistent_sample(rng, 9, (10, 30, 30))
    counts = rank_histogram(x, y).values
    expected = counts.sum() / counts.size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < scipy.stats.chi2.ppf(0.999, counts.size - 1)
    biased = rank_histogram(x + 1.0, y).values  # members too high: truth ranks pile up at the low end
    assert biased[0] > 3 * biased[-1]


# ----------------------------------------------------------------------------------------------- probabilities
def test_brier_of_perfect_and_of_always_wrong_forecasts() -> None:
    y = field(np.array([[0.0, 40.0], [10.0, 55.0]]))
    right = xr.concat([y] * 3, "member")
    wrong = xr.concat([xr.where(y >= 35.0, 0.0, 50.0)] * 3, "member")  # dry where it rains (>= 35) and vice versa
    assert float(brier_score(right, y, 35.0)) == 0.0
    assert float(brier_score(wrong, y, 35.0)) == 1.0


def test_brier_matches_scoringrules_and_accepts_probability_fields() -> None:
    rng = np.random.default_rng(10)
    x, y = consistent_sample(rng, 8, (3, 10, 10))
    prob = exceedance_probability(x, 1.0)
    expected = scoringrules.brier_score((y.values >= 1.0).astype(float), prob.values, backend="numpy").mean()
    assert float(brier_score(x, y, 1.0)) == pytest.approx(expected, rel=RTOL)
    assert float(brier_score(prob, y, 1.0)) == pytest.approx(expected, rel=RTOL)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        brier_score(x.isel(member=0), y, 1.0)


def test_murphy_decomposition_is_exact_with_one_bin_per_ensemble_probability() -> None:
    rng = np.random.default_rng(11)
    x, y = consistent_sample(rng, 6, (4, 12, 12))
    y[0, :3, :] = np.nan
    parts = brier_decomposition(x, y, 2.0)
    # direct numpy: group the points by probability k/M
    prob, event = exceedance_probability(x, 2.0).values.ravel(), (y.values >= 2.0).ravel().astype(float)
    keep = ~np.isnan(y.values.ravel())
    prob, event = prob[keep], event[keep]
    base = event.mean()
    rel = sum(((prob == p).sum() * (p - event[prob == p].mean()) ** 2) for p in np.unique(prob)) / prob.size
    res = sum(((prob == p).sum() * (event[prob == p].mean() - base) ** 2) for p in np.unique(prob)) / prob.size
    assert float(parts.reliability) == pytest.approx(rel, rel=RTOL)
    assert float(parts.resolution) == pytest.approx(res, rel=RTOL)
    assert float(parts.uncertainty) == pytest.approx(base * (1 - base), rel=RTOL)
    assert float(parts.reliability - parts.resolution + parts.uncertainty) == pytest.approx(float(parts.brier),
                                                                                            abs=1e-12)


def test_climatological_forecast_has_no_reliability_or_resolution_term() -> None:
    y = field(np.array([[0.0, 1.0, 0.0, 0.0]]))
    climatology = xr.full_like(y, 0.25)
    parts = brier_decomposition(climatology, y, 0.5)
    assert float(parts.reliability) == pytest.approx(0.0, abs=1e-15)
    assert float(parts.resolution) == pytest.approx(0.0, abs=1e-15)
    assert float(parts.brier) == pytest.approx(0.25 * 0.75)


def test_reliability_diagram_matches_xskillscore() -> None:
    rng = np.random.default_rng(12)
    x, y = consistent_sample(rng, 10, (5, 10, 10))
    edges = np.linspace(0, 1, 6)
    ours = reliability_diagram(x, y, 0.5, bins=edges)
    theirs = xs.reliability(y >= 0.5, exceedance_probability(x, 0.5), probability_bin_edges=edges)
    np.testing.assert_allclose(ours.observed_frequency.values, theirs.values, rtol=RTOL)
    np.testing.assert_array_equal(ours["count"].values, theirs["samples"].values)
    assert ((ours.forecast_probability >= ours.bin_lower) & (ours.forecast_probability <= ours.bin_upper)).all()


def test_roc_auc_perfect_random_and_mann_whitney() -> None:
    rng = np.random.default_rng(13)
    y = field(rng.normal(size=(20, 30)))
    perfect = xr.concat([y] * 4, "member")
    assert float(roc_auc(perfect, y, 0.5)) == pytest.approx(1.0)
    assert float(roc_auc(1.0 - perfect, y, 0.5)) == pytest.approx(0.0)  # warns exactly where it stays dry
    # Unrelated forecast: AUC ~ 0.5 with null standard error sqrt((n1 + n0 + 1) / (12 n1 n0)); 5 se allowed.
    noise = ensemble(rng.normal(size=(10, 20, 30)))
    n1 = int((y >= 0.5).sum())
    n0 = y.size - n1
    assert float(roc_auc(noise, y, 0.5)) == pytest.approx(0.5, abs=5 * np.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))
    # Against the Mann-Whitney U statistic of the probabilities of events vs non-events (ties count 1/2).
    x, yy = consistent_sample(rng, 10, (20, 30))
    prob, event = exceedance_probability(x, 0.5).values.ravel(), yy.values.ravel() >= 0.5
    u = scipy.stats.mannwhitneyu(prob[event], prob[~event]).statistic
    assert float(roc_auc(x, yy, 0.5)) == pytest.approx(u / (event.sum() * (~event).sum()), rel=RTOL)


def test_roc_curve_runs_from_all_warned_to_none() -> None:
    rng = np.random.default_rng(14)
    x, y = consistent_sample(rng, 5, (10, 10))
    curve = roc_curve(x, y, 0.0)
    assert float(curve.pod[0]) == 1.0 and float(curve.pofd[0]) == 1.0
    assert float(curve.pod[-1]) == 0.0 and float(curve.pofd[-1]) == 0.0
    assert (curve.pod.diff("level") <= 0).all() and (curve.pofd.diff("level") <= 0).all()


# ------------------------------------------------------------------------------------------------------- FSS
def rain_fields(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Blobby positive fields (smoothed noise, cubed) so that neighbourhoods matter."""
    from scipy.ndimage import gaussian_filter

    noise = rng.normal(size=shape)
    sigma = [0] * (len(shape) - 2) + [2, 2]
    return np.maximum(gaussian_filter(noise, sigma) * 10, 0) ** 1.5


def test_fss_is_one_for_identical_fields_and_zero_for_disjoint_events_at_grid_scale() -> None:
    y = field(rain_fields(np.random.default_rng(15), (24, 30)))
    same = fractions_skill_score(xr.concat([y], "member"), y, [0.5, 2.0], [1, 3, 9])
    assert same.dims == ("threshold", "scale")
    np.testing.assert_allclose(same.values, 1.0)
    obs = np.zeros((10, 10))
    obs[2, 2] = 5.0
    fct = np.zeros((10, 10))
    fct[2, 4] = 5.0
    scores = fractions_skill_score(field(fct), field(obs), 1.0, [1, 5])
    assert float(scores.sel(scale=1)) == 0.0
    assert float(scores.sel(scale=5)) > 0.5  # the 2-point displacement is forgiven in 5x5 neighbourhoods


def test_fss_matches_pysteps_for_deterministic_fields() -> None:
    rng = np.random.default_rng(16)
    fct, obs = rain_fields(rng, (2, 40, 48)), rain_fields(rng, (2, 40, 48))
    thresholds, scales = [0.1, 1.0, 5.0], [1, 2, 5, 11]
    ours = fractions_skill_score(field(fct), field(obs), thresholds, scales, dim=[])
    assert ours.dims == ("threshold", "scale", "time")
    for t, thr in enumerate(thresholds):
        for s, scale in enumerate(scales):
            for k in range(2):
                expected = pysteps_fss(fct[k], obs[k], thr, scale)
                assert float(ours.isel(threshold=t, scale=s, time=k)) == pytest.approx(expected, rel=RTOL)
            state = fss_init(thr, scale)  # pooled over time: pysteps accumulates the sums
            for k in range(2):
                fss_accum(state, fct[k], obs[k])
            pooled = fractions_skill_score(field(fct), field(obs), thr, scale)
            assert float(pooled) == pytest.approx(fss_compute(state), rel=RTOL)


def test_ensemble_fss_uses_neighbourhood_probability_and_excludes_no_coverage() -> None:
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(17)
    fct, obs = rain_fields(rng, (6, 30, 36)), rain_fields(rng, (30, 36))
    obs[:, :5] = np.nan  # radar gap on the west edge
    thr, scale = 1.0, 5
    covered = ~np.isnan(obs)
    prob = np.where(covered, (fct >= thr).mean(0), 0.0)
    event = np.where(covered, obs >= thr, False).astype(float)
    sf = uniform_filter(prob, scale, mode="constant")[covered]
    so = uniform_filter(event, scale, mode="constant")[covered]
    expected = 1 - ((sf - so) ** 2).sum() / ((sf ** 2).sum() + (so ** 2).sum())
    got = fractions_skill_score(ensemble(fct), field(obs), thr, scale)
    assert float(got) == pytest.approx(expected, rel=RTOL)


# ----------------------------------------------------------------------------------------------- contingency
def test_contingency_table_on_a_hand_example() -> None:
    fct = field(np.array([[10.0, 10.0, 0.0, 0.0, 10.0]]))
    obs = field(np.array([[10.0, 0.0, 10.0, 0.0, np.nan]]))  # last point: no coverage
    table = contingency_scores(fct, obs, 5.0)
    assert table.hits.item() == 1 and table.misses.item() == 1
    assert table.false_alarms.item() == 1 and table.correct_negatives.item() == 1
    assert table.pod.item() == 0.5 and table.far.item() == 0.5
    assert table.csi.item() == pytest.approx(1 / 3) and table.frequency_bias.item() == 1.0


def test_contingency_scores_match_pysteps() -> None:
    rng = np.random.default_rng(18)
    fct, obs = rain_fields(rng, (3, 30, 30)), rain_fields(rng, (3, 30, 30))
    thresholds = [0.3, 2.5]  # continuous values: pysteps' `>` and our `>=` define the same events
    ours = contingency_scores(field(fct), field(obs), thresholds)
    for thr in thresholds:
        theirs = det_cat_fct(fct, obs, thr, scores=["POD", "FAR", "CSI", "BIAS"])
        got = ours.sel(threshold=thr)
        for name, key in (("pod", "POD"), ("far", "FAR"), ("csi", "CSI"), ("frequency_bias", "BIAS")):
            assert float(got[name]) == pytest.approx(theirs[key], rel=RTOL), name


def test_contingency_per_member_when_member_is_kept() -> None:
    y = field(np.array([[0.0, 10.0]]))
    x = ensemble(np.array([[[0.0, 10.0]], [[10.0, 0.0]]]))
    table = contingency_scores(x, y, 5.0, dim=["y", "x"])
    assert table.csi.values.tolist() == [1.0, 0.0]
    assert contingency_scores(x, y, [5.0, 20.0], dim=["y", "x"]).csi.dims == ("threshold", "member")


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_named() -> None:
    x, y = ensemble(np.zeros((3, 2, 4))), field(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no ensemble dimension 'member'"):
        crps(y, y)
    with pytest.raises(ValueError, match="truth dims"):
        crps(x, field(np.zeros((2, 3, 4))))
    with pytest.raises(ValueError, match="not on the same coordinates"):
        crps(x.assign_coords(x=[0, 1, 2, 3]), y.assign_coords(x=[1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"cannot reduce over \['time'\]"):
        crps(x, y, dim="time")
    with pytest.raises(ValueError, match="bin edges"):
        reliability_diagram(x, y, 0.0, bins=[0.2, 0.5, 1.0])
    with pytest.raises(ValueError, match="scales"):
        fractions_skill_score(x, y, [1.0], [0])
    with pytest.raises(ValueError, match="scales"):
        fractions_skill_score(x, y, 1.0, 2.5)
    with pytest.raises(TypeError, match="xarray.DataArray"):
        brier_score(x, y.values, 0.0)


def test_spread_error_curve_is_diagonal_for_a_consistent_ensemble_and_not_for_an_overconfident_one():
    from def_ray.verify.metrics import spread_error_curve

    rng = np.random.default_rng(0)
    # spread varies from point to point; truth and members are draws from the same N(mu, sigma^2)
    sigma = rng.uniform(0.2, 3.0, (200, 50))
    mu = rng.normal(0, 5, (200, 50))
    truth = xr.DataArray(mu + sigma * rng.standard_normal((200, 50)), dims=("case", "x"))
    members = xr.DataArray(mu[:, None] + sigma[:, None] * rng.standard_normal((200, 20, 50)),
                           dims=("case", "member", "x"))
    c = spread_error_curve(members, truth)
    assert c.sizes["bin"] == 10 and int(c["count"].sum()) == 200 * 50
    # binned by one half's spread and measured on the other, a consistent ensemble lies on the diagonal up to
    # sampling noise (~2000 squared errors per bin: ~3% on the RMSE); binning by the measured members themselves
    # would pull the end bins ~14% off (the relative standard error of a 10-member variance is sqrt(2 / 9) = 0.47)
    assert c.attrs["max_relative_deviation"] < 0.1 and c.attrs["correlation"] > 0.3
    assert np.all(np.diff(c["spread"].values) > 0)  # bins ordered by spread
    overconfident = mu[:, None] + 0.5 * sigma[:, None] * rng.standard_normal((200, 20, 50))
    c2 = spread_error_curve(xr.DataArray(overconfident, dims=("case", "member", "x")), truth)
    assert 0.4 < c2.attrs["max_relative_deviation"] < 0.7  # spread / RMSE ~ 0.5 / 1.1


def _intermittent(rng: np.random.Generator, shape: tuple[int, ...], p_rain: np.ndarray,
                  mu: np.ndarray) -> np.ndarray:
    """Rain that falls with probability p_rain, lognormal amounts about exp(mu) where it does, else 0."""
    return np.where(rng.random(shape) < p_rain, np.exp(mu + 0.5 * rng.standard_normal(shape)), 0.0)


def test_spread_error_curve_of_intermittent_rain_is_diagonal_for_a_consistent_ensemble():
    from def_ray.verify.metrics import spread_error_curve

    rng = np.random.default_rng(1)
    n = 200_000
    # most points almost surely dry (p = 0.005: all 20 members dry at ~90% of them, yet the truth rains at 0.5%),
    # the rest anything from drizzle-likely to certain rain
    p_rain = np.where(rng.random(n) < 0.7, 0.005, rng.uniform(0.05, 1.0, n))
    mu = rng.normal(0.0, 0.5, n)
    truth = xr.DataArray(_intermittent(rng, (n,), p_rain, mu), dims="x")
    members = xr.DataArray(_intermittent(rng, (20, n), p_rain, mu), dims=("member", "x"))
    c = spread_error_curve(members, truth)
    # the points where the binning half all agree (all dry) have a bin of their own, holding over half the points
    assert c.sizes["bin"] == 11 and int(c["count"][0]) > n / 2
    # a consistent ensemble is on the diagonal in every bin, the all-dry one included (binned by the measured
    # members' own spread, that bin would read spread 0 against the truth's 0.5% of rain: 100% off)
    assert c.attrs["max_relative_deviation"] < 0.1  # 0.02-0.05 over seeds 0-4
    assert np.all(np.diff(c["spread"].values) > 0)
    dry = (members == 0).all("member").values
    assert float(np.sqrt((truth.values[dry] ** 2).mean())) > 0  # what the naive binning would call all error

    # rain where no member can have any (the ensemble dry wherever rain is less likely than not): far off
    never = np.where(p_rain < 0.5, 0.0, p_rain)
    blind = xr.DataArray(_intermittent(rng, (20, n), never, mu), dims=("member", "x"))
    missed = spread_error_curve(blind, truth)
    assert float(missed["rmse"][0]) > 0 and missed.attrs["max_relative_deviation"] > 0.9


def test_equal_bins_hold_their_left_edge() -> None:
    """Shares of 10 or 20 members on a bin edge (0.3 = 6 / 20, 0.7 = 14 / 20) fall into the bin they open, in the
    reliability diagram and in the calibration tables alike (equal-width edges from linspace are 1 ulp too high at
    0.3 and 0.7)."""
    from def_ray.verify import metrics
    from def_ray.verify.calibration import reliability_against_truth

    for m in (10, 20):
        share = np.arange(m + 1) / m
        members = (np.arange(m)[:, None] < np.arange(m + 1)[None, :]).astype(float)  # point k: k members at 1
        fc = xr.DataArray(members, dims=("member", "x"))
        truth = xr.DataArray(np.zeros(m + 1), dims="x")
        rd = metrics.reliability_diagram(fc, truth, 0.5, bins=10)
        assert np.allclose(fc.mean("member"), share)
        expect = np.minimum(np.floor(share * 10 + 1e-9), 9)  # bin k / 10 holds [k / 10, (k + 1) / 10)
        counts = np.bincount(expect.astype(int), minlength=10)
        assert rd["count"].values.tolist() == counts.tolist()
        rel = reliability_against_truth(share, np.zeros(m + 1), bins=10, min_count=1)
        assert rel["count"].values.tolist() == counts.tolist()
