"""MRMS decoding on the real frames of ../shared/data/mrms (NSSL tables, sentinel values, crop and coarsen)."""

from __future__ import annotations

import gzip
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from def_ray.data.mrms import MrmsError, crop_and_coarsen, read_mrms, read_mrms_header, read_mrms_series

pytestmark = pytest.mark.realdata

REFL = "reflectivity/MRMS_MergedReflectivityQCComposite_00.50_20220704-110040.grib2"


def _raw(path) -> np.ndarray:
    """The file's values exactly as eccodes decodes them, sentinels included (north-to-south rows)."""
    import eccodes

    with open(path, "rb") as fh:
        h = eccodes.codes_grib_new_from_file(fh)
    try:
        nj, ni = eccodes.codes_get(h, "Nj"), eccodes.codes_get(h, "Ni")
        return eccodes.codes_get_values(h).reshape(nj, ni).astype(np.float32)
    finally:
        eccodes.codes_release(h)


def _name_time(path) -> datetime:
    return datetime.strptime(re.search(r"(\d{8}-\d{6})", path.name).group(1), "%Y%m%d-%H%M%S")


@pytest.fixture(scope="module")
def rain_paths(shared_data):
    paths = sorted((shared_data / "mrms" / "preciprate_20190610").glob("PrecipRate_*.grib2"))
    assert len(paths) == 20
    return paths


@pytest.fixture(scope="module")
def frame0(rain_paths):
    return read_mrms(rain_paths[0]), _raw(rain_paths[0])


@pytest.mark.slow
def test_preciprate_decodes_on_the_documented_grid(frame0):
    da, _ = frame0
    assert da.name == "preciprate" and da.dims == ("latitude", "longitude") and da.shape == (3500, 7000)
    assert da.dtype == np.float32
    # corners per the data README: 54.995N..20.005N, -129.995..-60.005, 0.01 degree
    assert da.latitude[0] == pytest.approx(54.995) and da.latitude[-1] == pytest.approx(20.005)
    assert da.longitude[0] == pytest.approx(-129.995) and da.longitude[-1] == pytest.approx(-60.005)
    np.testing.assert_allclose(np.diff(da.latitude), -0.01, atol=1e-6)
    np.testing.assert_allclose(np.diff(da.longitude), 0.01, atol=1e-6)
    assert da.attrs["product"] == "PrecipRate" and da.attrs["units"] == "mm h-1"
    assert da.attrs["valid_time"] == "2019-06-10T00:00:00"
    assert da.time.values == np.datetime64("2019-06-10T00:00:00")


@pytest.mark.slow
def test_no_coverage_is_masked_and_nothing_else(frame0):
    da, raw = frame0
    no_cov = raw == -3.0
    assert 8_000_000 < no_cov.sum() < 9_500_000  # the README's 8.8 M pixels outside radar coverage
    np.testing.assert_array_equal(np.isnan(da.values), no_cov)
    np.testing.assert_array_equal(da.coverage.values, ~no_cov)
    np.testing.assert_array_equal(da.values[~no_cov], raw[~no_cov])  # every measured value kept as decoded
    assert float(da.min()) == 0.0  # no sentinel left among the data


@pytest.mark.slow
def test_known_convective_peak_is_found(frame0):
    da, _ = frame0
    peak = da.where(da == da.max(), drop=True)
    # README: peaks near 150 mm/h at about 33N -86W; "about" = within half a degree
    assert 140 <= float(da.max()) <= 155
    assert abs(float(peak.latitude[0]) - 33) < 0.5 and abs(float(peak.longitude[0]) + 86) < 0.5
    heavy = int((da >= 10).sum())
    assert 20_000 <= heavy <= 30_000  # README: 22,000-29,000 pixels >= 10 mm/h per frame (rounded figures)


