import numpy as np
import pytest

from def_ray.verify.calibration import deviation_interval, reliability_against_truth


def test_forecast_equal_to_truth_has_no_deviation():
    p = np.random.default_rng(0).uniform(size=5000)
    rel = reliability_against_truth(p, p)
    # inside a bin the mean forecast and the mean truth are the same numbers: exactly equal up to rounding
    assert rel.attrs["max_deviation"] < 1e-12
    assert int(rel["count"].sum()) == 5000


def test_a_biased_forecast_shows_its_bias():
    p = np.random.default_rng(1).uniform(0, 0.7, size=20000)
    rel = reliability_against_truth(np.clip(p + 0.2, 0, 1), p)
    assert rel.attrs["max_deviation"] == pytest.approx(0.2, abs=1e-9)
    assert rel.attrs["mean_forecast"] - rel.attrs["mean_true"] == pytest.approx(0.2, abs=1e-9)


def test_a_coarser_but_calibrated_forecast_passes():
    # the forecaster sees only the mean of the true probabilities over blocks of 4 points (less information);
    # E[true | forecast] = forecast, so each bin's mean truth equals its mean forecast up to sampling noise:
    # with >= 500 points a bin and within-block spread <= 0.1, the standard error is < 0.005
    rng = np.random.default_rng(2)
    block = rng.uniform(size=(20000, 1))
    true = np.clip(block + rng.uniform(-0.1, 0.1, size=(20000, 4)), 0, 1)
    forecast = np.repeat(true.mean(axis=1, keepdims=True), 4, axis=1)
    rel = reliability_against_truth(forecast, true, min_count=500)
    assert rel.attrs["max_deviation"] < 0.01


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        reliability_against_truth(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_against_truth(np.array([1.5]), np.array([0.5]))


def test_sparse_bins_are_not_judged():
    f = np.r_[np.full(100, 0.05), [0.95]]
    t = np.r_[np.full(100, 0.05), [0.0]]
    rel = reliability_against_truth(f, t, min_count=50)
    assert rel.attrs["max_deviation"] < 1e-12  # the single 0.95 point is too few to judge
    assert not bool(rel["populated"][-1])


def test_the_interval_of_an_exact_forecast_is_zero_and_a_bias_sits_inside_its_interval():
    rng = np.random.default_rng(3)
    true = rng.uniform(size=(30, 400))
    exact = deviation_interval(true, true)
    assert np.nanmax(np.abs(exact["lower"])) < 1e-12 and np.nanmax(np.abs(exact["upper"])) < 1e-12
    biased = deviation_interval(np.clip(true + 0.2, 0, 1), true)
    inner = biased["populated"].values & (biased["bin_upper"].values < 0.95)  # away from the clipped top
    assert np.allclose(biased["difference"].values[inner], 0.2)
    assert (biased["lower"].values[inner] <= 0.2 + 1e-12).all() and (biased["upper"].values[inner] >= 0.2 - 1e-12).all()
    assert biased.attrs["max_deviation_lower"] <= 0.2 + 1e-12 <= biased.attrs["max_deviation_upper"] + 1e-12


def test_the_case_bootstrap_covers_a_zero_bias_as_often_as_it_claims():
    # each case carries its own random error (all its points share it), zero on average: the forecast is calibrated
    # in expectation but any finite set of cases shows a deviation.  A 90% interval must contain 0 in about 90% of
    # repeated experiments; with 300 repeats the binomial standard error is 1.7 points, and the percentile bootstrap
    # on 40 cases under-covers by a few points, so 0.82 .. 0.97 is the accepted range.
    rng = np.random.default_rng(4)
    covered = []
    for _ in range(300):
        forecast = rng.uniform(0.4, 0.6, size=(40, 50))
        true = np.clip(forecast + rng.normal(0, 0.1, size=(40, 1)), 0, 1)
        ds = deviation_interval(forecast, true, bins=10, min_count=50, n_boot=400, seed=int(rng.integers(1 << 30)))
        k = int(np.argmax(ds["populated"].values))
        covered.append(bool(ds["lower"].values[k] <= 0 <= ds["upper"].values[k]))
    assert 0.82 <= np.mean(covered) <= 0.97
    # and the interval is not merely wide: a real bias of half the case-to-case error is told apart from zero
    found = []
    for _ in range(100):
        forecast = rng.uniform(0.4, 0.6, size=(40, 50))
        true = np.clip(forecast - 0.05 + rng.normal(0, 0.1, size=(40, 1)), 0, 1)
        ds = deviation_interval(forecast, true, n_boot=400, seed=int(rng.integers(1 << 30)))
        found.append(bool(ds["lower"].values[int(np.argmax(ds["populated"].values))] > 0))
    assert np.mean(found) >= 0.8


def test_interval_inputs_need_a_case_axis():
    with pytest.raises(ValueError, match="case"):
        deviation_interval(np.zeros(5), np.zeros(5))


def test_groups_resample_correlated_cases_together():
    # every case twice (its copy shares its error): resampled one by one the copies look like independent evidence
    # and the interval shrinks by about sqrt(2); resampled as pairs it is as wide as for the cases without copies
    rng = np.random.default_rng(5)
    forecast = rng.uniform(0.4, 0.6, size=(40, 50))
    true = np.clip(forecast + rng.normal(0, 0.1, size=(40, 1)), 0, 1)
    twice_f, twice_t = np.repeat(forecast, 2, axis=0), np.repeat(true, 2, axis=0)

    def width(ds):
        k = int(np.argmax(ds["populated"].values))
        return float(ds["upper"][k] - ds["lower"][k])

    single = width(deviation_interval(forecast, true, n_boot=4000))
    paired = width(deviation_interval(twice_f, twice_t, n_boot=4000, groups=np.arange(80) // 2))
    naive = width(deviation_interval(twice_f, twice_t, n_boot=4000))
    assert paired == pytest.approx(single, rel=0.1)
    assert naive == pytest.approx(single / np.sqrt(2), rel=0.1)
    with pytest.raises(ValueError, match="one label per case"):
        deviation_interval(forecast, true, groups=np.arange(3))


def test_calibration_table_against_outcomes_finds_a_bias_and_passes_a_calibrated_forecast():
    from def_ray.verify.workflow import calibration_table

    rng = np.random.default_rng(1)
    p = rng.choice([0.1, 0.3, 0.7], size=(40, 1, 30, 30))  # (case, threshold, y, x)
    outcome = (rng.uniform(size=p.shape) < p).astype(float)
    groups = np.arange(40) // 4  # cases of one init time resampled together
    table = calibration_table({"good": p, "biased": np.clip(p + 0.2, 0, 1)}, outcome, [5.0], groups, 500)
    good, biased = table["good"]["5.0"], table["biased"]["5.0"]
    assert good["max_deviation"] < 0.02 and biased["max_deviation"] == pytest.approx(0.2, abs=0.02)
    lo, hi = biased["max_deviation_interval"]
    assert lo > 0.15 and good["max_deviation_interval"][1] < 0.05 and good["min_count"] == 500


def test_calibrated_deviation_is_the_finite_ensemble_deviation_of_a_perfect_ensemble():
    """Members that are exchangeable draws of known probabilities p: with the truth one more such draw, the raw
    share of M - 1 members is not on the diagonal (a bin of shares gathers points of several p: E[truth | share]
    = E[p | share]), and that deviation is known in closed form from the binomial distribution of the shares.
    The calibrated draws must find it (100 k points per p: per-bin noise <= 0.01), and members that all agree must
    score 0 exactly."""
    from scipy.stats import binom

    from def_ray.verify.calibration import _bin_of, calibrated_deviation, member_as_truth

    rng = np.random.default_rng(0)
    ps, m = np.array([0.15, 0.45, 0.75]), 20
    p = np.repeat(ps, 100_000)
    members = (rng.uniform(size=(m, p.size)) < p).astype(float)
    draws = member_as_truth(members, 0.5, min_count=500)
    assert draws.sizes["draw"] == m and (draws["count"].sum("bin") == p.size).all()
    nodes = draws["forecast_probability"].mean("draw").values  # the bins' shares: every draw has the same
    got = calibrated_deviation(members, 0.5, nodes[draws["populated"].all("draw").values])

    k = np.arange(m)  # how many of the other m - 1 members exceed
    share = k / (m - 1)
    _, which = _bin_of(share, 10)
    weight = np.stack([binom.pmf(k, m - 1, q) for q in ps]) / len(ps)  # P(p, k)
    expected = max(abs((weight[:, which == b] * share[which == b]).sum() - (weight[:, which == b].sum(1) * ps).sum())
                   / weight[:, which == b].sum() for b in np.unique(which))
    assert expected > 0.15  # sharp p (0.75 makes many 19-of-19 shares that verify 0.75): far off the diagonal
    assert got["draws"] == m and got["median"] == pytest.approx(expected, abs=0.02)
    assert got["median"] <= got["upper"] < expected + 0.04

    assert np.median(draws["max_deviation"]) == pytest.approx(got["median"], abs=1e-9)

    same = np.repeat(members[:1], m, axis=0)  # every member the same field: the others always agree with it
    assert calibrated_deviation(same, 0.5, [0.0, 1.0]) == {"median": 0.0, "upper": 0.0, "draws": m}


def test_calibrated_deviation_widens_with_spatially_correlated_members():
    """The same probabilities with members constant over blocks of 625 points (a storm fills many pixels): as many
    points but 625 times fewer independent ones, so the deviation a calibrated ensemble can show by chance grows
    (per-bin noise x 25); outside `valid` nothing counts."""
    from def_ray.verify.calibration import calibrated_deviation

    rng = np.random.default_rng(1)
    ps, m, block = np.array([0.15, 0.45, 0.75]), 20, 625
    p = np.repeat(ps, 160)  # 480 blocks
    draws = (rng.uniform(size=(m, p.size)) < p).astype(float)
    nodes = np.arange(10) / 10 + 0.05  # one probability a bin

    def spread(c):  # how far the 90 % draw lies above the median draw
        return c["upper"] - c["median"]

    independent = calibrated_deviation((rng.uniform(size=(m, p.size * block)) < np.repeat(p, block)).astype(float),
                                       0.5, nodes)
    correlated = calibrated_deviation(np.repeat(draws, block, axis=1), 0.5, nodes)
    # independent points: bins of >= 1500 points, noise ~0.01 a bin; blocks: bins of a few blocks, noise ~0.1
    assert spread(independent) < 0.03 and spread(correlated) > 3 * spread(independent) + 0.03
    with pytest.raises(ValueError, match="at least 3 members"):
        calibrated_deviation(draws[:2], 0.5, nodes)
    valid = np.zeros(p.size * block, dtype=bool)
    assert np.isnan(calibrated_deviation(np.repeat(draws, block, axis=1), 0.5, nodes, valid=valid)["median"])
