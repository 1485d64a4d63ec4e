"""The forecast as GRIB2: probabilities (templates 4.5 / 4.9, percent) and the ensemble mean (4.2 / 4.12) on the
HRRR Lambert crop (3.30) or a regular lat/lon grid (3.0), read back with eccodes and with cfgrib/xarray."""

import numpy as np
import pytest
import xarray as xr

import def_ray  # noqa: F401  (imports pyproj before eccodes)
import eccodes

from def_ray.data.grib_writer import GribWriteError, LatLonGrid
from def_ray.data.grid import HRRR_GRID
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.forecast.grib_output import grib2_bytes
from def_ray.forecast.writer import open_forecast, output_format, write_forecast

GRID = HRRR_GRID.crop(400, 900, 6, 7)
THRESHOLDS = [20.0, 35.5, 0.254]
INIT = "2024-06-01T18:00"


def _dataset(target="refc", *, members=4, leads=2, step_seconds=3600, latlon=False, thresholds=THRESHOLDS):
    rng = np.random.default_rng(1)
    ens = rng.normal(25, 15, (members, leads, 1, GRID.ny, GRID.nx)).astype(np.float32)
    if latlon:  # a coarsened MRMS crop: 0.04 degree, rows south to north, float32 coordinates as the store holds
        lat, lon = np.meshgrid(33.125 + 0.04 * np.arange(GRID.ny), -101.375 + 0.04 * np.arange(GRID.nx),
                               indexing="ij")
        projection = {"grid_mapping_name": "latitude_longitude"}
    else:
        (lat, lon), projection = GRID.latlon(), GRID.attrs()
    return build_forecast_dataset(ens, targets=[target], init_time=INIT, step_seconds=step_seconds,
                                  latitude=lat, longitude=lon, projection=projection, thresholds=thresholds)


_KEYS = ("shortName", "discipline", "parameterCategory", "parameterNumber", "productDefinitionTemplateNumber",
         "typeOfGeneratingProcess", "significanceOfReferenceTime", "dataDate", "dataTime", "stepUnits",
         "forecastTime", "endStep", "gridType", "packingType")
_OPTIONAL = ("probabilityType", "lowerLimit", "scaleFactorOfLowerLimit", "scaledValueOfLowerLimit",
             "forecastProbabilityNumber", "totalNumberOfForecastProbabilities", "derivedForecast",
             "numberOfForecastsInEnsemble", "typeOfStatisticalProcessing", "lengthOfTimeRange",
             "latitudeOfFirstGridPointInDegrees", "longitudeOfFirstGridPointInDegrees", "DxInMetres", "DyInMetres",
             "LoVInDegrees", "Latin1InDegrees", "latitudeOfLastGridPointInDegrees", "iDirectionIncrementInDegrees",
             "jDirectionIncrementInDegrees", "jScansPositively", "Nx", "Ny", "Ni", "Nj")


def _messages(path) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                m = {k: eccodes.codes_get(h, k) for k in _KEYS}
                m.update({k: eccodes.codes_get(h, k) for k in _OPTIONAL if eccodes.codes_is_defined(h, k)})
                m["values"] = eccodes.codes_get_values(h)
                out.append(m)
            finally:
                eccodes.codes_release(h)
    return out