@pytest.mark.slow
@pytest.mark.parametrize("factor, min_cov", [(10, 0.5), (7, 0.9), (1, 0.5)])
def test_crop_and_coarsen_equals_direct_numpy(frame0, factor, min_cov):
    da, raw = frame0
    # a box straddling the coast of the Gulf of Mexico: some blocks full, some partly, some not covered at all
    lat_range, lon_range = (25.0, 31.0), (-90.0, -84.0)
    out = crop_and_coarsen(da, lat_range, lon_range, factor, min_coverage=min_cov)

    lat = 54.995 - 0.01 * np.arange(3500)
    lon = -129.995 + 0.01 * np.arange(7000)
    rows = np.flatnonzero((lat >= 25.0 - 1e-6) & (lat <= 31.0 + 1e-6))
    cols = np.flatnonzero((lon >= -90.0 - 1e-6) & (lon <= -84.0 + 1e-6))
    ny, nx = len(rows) // factor, len(cols) // factor
    box = raw[np.ix_(rows[:ny * factor], cols[:nx * factor])].astype(np.float64)
    box[box == -3.0] = np.nan
    blocks = box.reshape(ny, factor, nx, factor)
    valid = np.isfinite(blocks).sum(axis=(1, 3))
    sums = np.nansum(blocks, axis=(1, 3))
    cover = valid / factor**2
    with np.errstate(invalid="ignore"):
        want = np.where(cover >= min_cov, sums / valid, np.nan)

    assert out.shape == (ny, nx)
    np.testing.assert_allclose(out.values, want, rtol=1e-5, equal_nan=True)  # float32 vs float64 sums
    np.testing.assert_allclose(out.coverage.values, cover, rtol=1e-6)
    assert 0 < np.isnan(want).sum() < want.size  # the box really tests both kinds of block
    np.testing.assert_allclose(out.latitude.values, lat[rows[:ny * factor]].reshape(ny, factor).mean(1), atol=1e-6)


@pytest.mark.slow
def test_times_come_from_the_files(rain_paths, shared_data):
    times = [read_mrms_header(p).valid_time for p in rain_paths]
    assert times == [_name_time(p) for p in rain_paths]  # the GRIB header agrees with the file name
    assert times[0] == datetime(2019, 6, 10) and set(np.diff(times)) == {timedelta(minutes=2)}
    refl = shared_data / "mrms" / REFL
    assert read_mrms_header(refl).valid_time == datetime(2022, 7, 4, 11, 0, 40)  # seconds kept


@pytest.mark.slow
def test_reflectivity_sentinels(shared_data):
    path = shared_data / "mrms" / REFL
    raw = _raw(path)
    da = read_mrms(path)
    assert da.name == "refc_mrms" and da.attrs["units"] == "dBZ"
    no_cov, no_echo = raw == -999.0, raw == -99.0
    # both sentinels are common in this frame (8.7 M outside coverage, 14.4 M covered without echo)
    assert no_cov.sum() > 8_000_000 and no_echo.sum() > 14_000_000
    np.testing.assert_array_equal(np.isnan(da.values), no_cov)
    np.testing.assert_array_equal(da.coverage.values, ~no_cov)
    assert np.all(da.values[no_echo] == -10.0)  # the floor HRRR REFC uses
    echo = ~(no_cov | no_echo)
    np.testing.assert_array_equal(da.values[echo], raw[echo])
    assert float(da.max()) == pytest.approx(67.5)
    assert np.all(read_mrms(path, no_echo_value=-30.0).values[no_echo] == -30.0)


@pytest.mark.slow
def test_series_is_time_ordered_and_north_up(rain_paths):
    paths = rain_paths[:3]
    box = (30.0, 35.0, -88.0, -83.0)
    ds = read_mrms_series(list(reversed(paths)), box, factor=5)
    assert set(ds.data_vars) == {"preciprate", "coverage"}
    assert ds.preciprate.dims == ("time", "y", "x") and ds.preciprate.dtype == np.float32
    assert list(ds.time.values) == [np.datetime64(_name_time(p)) for p in paths]
    assert ds.latitude.dims == ("y", "x") and np.all(np.diff(ds.latitude[:, 0]) > 0)  # y runs south to north
    for i, p in enumerate(paths):
        one = crop_and_coarsen(read_mrms(p), box[:2], box[2:], 5)
        np.testing.assert_array_equal(ds.preciprate[i].values, one.values[::-1])
        np.testing.assert_array_equal(ds.coverage[i].values, one.coverage.values[::-1])
    # the storm is in the box: a 5 x 5 km block mean above 50 mm/h somewhere
    assert float(ds.preciprate.max()) > 50


@pytest.fixture(scope="module")
def qpe_paths(shared_data):
    paths = sorted((shared_data / "mrms" / "qpe_01h_20160920-21").glob("MRMS_GaugeCorr_QPE_01H_*.grib2"))
    assert len(paths) == 48
    return paths


@pytest.mark.slow
def test_hourly_gauge_corrected_qpe(qpe_paths):
    # every hour of the two days, in order, valid at the end of its accumulation hour as the file name says
    times = [read_mrms_header(p).valid_time for p in qpe_paths]
    assert times == [_name_time(p) for p in qpe_paths]
    assert times[0] == datetime(2016, 9, 20) and set(np.diff(times)) == {timedelta(hours=1)}
    raw = _raw(qpe_paths[0])
    da = read_mrms(qpe_paths[0])
    assert da.name == "qpe_01h" and da.attrs["units"] == "mm" and da.attrs["grib_identity"] == "209/6/9"
    no_cov = raw == -3.0
    assert set(np.unique(raw[raw < 0])) == {-3.0} and 0.3 < no_cov.mean() < 0.4  # the only sentinel, 35% of CONUS
    np.testing.assert_array_equal(np.isnan(da.values), no_cov)
    np.testing.assert_array_equal(da.values[~no_cov], raw[~no_cov])
    assert float(da.max()) == pytest.approx(82.0)


