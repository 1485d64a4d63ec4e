"""The forecast Dataset and its files: CF layout, Zarr v3 and NetCDF round trips, local and on a real S3 API."""

import numpy as np
import pytest
import xarray as xr

from def_ray.data.grid import HRRR_GRID
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.forecast.writer import netcdf_bytes, open_forecast, output_format, write_forecast

GRID = HRRR_GRID.crop(400, 900, 8, 10)


def _dataset(members=5, leads=2):
    rng = np.random.default_rng(0)
    ens = rng.normal(25, 15, (members, leads, 1, GRID.ny, GRID.nx)).astype(np.float32)
    lat, lon = GRID.latlon()
    ds = build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01T18:00", step_seconds=3600,
                                latitude=lat, longitude=lon, projection=GRID.attrs(), thresholds=[20, 35],
                                quantiles=[0.1, 0.9], attrs={"seed": 7, "sampler": "dpmpp", "steps": 4,
                                                             "checkpoint": "/x/model.pt", "flag": True})
    return ens, ds


def test_dataset_layout_and_cf_attributes():
    ens, ds = _dataset()
    assert ds["refc"].dims == ("member", "lead_time", "y", "x")
    assert ds["refc_probability"].dims == ("threshold", "lead_time", "y", "x")
    assert ds["refc_quantile"].dims == ("quantile", "lead_time", "y", "x")
    assert ds["refc_mean"].dims == ds["refc_spread"].dims == ("lead_time", "y", "x")
    np.testing.assert_array_equal(ds["refc"].values, ens[:, :, 0])
    np.testing.assert_array_equal(ds["time"].values, np.array(["2024-06-01T19", "2024-06-01T20"],
                                                               dtype="datetime64[ns]"))
    assert ds["refc"].attrs["units"] == "dBZ" and ds["refc"].attrs["grid_mapping"] == "lambert_conformal"
    assert ds["lambert_conformal"].attrs["grid_mapping_name"] == "lambert_conformal_conic"
    assert ds.attrs["Conventions"].startswith("CF") and ds.attrs["seed"] == 7 and ds.attrs["flag"] == 1
    # projection x/y come from the grid: 3 km apart
    np.testing.assert_allclose(np.diff(ds["x"].values), 3000.0)
    p = ds["refc_probability"].sel(threshold=35).values
    np.testing.assert_array_equal(p, (ens[:, :, 0] >= 35).mean(0).astype(np.float32))


@pytest.mark.parametrize("name", ["out.zarr", "out.nc"])
def test_round_trip_local_and_rewrite(tmp_path, name):
    ens, ds = _dataset()
    path = write_forecast(ds, str(tmp_path / "sub" / name))
    back = open_forecast(path).load()
    xr.testing.assert_identical(back["refc_probability"], ds["refc_probability"])
    np.testing.assert_array_equal(back["refc"].values, ens[:, :, 0])
    assert back.attrs["checkpoint"] == "/x/model.pt"
    # writing again replaces it whole and leaves no temporary siblings
    _, ds2 = _dataset(members=3)
    write_forecast(ds2, path)
    assert open_forecast(path).sizes["member"] == 3
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [name]


def test_bad_extension_is_named():
    with pytest.raises(ValueError, match="forecast.grib.*use .zarr or .nc"):
        output_format("forecast.grib")


def test_netcdf_bytes_are_a_netcdf4_file():
    _, ds = _dataset()
    data = netcdf_bytes(ds)
    assert data[:4] == b"\x89HDF"


@pytest.mark.s3
@pytest.mark.parametrize("name", ["f.zarr", "f.nc"])
def test_round_trip_on_s3(s3_bucket, name):
    bucket, opts = s3_bucket
    ens, ds = _dataset()
    url = write_forecast(ds, f"s3://{bucket}/fc/{name}", opts)
    back = open_forecast(url, opts).load()
    np.testing.assert_array_equal(back["refc"].values, ens[:, :, 0])
    assert back.attrs["sampler"] == "dpmpp"
