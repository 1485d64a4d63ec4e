"""The written forecast is standard: CF standard names, units on the threshold coordinate, probabilities in units
"1", and the NetCDF form opens with plain xarray/netCDF4 (what Panoply-class tools read).  cf_xarray (a test
dependency) finds the standard names as CF tools do; the explicit assertions check the rest."""

import numpy as np
import pytest
import xarray as xr

from def_ray.data.grid import HRRR_GRID
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.forecast.products import ensemble_mean, ensemble_spread, exceedance_probability
from def_ray.forecast.writer import CF_STANDARD_NAMES, cf_conventions, netcdf_bytes, open_forecast, write_forecast

GRID = HRRR_GRID.crop(400, 900, 6, 7)


def _dataset(targets=("refc",), thresholds=(20, 35, 50)):
    rng = np.random.default_rng(1)
    ens = rng.normal(25, 15, (4, 2, len(targets), GRID.ny, GRID.nx)).astype(np.float32)
    lat, lon = GRID.latlon()
    return build_forecast_dataset(ens, targets=list(targets), init_time="2024-06-01T18:00", step_seconds=3600,
                                  latitude=lat, longitude=lon, projection=GRID.attrs(), thresholds=thresholds,
                                  quantiles=[0.1, 0.9], attrs={"seed": 3})


def _check_cf(ds: xr.Dataset) -> None:
    assert ds.attrs["Conventions"].startswith("CF-")
    # reflectivity: CF's name for it in dBZ; the ensemble statistics are the same quantity (cell_methods say which)
    for var in ("refc", "refc_mean", "refc_spread", "refc_quantile"):
        assert ds[var].attrs["standard_name"] == "equivalent_reflectivity_factor", var
        assert ds[var].attrs["units"] == "dBZ" and ds[var].attrs["long_name"], var
    assert ds["refc_mean"].attrs["cell_methods"] == "realization: mean"
    prob = ds["refc_probability"]
    assert prob.attrs["units"] == "1" and "standard_name" not in prob.attrs
    assert prob.attrs["long_name"] == "probability that composite reflectivity >= threshold (dBZ)"
    assert 0.0 <= float(prob.min()) and float(prob.max()) <= 1.0
    thr = ds["threshold"]
    assert thr.attrs["units"] == "dBZ" and thr.attrs["standard_name"] == "equivalent_reflectivity_factor"
    assert thr.attrs["long_name"] == "exceedance threshold of refc"
    assert thr.attrs["spp__relative_to_threshold"] == "greater_than_or_equal_to"
    assert ds["quantile"].attrs["units"] == "1"
    assert ds["member"].attrs["standard_name"] == "realization"
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"
    assert ds["refc"].attrs["grid_mapping"] == "lambert_conformal"
    assert ds["latitude"].attrs["units"] == "degrees_north" and ds["x"].attrs["units"] == "m"


def test_cf_conventions_adds_names_and_units_and_leaves_the_input_alone():
    ds = _dataset()
    before = {k: dict(v.attrs) for k, v in ds.variables.items()}
    out = cf_conventions(ds)
    _check_cf(out)
    assert {k: dict(v.attrs) for k, v in ds.variables.items()} == before  # a copy: the caller's Dataset unchanged
    np.testing.assert_array_equal(out["refc"].values, ds["refc"].values)
    xr.testing.assert_identical(cf_conventions(out), out)  # idempotent


@pytest.mark.parametrize("name", ["forecast.zarr", "forecast.nc"])
def test_written_forecast_is_cf(tmp_path, name):
    path = write_forecast(_dataset(), str(tmp_path / name))
    back = open_forecast(path).load()
    _check_cf(back)
    # the coordinates a CF reader resolves: valid time on lead_time, 2-D lat/lon on every field
    assert back["time"].attrs["standard_name"] == "time"
    assert set(back["refc_probability"].coords) >= {"threshold", "latitude", "longitude", "time"}


def test_netcdf_opens_with_netcdf4_alone(tmp_path):
    """The NetCDF form, read with the netCDF4 library (no xarray decoding): the attributes Panoply shows."""
    netCDF4 = pytest.importorskip("netCDF4")
    path = tmp_path / "forecast.nc"
    path.write_bytes(netcdf_bytes(_dataset()))
    with netCDF4.Dataset(path) as nc:
        assert nc.variables["refc"].standard_name == "equivalent_reflectivity_factor"
        assert nc.variables["refc_probability"].units == "1"
        assert nc.variables["threshold"].units == "dBZ"
        assert nc.variables["refc"].grid_mapping == "lambert_conformal"
        assert "latitude" in nc.variables["refc"].coordinates and "longitude" in nc.variables["refc"].coordinates
        assert nc.variables["lead_time"].units in ("hours", "minutes", "seconds")  # a duration (forecast_period)


def test_precipitation_targets_get_their_cf_names():
    """A 1-hour QPE in mm is a water-equivalent depth (CF's precipitation_amount is a mass per area, kg m-2)."""
    assert CF_STANDARD_NAMES["qpe_01h"] == "lwe_thickness_of_precipitation_amount"
    assert CF_STANDARD_NAMES["apcp"] == "precipitation_amount"
    ds = cf_conventions(_dataset(targets=("qpe_01h",), thresholds=(1.0, 10.0)))
    assert ds["qpe_01h"].attrs["standard_name"] == "lwe_thickness_of_precipitation_amount"
    assert ds["qpe_01h"].attrs["units"] == "mm" and ds["threshold"].attrs["units"] == "mm"
    # two targets in different units share one threshold axis: it gets no units, each probability says its own
    two = cf_conventions(_dataset(targets=("refc", "t2m"), thresholds=(20.0,)))
    assert "units" not in two["threshold"].attrs
    assert two["refc_probability"].attrs["threshold_units"] == "dBZ"
    assert two["t2m_probability"].attrs["threshold_units"] == "K"


def test_products_of_a_dataarray_carry_cf_attributes():
    ens = _dataset()["refc"]
    ens.attrs["standard_name"] = "equivalent_reflectivity_factor"
    p = exceedance_probability(ens, [35.0])
    assert p.attrs["units"] == "1" and p["threshold"].attrs["units"] == "dBZ"
    assert p["threshold"].attrs["standard_name"] == "equivalent_reflectivity_factor"
    assert ensemble_mean(ens).attrs["cell_methods"] == "realization: mean"
    assert ensemble_spread(ens).attrs["units"] == "dBZ"


def test_cf_xarray_finds_the_standard_names():
    import cf_xarray  # noqa: F401 - registers the .cf accessor
    ds = cf_conventions(_dataset())
    names = ds.cf.standard_names
    assert "equivalent_reflectivity_factor" in names and "realization" in names
    assert ds.cf["forecast_period"].name == "lead_time"