def test_probabilities_and_mean_on_the_lambert_crop(tmp_path):
    ds = _dataset()
    path = write_forecast(ds, str(tmp_path / "forecast.grib2"))
    msgs = _messages(path)
    assert len(msgs) == 2 * (1 + len(THRESHOLDS))  # per lead: the mean, then one per threshold
    for m in msgs:  # refc's identity from the lexicon; the init time as reference time, "start of forecast"
        assert (m["shortName"], m["discipline"], m["parameterCategory"], m["parameterNumber"]) == ("refc", 0, 16, 196)
        assert (m["dataDate"], m["dataTime"], m["significanceOfReferenceTime"]) == (20240601, 1800, 1)
        assert (m["stepUnits"], m["packingType"], m["gridType"]) == (1, "grid_ieee", "lambert")
        assert (m["Nx"], m["Ny"], m["DxInMetres"], m["DyInMetres"]) == (GRID.nx, GRID.ny, 3000, 3000)
        assert m["latitudeOfFirstGridPointInDegrees"] == pytest.approx(GRID.first_lat, abs=1e-6)
        assert m["longitudeOfFirstGridPointInDegrees"] == pytest.approx(GRID.first_lon, abs=1e-6)
        assert (m["LoVInDegrees"], m["Latin1InDegrees"], m["jScansPositively"]) == (262.5, 38.5, 1)
    probs = [m for m in msgs if m["productDefinitionTemplateNumber"] == 5]
    means = [m for m in msgs if m["productDefinitionTemplateNumber"] == 2]
    assert len(probs) == 2 * len(THRESHOLDS) and len(means) == 2
    for i, m in enumerate(means):
        assert (m["forecastTime"], m["typeOfGeneratingProcess"]) == (i + 1, 4)
        assert (m["derivedForecast"], m["numberOfForecastsInEnsemble"]) == (0, 4)
        np.testing.assert_array_equal(m["values"], ds["refc_mean"].isel(lead_time=i).values.ravel())
    for m in probs:
        i, k = m["forecastTime"] - 1, m["forecastProbabilityNumber"] - 1
        # 3 = above the lower limit; 3 thresholds; 5 = probability forecast
        assert (m["probabilityType"], m["totalNumberOfForecastProbabilities"], m["typeOfGeneratingProcess"]) == (
            3, 3, 5)
        assert m["lowerLimit"] == pytest.approx(THRESHOLDS[k], abs=1e-12)
        expected = ds["refc_probability"].isel(threshold=k, lead_time=i).values.ravel()
        # percent, IEEE 32-bit: the Dataset's value x 100 in float32, exactly
        np.testing.assert_array_equal(m["values"], expected * np.float32(100))
        assert 0 <= m["values"].min() and m["values"].max() <= 100
    assert [(m["scaleFactorOfLowerLimit"], m["scaledValueOfLowerLimit"]) for m in probs[:3]] == [(0, 20), (1, 355),
                                                                                                 (3, 254)]
    assert sorted((m["forecastTime"], m["forecastProbabilityNumber"]) for m in probs) == [
        (i, k) for i in (1, 2) for k in (1, 2, 3)]


def test_cfgrib_reads_the_probabilities_and_the_grid(tmp_path):
    ds = _dataset()
    path = write_forecast(ds, str(tmp_path / "forecast.grb2"))
    lat, lon = GRID.latlon()
    for k, threshold in enumerate(THRESHOLDS):
        factor = [0, 1, 3][k]
        keys = {"productDefinitionTemplateNumber": 5, "scaleFactorOfLowerLimit": factor,
                "scaledValueOfLowerLimit": round(threshold * 10**factor)}
        back = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": "", "filter_by_keys": keys})
        refc = back["refc"].load()
        assert refc.dims == ("step", "y", "x")
        assert list(refc["step"].values) == list(ds["lead_time"].values)
        assert back["time"].values == np.datetime64(INIT, "ns")
        np.testing.assert_array_equal(refc.values, ds["refc_probability"].isel(threshold=k).values * np.float32(100))
        np.testing.assert_allclose(back["latitude"].values, lat, atol=1e-4)
        np.testing.assert_allclose(back["longitude"].values % 360, lon % 360, atol=1e-4)
    mean = xr.open_dataset(path, engine="cfgrib",
                           backend_kwargs={"indexpath": "", "filter_by_keys": {"productDefinitionTemplateNumber": 2}})
    np.testing.assert_array_equal(mean["refc"].values, ds["refc_mean"].values)
    assert not list(tmp_path.glob("*.idx"))


def test_regular_latlon_grid_and_an_accumulation(tmp_path):
    """qpe_01h (MRMS, NSSL discipline 209) on a regular lat/lon grid: templates 3.0, 4.9 and 4.12, the hour ending
    at the valid time."""
    ds = _dataset("qpe_01h", latlon=True, thresholds=[1.0, 25.4])
    path = write_forecast(ds, str(tmp_path / "qpe.grib2"))
    msgs = _messages(path)
    assert len(msgs) == 2 * 3
    lat, lon = ds["latitude"].values, ds["longitude"].values
    for m in msgs:
        assert (m["discipline"], m["parameterCategory"], m["parameterNumber"]) == (209, 6, 9)
        assert (m["gridType"], m["Ni"], m["Nj"], m["jScansPositively"]) == ("regular_ll", GRID.nx, GRID.ny, 1)
        assert m["latitudeOfFirstGridPointInDegrees"] == pytest.approx(lat[0, 0], abs=1e-5)
        assert m["longitudeOfFirstGridPointInDegrees"] == pytest.approx(lon[0, 0] % 360, abs=1e-5)
        assert m["latitudeOfLastGridPointInDegrees"] == pytest.approx(lat[-1, 0], abs=1e-5)
        assert (m["iDirectionIncrementInDegrees"], m["jDirectionIncrementInDegrees"]) == (0.04, 0.04)
        assert (m["typeOfStatisticalProcessing"], m["lengthOfTimeRange"]) == (1, 1)  # a 1-hour accumulation
        assert m["endStep"] == m["forecastTime"] + 1
    assert sorted(m["productDefinitionTemplateNumber"] for m in msgs) == [9, 9, 9, 9, 12, 12]
    prob = [m for m in msgs if m["productDefinitionTemplateNumber"] == 9 and m["endStep"] == 2]
    assert [m["lowerLimit"] for m in prob] == [1.0, 25.4]
    expected = ds["qpe_01h_probability"].isel(threshold=1, lead_time=1).values.ravel()
    np.testing.assert_array_equal(prob[1]["values"], expected * np.float32(100))
    back = xr.open_dataset(path, engine="cfgrib", backend_kwargs={
        "indexpath": "", "filter_by_keys": {"productDefinitionTemplateNumber": 12}})
    np.testing.assert_allclose(back["latitude"].values, lat[:, 0], atol=1e-5)
    np.testing.assert_allclose(back["longitude"].values, lon[0] % 360, atol=1e-5)
    np.testing.assert_array_equal(back[list(back.data_vars)[0]].values, ds["qpe_01h_mean"].values)


