import numpy as np
import pytest

from def_ray.verify import baselines


def moving_blob(n: int, ny: int = 48, nx: int = 48, vy: int = 1, vx: int = 2) -> np.ndarray:
    """A Gaussian echo (peak 45 dBZ over a -5 dBZ background) moving (vy, vx) points per step."""
    yy, xx = np.mgrid[:ny, :nx]
    return np.stack([-5 + 50 * np.exp(-((yy - 10 - vy * t) ** 2 + (xx - 8 - vx * t) ** 2) / (2 * 4.0**2))
                     for t in range(n)]).astype("float32")


def peak(field: np.ndarray) -> tuple[int, int]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(field), field.shape))


def test_persistence_repeats_the_last_frame():
    past = moving_blob(4)
    out = baselines.persistence(past, 3)
    assert out.shape == (3, 48, 48)
    np.testing.assert_array_equal(out[2], past[-1])


def test_extrapolation_moves_the_echo_with_its_motion():
    frames = moving_blob(6)
    out = baselines.extrapolation(frames[:4], 2)
    # the blob moves exactly (1, 2) points per step: its peak must land on the true peak within a grid point
    for lead in range(2):
        got, want = peak(out[lead]), peak(frames[4 + lead])
        assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1, (lead, got, want)
    assert peak(baselines.persistence(frames[:4], 1)[0]) != peak(frames[4])  # persistence cannot do that


def test_optical_flow_recovers_the_velocity():
    v = baselines.optical_flow(moving_blob(4))
    yy, xx = np.mgrid[:48, :48]
    core = (yy - 13) ** 2 + (xx - 14) ** 2 < 25
    # pysteps returns (u, v) = (x, y) displacements per step; the blob moves (x, y) = (2, 1)
    assert np.median(v[0][core]) == pytest.approx(2.0, abs=0.3)
    assert np.median(v[1][core]) == pytest.approx(1.0, abs=0.3)


def test_steps_ensemble_shape_seed_and_spread():
    past = moving_blob(4)
    a = baselines.steps_ensemble(past, 2, 6, seed=3)
    b = baselines.steps_ensemble(past, 2, 6, seed=3)
    c = baselines.steps_ensemble(past, 2, 6, seed=4)
    assert a.shape == (6, 2, 48, 48) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std(axis=0).mean() > 0  # members differ


def test_rain_rates_round_trip_through_the_db_transform():
    rain = np.clip((moving_blob(4) + 5) / 5, 0, None)  # 0 .. 10 mm/h
    out = baselines.extrapolation(rain, 1, scale="rainrate", threshold=0.1)
    assert out.min() >= 0 and out.max() == pytest.approx(rain.max(), rel=0.05)
    with pytest.raises(ValueError, match="at least 3"):
        baselines.steps_ensemble(rain[:2], 1, 2, scale="rainrate", threshold=0.1)
