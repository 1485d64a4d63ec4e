"""Forecast maps: one PNG per product, real image files of the expected content."""

import numpy as np
import pytest
from PIL import Image

from def_ray.data.grid import HRRR_GRID
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.viz.maps import forecast_maps


def test_maps_written_for_probability_mean_spread_members(tmp_path):
    grid = HRRR_GRID.crop(400, 900, 12, 16)
    lat, lon = grid.latlon()
    ens = np.random.default_rng(0).normal(30, 12, (6, 2, 1, 12, 16)).astype(np.float32)
    ds = build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01T18", step_seconds=3600, latitude=lat,
                                longitude=lon, projection=grid.attrs(), thresholds=[20, 35, 40, 50], quantiles=[0.5])
    paths = forecast_maps(ds, tmp_path / "maps", "refc", members=3)
    assert [p.name for p in paths] == ["refc_probability_lead2h.png", "refc_mean_lead2h.png",
                                       "refc_spread_lead2h.png", "refc_members_lead2h.png"]
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 5, f"{p.name} looks blank"
    # the probability figure has four panels, so it is wider than the one-panel mean map
    assert Image.open(paths[0]).size[0] > 2 * Image.open(paths[1]).size[0]


def test_unknown_variable_is_named(tmp_path):
    ens = np.zeros((2, 1, 1, 4, 4), np.float32)
    ds = build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01", step_seconds=3600)
    with pytest.raises(ValueError, match="'t2m'"):
        forecast_maps(ds, tmp_path, "t2m")