def test_leads_in_minutes(tmp_path):
    path = tmp_path / "f.grib2"
    path.write_bytes(grib2_bytes(_dataset(step_seconds=600)))
    assert [(m["stepUnits"], m["forecastTime"]) for m in _messages(path)][::4] == [(0, 10), (0, 20)]


def test_an_existing_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "forecast.grib2"
    write_forecast(_dataset(members=4), str(path))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        write_forecast(_dataset(members=6), str(path))
    assert path.read_bytes() == before
    write_forecast(_dataset(members=6), str(path), overwrite=True)
    assert {m["numberOfForecastsInEnsemble"] for m in _messages(path) if "numberOfForecastsInEnsemble" in m} == {6}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forecast.grib2"]  # no temporary file left beside it


def test_what_grib2_cannot_hold_is_refused_before_writing(tmp_path):
    assert output_format("x.GRIB2") == output_format("s3://b/x.grb2") == "grib2"
    ds = _dataset(latlon=True)
    bent = ds.assign_coords(latitude=ds["latitude"] + 0.001 * ds["x"] ** 2)  # not a regular grid
    with pytest.raises(GribWriteError, match="not a regular grid"):
        write_forecast(bent, str(tmp_path / "bent.grib2"))
    with pytest.raises(GribWriteError, match="no exact decimal form"):
        write_forecast(_dataset(thresholds=[1 / 3]), str(tmp_path / "third.grib2"))
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="read it with eccodes or cfgrib"):
        open_forecast(str(tmp_path / "any.grib2"))


def test_latlon_grid_from_coordinates():
    lat, lon = np.meshgrid([30.0, 30.5, 31.0], [-100.0, -99.75], indexing="ij")
    assert LatLonGrid.from_latlon(lat, lon) == LatLonGrid(3, 2, 30.0, 260.0, 0.5, 0.25)
    with pytest.raises(ValueError, match="rows south to north"):
        LatLonGrid.from_latlon(lat[::-1], lon)


@pytest.mark.s3
def test_put_once_on_s3(s3_bucket):
    import fsspec

    bucket, opts = s3_bucket
    url = write_forecast(_dataset(), f"s3://{bucket}/fc/forecast.grib2", opts)
    fs = fsspec.filesystem("s3", **opts)
    assert fs.cat_file(f"{bucket}/fc/forecast.grib2") == grib2_bytes(_dataset())
    with pytest.raises(FileExistsError, match="already exists"):
        write_forecast(_dataset(members=6), url, opts)


@pytest.mark.ray
@pytest.mark.slow
def test_forecast_command_writes_grib2(ray_session, tmp_path, capsys):
    import yaml

    from def_ray.commands import forecast_main
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    store = tiny_store(tmp_path / "s.zarr", hours=20)
    cfg = tiny_config(store.url)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", cfg)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.dump()))
    out = tmp_path / "forecast.grib2"
    args = ["--model", ckpt, "--config", str(tmp_path / "cfg.yaml"), "--members", "3", "--lead-hours", "1",
            "--out", str(out), "--no-progress"]
    assert forecast_main(args) == 0, capsys.readouterr().err
    msgs = _messages(out)
    thresholds = cfg.forecast.thresholds
    assert len(msgs) == 1 + len(thresholds)
    assert [m["lowerLimit"] for m in msgs[1:]] == [float(t) for t in thresholds]
    assert {(m["forecastTime"], m["gridType"], m["Nx"], m["Ny"]) for m in msgs} == {(1, "lambert", 16, 16)}
    assert msgs[0]["numberOfForecastsInEnsemble"] == 3
    assert all(0 <= m["values"].min() and m["values"].max() <= 100 for m in msgs[1:])
    assert forecast_main(args) == 2  # an existing output is refused before any sampling
    assert "already exists" in capsys.readouterr().err
