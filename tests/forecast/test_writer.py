"""The forecast Dataset and its files: CF layout, Zarr v3 and NetCDF round trips, local and on a real S3 API,
never replacing a path unless asked, and never writing over an input."""

import os
import threading

import numpy as np
import pytest
import xarray as xr

from def_ray.data.grid import HRRR_GRID
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.forecast.writer import (cf_conventions, check_output_not_input, netcdf_bytes, open_forecast,
                                     output_format, write_forecast)

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
def test_round_trip_local_refuses_to_replace_unless_asked(tmp_path, name):
    ens, ds = _dataset()
    path = write_forecast(ds, str(tmp_path / "sub" / name))
    back = open_forecast(path).load()
    # what is written is the Dataset with its CF attributes (cf_conventions), nothing else changed
    xr.testing.assert_identical(back["refc_probability"], cf_conventions(ds)["refc_probability"])
    np.testing.assert_array_equal(back["refc"].values, ens[:, :, 0])
    assert back.attrs["checkpoint"] == "/x/model.pt"
    # a second write is refused with one line naming the path, and the first forecast is untouched
    _, ds2 = _dataset(members=3)
    with pytest.raises(FileExistsError) as err:
        write_forecast(ds2, path)
    assert str(err.value) == f"forecast output {path} already exists; pass --overwrite (overwrite=True) to replace it"
    assert open_forecast(path).sizes["member"] == 5
    # overwrite=True replaces it whole and leaves no temporary siblings
    write_forecast(ds2, path, overwrite=True)
    assert open_forecast(path).sizes["member"] == 3
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [name]


