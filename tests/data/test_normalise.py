"""The normaliser: rain transform round trip, training-split statistics of transformed values, the checkpoint."""

import numpy as np
import pytest

from def_ray.data.normalise import Normaliser, inverse_transform, transform


def test_log_transform_round_trips_and_floors_at_no_rain():
    x = np.array([0.0, 0.01, 0.1, 1.0, 7.5, 150.0], dtype=np.float32)
    t = transform(x, "log")
    np.testing.assert_allclose(t[[0, 2, 3]], np.log10([0.1, 0.2, 1.1]), rtol=1e-6)
    np.testing.assert_allclose(inverse_transform(t, "log"), x, rtol=1e-5, atol=1e-6)
    assert transform(np.array([-3.0], np.float32), "log")[0] == pytest.approx(-1.0)  # below 0 -> no rain
    assert np.isnan(transform(np.array([np.nan], np.float32), "log")[0])
    with pytest.raises(ValueError, match="unknown transform 'sqrt'"):
        transform(x, "sqrt")


def test_normaliser_transforms_on_the_way_in_and_inverts_on_the_way_out():
    norm = Normaliser({"qpe_01h": -0.6, "refc": 5.0}, {"qpe_01h": 0.7, "refc": 12.0}, "test", {"qpe_01h": "log"})
    frames = np.stack([np.array([[0.0, 0.4, 3.0, 40.0]]), np.array([[-10.0, 0.0, 35.0, 55.0]])]).astype(np.float32)
    z = norm.normalise(frames, ["qpe_01h", "refc"])
    np.testing.assert_allclose(z[0], (np.log10(frames[0] + 0.1) + 0.6) / 0.7, rtol=1e-5)
    np.testing.assert_allclose(z[1], (frames[1] - 5.0) / 12.0, rtol=1e-6)
    np.testing.assert_allclose(norm.denormalise(z, ["qpe_01h", "refc"]), frames, rtol=1e-5, atol=1e-5)
    # a sample far below the no-rain value comes back as 0 mm, not as a negative amount
    assert norm.denormalise(np.full((1, 1, 1), -9.0, np.float32), ["qpe_01h"])[0, 0, 0] == 0.0
    back = Normaliser.from_dict(norm.to_dict(), "again")
    assert back.transforms == {"qpe_01h": "log"} and back.mean == norm.mean


def test_training_statistics_of_a_transformed_variable_and_the_checkpoint(tmp_path):
    from def_ray.data.ray_dataset import prepare_windows
    from def_ray.data.windows import window_times
    from def_ray.data.zarr_store import ZarrStore
    from def_ray.forecast.forecaster import Forecaster
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    store = tiny_store(tmp_path / "s.zarr")
    cfg = tiny_config(store.url, data={"transforms": {"cape": "log"}})
    wd = prepare_windows(cfg.data)
    frames = ZarrStore(store.url).read("cape", window_times(wd.splits.train, 2, 1).tolist()).astype(np.float64)
    t = np.log10(np.maximum(frames, 0) + 0.1)
    norm = wd.spec.normaliser
    assert norm.mean["cape"] == pytest.approx(t.mean(), rel=1e-6) and norm.std["cape"] == pytest.approx(t.std(),
                                                                                                      rel=1e-6)
    assert norm.transforms == {"cape": "log"} and norm.mean["refc"] == pytest.approx(
        ZarrStore(store.url).stats(window_times(wd.splits.train, 2, 1).tolist())["refc"].mean)
    fc = Forecaster.load(tiny_checkpoint(tmp_path / "m.pt", cfg), light=True)
    assert fc.normaliser().transforms == {"cape": "log"} and fc.normaliser().mean == pytest.approx(dict(norm.mean))
