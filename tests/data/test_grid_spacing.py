"""Grid spacing in km from lat/lon (what turns motion perturbations in km/h into grid points per step)."""

import numpy as np
import pytest

from def_ray.data.grid import LambertGrid, grid_spacing_km
from def_ray.models.description import ModelDescription


def test_hrrr_lambert_grid_is_3_km():
    lat, lon = LambertGrid().crop(500, 800, 40, 50).latlon()
    # 3 km on the projection plane; the map factor near the standard parallel (38.5 N) is within 1 % of 1
    assert grid_spacing_km(lat, lon) == pytest.approx(3.0, rel=0.01)


def test_regular_latlon_grid_and_the_box_estimate_of_older_checkpoints_agree():
    lats, lons = np.arange(30.0, 45.0, 0.04), np.arange(-100.0, -80.0, 0.04)
    lon, lat = np.meshgrid(lons, lats)
    # 0.04 deg: 4.45 km north-south, 4.45 cos(lat) km east-west at the centre row (about 37.5 N): mean 3.96 km
    expected = np.sqrt(0.04 * 111.19 * 0.04 * 111.19 * np.cos(np.radians(lat[lat.shape[0] // 2, 0])))
    assert grid_spacing_km(lat, lon) == pytest.approx(expected, rel=0.002)
    old = ModelDescription(kind="diffusion", variables=("qpe_01h",), targets=("qpe_01h",), n_past=4, dt_steps=1,
                           timesteps=10, grid={"shape": list(lat.shape),
                                               "projection": {"grid_mapping_name": "latitude_longitude"},
                                               "latlon_box": [lats[0], lats[-1], lons[0], lons[-1]]})
    assert old.km_per_pixel == pytest.approx(grid_spacing_km(lat, lon), rel=0.01)
    recorded = ModelDescription(**{**old.__dict__, "grid": {**old.grid, "km_per_pixel": 2.5}})
    assert recorded.km_per_pixel == 2.5  # what training recorded wins
    lambert = ModelDescription(**{**old.__dict__, "grid": {**old.grid, "projection": {
        "grid_mapping_name": "lambert_conformal_conic"}}})
    assert lambert.km_per_pixel is None  # a box says nothing reliable about a curved grid


def test_a_trained_model_records_its_grid_spacing(tmp_path):
    from def_ray.data.ray_dataset import prepare_windows
    from def_ray.testing import tiny_config, tiny_store

    store = tiny_store(tmp_path / "s.zarr")
    cfg = tiny_config(store.url)
    described = ModelDescription.of_training(cfg, prepare_windows(cfg.data))
    assert described.grid["km_per_pixel"] == pytest.approx(3.0, rel=0.01)  # the synthetic scenes: an HRRR crop
    assert ModelDescription.from_dict(described.to_dict()).km_per_pixel == described.grid["km_per_pixel"]