@pytest.mark.slow
def test_qpe_recipe_box_is_covered_and_wet(qpe_paths):
    # configs/mrms_qpe.yaml's box: inside radar coverage and with rain in it (the recipe verifies something)
    from def_ray.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mrms_qpe.yaml")
    ds = read_mrms_series(qpe_paths[::8], tuple(cfg.mrms.box), cfg.mrms.factor)
    assert ds.qpe_01h.shape == (6, 128, 128)
    assert float(ds.coverage.min()) == 1.0
    assert all(float((ds.qpe_01h[i] >= 1.0).mean()) > 0.05 for i in range(6))


@pytest.mark.slow
def test_gzipped_file_reads_the_same(rain_paths, frame0, tmp_path):
    gz = tmp_path / (rain_paths[0].name + ".gz")
    gz.write_bytes(gzip.compress(rain_paths[0].read_bytes(), compresslevel=1))
    da = read_mrms(gz)
    np.testing.assert_array_equal(da.values, frame0[0].values)
    assert da.attrs["valid_time"] == "2019-06-10T00:00:00"


def test_bad_inputs_are_named(shared_data, tmp_path):
    hrrr = shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-TMP.grib2"
    with pytest.raises(MrmsError, match=r"wrfsfcf01-TMP.*0/0/0.*not a known MRMS product"):
        read_mrms_header(hrrr)
    junk = tmp_path / "x.grib2"
    junk.write_bytes(b"<html>404</html>")
    with pytest.raises(MrmsError, match="x.grib2.*not a GRIB file"):
        read_mrms(junk)
    with pytest.raises(ValueError, match="no files"):
        read_mrms_series([], (30, 35, -88, -83), 5)


def test_crop_and_coarsen_rules_on_a_small_array():
    # 4 x 4 pixels, two 2 x 2 blocks per side; block (0,0) full, (0,1) half covered, (1,0) a quarter, (1,1) empty
    v = np.array([[1, 2, 5, np.nan],
                  [3, 4, np.nan, 7],
                  [8, np.nan, np.nan, np.nan],
                  [np.nan, np.nan, np.nan, np.nan]], dtype=np.float32)
    da = xr.DataArray(v, dims=("latitude", "longitude"),
                      coords={"latitude": [40.0, 39.0, 38.0, 37.0], "longitude": [-100.0, -99.0, -98.0, -97.0]})
    out = crop_and_coarsen(da, (37, 40), (-100, -97), 2, min_coverage=0.5)
    np.testing.assert_array_equal(out.values, [[2.5, 6.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(out.coverage.values, [[1.0, 0.5], [0.25, 0.0]])
    np.testing.assert_array_equal(out.latitude.values, [39.5, 37.5])
    loose = crop_and_coarsen(da, (37, 40), (-100, -97), 2, min_coverage=0.2)
    assert loose.values[1, 0] == 8.0
    with pytest.raises(ValueError, match="holds 0 x 4 pixels"):
        crop_and_coarsen(da, (10, 20), (-100, -97), 2)
    with pytest.raises(ValueError, match="positive integer"):
        crop_and_coarsen(da, (37, 40), (-100, -97), 0)


@pytest.mark.parametrize("name", ["mrms_qpe", "mrms_preciprate", "mrms_qpe_conus"])
def test_recipe_splits_hold_a_window_each(shared_data, name):
    # the recipe's frames, split as its config says, give train, val and test at least one window each
    from def_ray.config import load_config
    from def_ray.data.windows import split_windows

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    folder, pattern = Path(cfg.mrms.files).parent.name, Path(cfg.mrms.files).name
    n = len(list((shared_data / "mrms" / folder).glob(pattern)))
    assert n >= 20, f"{name}: {n} files of {cfg.mrms.files}"
    d = cfg.data
    splits = split_windows(np.ones(n, bool), d.n_past, d.dt_steps, d.val_fraction, d.test_fraction, d.gap_steps)
    assert min(splits.train.size, splits.val.size, splits.test.size) >= 1
    # no test target was seen in training: the last training window ends before the first test window starts
    assert splits.train.max() + d.n_past * d.dt_steps < splits.test.min()