def test_a_plain_open_zarr_of_the_forecast_is_quiet_and_complete(tmp_path):
    import warnings

    ens, ds = _dataset()
    path = write_forecast(ds, str(tmp_path / "f.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Failed to open Zarr store with consolidated metadata"
        back = xr.open_zarr(path).load()
    assert set(back.data_vars) == set(cf_conventions(ds).data_vars)
    np.testing.assert_array_equal(back["refc"].values, ens[:, :, 0])


@pytest.mark.parametrize("name", ["out.zarr", "out.nc"])
def test_refuses_other_things_at_the_path(tmp_path, name):
    _, ds = _dataset()
    empty_dir = tmp_path / "a" / name
    empty_dir.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already exists"):
        write_forecast(ds, str(empty_dir))
    assert empty_dir.is_dir() and not any(empty_dir.iterdir())
    a_file = tmp_path / "b" / name
    a_file.parent.mkdir()
    a_file.write_text("notes")
    with pytest.raises(FileExistsError, match="already exists"):
        write_forecast(ds, str(a_file))
    assert a_file.read_text() == "notes"
    write_forecast(ds, str(a_file), overwrite=True)  # a file replaced by a folder (zarr) or a file (nc)
    assert open_forecast(str(a_file)).sizes["member"] == 5
    assert sorted(p.name for p in a_file.parent.iterdir()) == [name]


@pytest.mark.parametrize("name", ["race.zarr", "race.nc"])
def test_racing_writers_of_one_new_path_one_wins(tmp_path, name):
    """Writers that all passed the existence check before any finished: exactly one lands, the rest are refused."""
    path = str(tmp_path / name)
    n = 4
    datasets = [_dataset(members=m)[1] for m in range(2, 2 + n)]
    start = threading.Barrier(n)
    outcomes: list = [None] * n

    def write(k: int) -> None:
        start.wait()
        try:
            outcomes[k] = write_forecast(datasets[k], path)
        except FileExistsError as err:
            outcomes[k] = err

    threads = [threading.Thread(target=write, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, o in enumerate(outcomes) if o == path]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, FileExistsError) for k, o in enumerate(outcomes) if k not in winners)
    back = open_forecast(path).load()
    xr.testing.assert_identical(back["refc"], cf_conventions(datasets[winners[0]])["refc"])  # one writer's, whole
    assert os.listdir(tmp_path) == [name]


def test_a_failed_write_keeps_the_previous_forecast(tmp_path):
    _, ds = _dataset()
    path = write_forecast(ds, str(tmp_path / "f.zarr"))
    bad = ds.assign(note=xr.DataArray(np.array([object(), object()]), dims=["lead_time"]))  # cannot be encoded
    with pytest.raises(Exception):
        write_forecast(bad, path, overwrite=True)
    assert open_forecast(path).sizes["member"] == 5 and "note" not in open_forecast(path)
    assert os.listdir(tmp_path) == ["f.zarr"]


def test_output_that_is_or_touches_an_input_is_refused(tmp_path, monkeypatch):
    store = tmp_path / "data" / "hrrr.zarr"
    store.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    same = [str(store), "data/hrrr.zarr", "data/hrrr.zarr/", "data/../data/hrrr.zarr", "link/hrrr.zarr",
            f"file://{store}"]
    for out in same:
        with pytest.raises(ValueError, match=f"is the same location as input {store}; write the forecast"):
            check_output_not_input(out, [str(store)])
    with pytest.raises(ValueError, match="is inside input"):
        check_output_not_input("link/hrrr.zarr/forecast.zarr", ["other.zarr", str(store)])
    with pytest.raises(ValueError, match="is a folder holding input"):
        check_output_not_input(str(tmp_path / "data"), [str(store)])
    for fine in ("data/hrrr.zarr2", "data/forecast.zarr", "s3://data/hrrr.zarr"):
        check_output_not_input(fine, [str(store)])

    with pytest.raises(ValueError, match="same location"):
        check_output_not_input("S3A://bkt//runs/./hrrr.zarr/", ["s3://bkt/runs/hrrr.zarr"])
    with pytest.raises(ValueError, match="inside"):
        check_output_not_input("s3://bkt/runs/hrrr.zarr/fc/out.zarr", ["s3://bkt/runs/hrrr.zarr"])
    for fine in ("s3://other/runs/hrrr.zarr", "s3://bkt/runs/hrrr.zarr.fc.zarr", "gs://bkt/runs/hrrr.zarr",
                 "s3://bkt/runs/HRRR.zarr"):
        check_output_not_input(fine, ["s3://bkt/runs/hrrr.zarr"])
    check_output_not_input("s3://bkt/fc.zarr", [])


def test_bad_extension_is_named():
    with pytest.raises(ValueError, match="forecast.grib.*use .zarr or .nc"):
        output_format("forecast.grib")


def test_netcdf_bytes_are_a_netcdf4_file():
    _, ds = _dataset()
    data = netcdf_bytes(ds)
    assert data[:4] == b"\x89HDF"


@pytest.mark.s3
@pytest.mark.parametrize("name", ["f.zarr", "f.nc"])
def test_round_trip_on_s3_refuses_to_replace_unless_asked(s3_bucket, name):
    import fsspec

    bucket, opts = s3_bucket
    ens, ds = _dataset()
    url = write_forecast(ds, f"s3://{bucket}/fc/{name}", opts)
    back = open_forecast(url, opts).load()
    np.testing.assert_array_equal(back["refc"].values, ens[:, :, 0])
    assert back.attrs["sampler"] == "dpmpp"
    _, ds2 = _dataset(members=3)
    with pytest.raises(FileExistsError, match=f"forecast output {url} already exists; pass --overwrite"):
        write_forecast(ds2, url, opts)
    assert open_forecast(url, opts).sizes["member"] == 5
    write_forecast(ds2, url, opts, overwrite=True)
    assert open_forecast(url, opts).load().sizes["member"] == 3
    fs = fsspec.filesystem("s3", **opts)
    fs.invalidate_cache()
    assert fs.ls(f"{bucket}/fc", detail=False) == [f"{bucket}/fc/{name}"]  # no temporary prefix left
    if name.endswith(".zarr"):  # the old forecast's chunks are gone, not mixed with the new ones
        assert not [k for k in fs.find(f"{bucket}/fc/{name}/refc") if "/c/4/" in k]
