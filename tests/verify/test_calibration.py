import numpy as np
import pytest

from def_ray.verify.calibration import reliability_against_truth


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
