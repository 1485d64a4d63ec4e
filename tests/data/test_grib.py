"""def_ray.data.grib: real HRRR files decode to the right variables, grid and values; bad files fail clearly."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from def_ray.data.grib import GribDecodeError, decode_grib, scan_grib
from def_ray.data.grib_writer import write_grib2
from def_ray.data.grid import HRRR_GRID

import eccodes  # noqa: E402  after def_ray.data.grib, which loads pyproj first (see its imports)

SMALL = HRRR_GRID.crop(400, 900, 24, 32)

# file -> (variables decoded, valid time, decode kwargs, cfgrib filter for the same message)
REAL = {
    "hrrr.t00z.wrfsfcf00-HPBL.grib2": (["hpbl"], "2025-12-03T00:00", {}, {}),
    "hrrr.t06z.wrfsfcf01-TMP.grib2": (["tsfc"], "2023-07-22T07:00", {}, {}),
    "hrrr.t06z.wrfsfcf01-UGRD.grib2": (["u10"], "2023-07-22T07:00", {}, {}),
    "hrrr.wrfsubhf.sample.grib2": (["refc"], "2022-10-14T01:15", {},
                                   {"parameterCategory": 16, "parameterNumber": 196}),
    "subset_20201214_hrrr.t00z.wrfsfcf12.grib2": (["apcp"], "2020-12-14T12:00", {"step_range": "0-12"},
                                                  {"stepRange": "0-12"}),
}
TRUNCATED = "hrrr.t11z.wrfsfcf12.grib2"


@pytest.fixture(scope="module")
def hrrr_latlon():
    return HRRR_GRID.latlon()


def _cfgrib(path, filter_by_keys):
    import xarray as xr

    ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": "", "filter_by_keys": filter_by_keys})
    (name,) = ds.data_vars
    return ds[name]


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_hrrr_file_decodes_like_cfgrib(shared_data, hrrr_latlon, name):
    variables, valid, kwargs, cf_filter = REAL[name]
    path = shared_data / "hrrr" / name
    ds = decode_grib(path, **kwargs)
    assert sorted(ds.data_vars) == variables
    assert ds.attrs["valid_time"] == np.datetime64(valid, "s")
    assert ds.attrs["source"] == str(path)
    assert ds.attrs["projection"]["ny"] == 1059 and ds.attrs["projection"]["nx"] == 1799
    lat, lon = hrrr_latlon
    # 1e-4 deg is about 10 m, far below the 3 km spacing: the same grid, not a neighbouring one
    np.testing.assert_allclose(ds.latitude.values, lat, atol=1e-4)
    np.testing.assert_allclose(ds.longitude.values, lon, atol=1e-4)
    (var,) = variables
    assert ds[var].dtype == np.float32 and ds[var].dims == ("y", "x") and ds[var].shape == (1059, 1799)
    ref = _cfgrib(path, cf_filter)
    np.testing.assert_array_equal(ds[var].values, ref.values)  # cfgrib gives float32 as well: bit for bit


@pytest.mark.realdata
def test_real_latlon_equal_eccodes_own(shared_data):
    """Our lat/lon come from the grid keys through pyproj; eccodes computes its own from the same keys."""
    ds = decode_grib(shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-TMP.grib2")
    ref = _cfgrib(shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-TMP.grib2", {})
    np.testing.assert_allclose(ds.latitude.values, ref.latitude.values, atol=1e-4)
    np.testing.assert_allclose(ds.longitude.values % 360, ref.longitude.values % 360, atol=1e-4)


@pytest.mark.realdata
def test_two_accumulations_need_a_step_range(shared_data):
    path = shared_data / "hrrr" / "subset_20201214_hrrr.t00z.wrfsfcf12.grib2"
    with pytest.raises(GribDecodeError, match=r"apcp is held by 2 messages.*0-12.*11-12"):
        decode_grib(path)
    last_hour = decode_grib(path, step_range="11-12")
    whole = decode_grib(path, step_range="0-12")
    assert last_hour.apcp.attrs["step_range"] == "11-12" and last_hour.apcp.attrs["grib_message"] == 2
    # the last hour's accumulation is part of the 12-hour one (GRIB packing error is below 0.01 kg m-2)
    assert np.all(last_hour.apcp.values <= whole.apcp.values + 0.01)
    assert float(whole.apcp.max()) > float(last_hour.apcp.max())


@pytest.mark.realdata
def test_message_not_in_lexicon_is_skipped_and_reported(shared_data):
    with pytest.raises(GribDecodeError, match=r"missing-zeros.grib2: no message holds a lexicon variable.*vvcsh"):
        decode_grib(shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-missing-zeros.grib2")
    ds = decode_grib(shared_data / "hrrr" / "hrrr.wrfsubhf.sample.grib2")
    assert list(ds.data_vars) == ["refc"]
    assert len(ds.attrs["skipped"]) == 1 and "vbdsf" in ds.attrs["skipped"][0]


@pytest.mark.realdata
def test_truncated_file_names_file_message_and_offset(shared_data):
    path = shared_data / "hrrr" / TRUNCATED
    with pytest.raises(GribDecodeError) as info:
        decode_grib(path, ["refc"])
    err = info.value
    # message 5 starts after messages 1-4 (600242 + 307437 + 686550 + 377220 bytes)
    assert (err.message, err.offset) == (5, 1971449)
    assert str(path) in str(err) and "message 5 at byte 1971449" in str(err) and "truncated" in str(err)
    with pytest.raises(GribDecodeError, match="message 5"):
        scan_grib(path)
    # on request, the four complete messages still decode and the break is reported
    ds = decode_grib(path, strict=False)
    assert sorted(ds.data_vars) == ["refc", "retop", "vil"]
    assert "message 5 at byte 1971449" in ds.attrs["truncated"]
    assert abs(float(ds.refc.max()) - 68.7) < 0.05  # the data README: REFC max 68.7 dBZ
    assert any("0/16/201" in s for s in ds.attrs["skipped"])


@pytest.mark.realdata
def test_missing_variable_names_what_the_file_holds(shared_data):
    with pytest.raises(GribDecodeError, match=r"TMP.grib2: no message for \['refc'\]; the file holds: message 1 "
                                              r"\(tsfc"):
        decode_grib(shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-TMP.grib2", ["refc", "tsfc"])


@pytest.mark.realdata
@pytest.mark.s3
def test_decode_from_s3_equals_local(shared_data, s3_bucket):
    import fsspec

    bucket, opts = s3_bucket
    local = shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-UGRD.grib2"
    url = f"s3://{bucket}/hrrr/{local.name}"
    fsspec.filesystem("s3", **opts).put_file(str(local), url)
    remote = decode_grib(url, ["u10"], storage_options=opts)
    np.testing.assert_array_equal(remote.u10.values, decode_grib(local, ["u10"]).u10.values)
    assert remote.attrs["source"] == url
    with pytest.raises(GribDecodeError, match=f"s3://{bucket}/nope.grib2: file not found"):
        decode_grib(f"s3://{bucket}/nope.grib2", storage_options=opts)


# -- synthetic files: small, known values ------------------------------------------------------------------------
def _fields(seed: int, names=("refc", "t2m")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(20 * (k + 1), 5, (SMALL.ny, SMALL.nx)).astype("float32") for k, n in enumerate(names)}


def test_synthetic_roundtrip_exact(tmp_path):
    fields = _fields(1)
    path = write_grib2(tmp_path / "a.grib2", fields, datetime(2024, 6, 1, 13), SMALL)
    ds = decode_grib(path)
    for n, v in fields.items():
        np.testing.assert_array_equal(ds[n].values, v)  # written as IEEE float32: exact
    assert ds.attrs["valid_time"] == np.datetime64("2024-06-01T13:00", "s")
    lat, lon = SMALL.latlon()
    np.testing.assert_allclose(ds.latitude.values, lat, atol=1e-6)


def test_missing_values_become_nan(tmp_path):
    path = write_grib2(tmp_path / "a.grib2", _fields(2, ("t2m",)), datetime(2024, 6, 1), SMALL)
    h = eccodes.codes_new_from_message(path.read_bytes())
    values = eccodes.codes_get_values(h)
    hole = np.zeros(values.size, bool)
    hole[::7] = True
    eccodes.codes_set(h, "bitmapPresent", 1)
    eccodes.codes_set(h, "missingValue", 9999.0)
    values[hole] = 9999.0
    eccodes.codes_set_values(h, values)
    (tmp_path / "holes.grib2").write_bytes(eccodes.codes_get_message(h))
    eccodes.codes_release(h)
    got = decode_grib(tmp_path / "holes.grib2").t2m.values.ravel()
    np.testing.assert_array_equal(np.isnan(got), hole)
    np.testing.assert_array_equal(got[~hole], values[~hole].astype("float32"))


def test_truncated_and_corrupt_synthetic_files(tmp_path):
    path = write_grib2(tmp_path / "a.grib2", _fields(3), datetime(2024, 6, 1), SMALL)
    data = path.read_bytes()
    first = int.from_bytes(data[8:16], "big")
    cut = tmp_path / "cut.grib2"
    cut.write_bytes(data[:first + 100])
    with pytest.raises(GribDecodeError, match=rf"cut.grib2: message 2 at byte {first}: truncated"):
        decode_grib(cut)
    bad_end = tmp_path / "bad_end.grib2"
    bad_end.write_bytes(data[:first - 4] + b"XXXX" + data[first:])
    with pytest.raises(GribDecodeError, match=r"bad_end.grib2: message 1 at byte 0: corrupt: no end marker"):
        decode_grib(bad_end)
    junk = tmp_path / "junk.grib2"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(GribDecodeError, match=r"junk.grib2: no GRIB message found in 22 bytes"):
        decode_grib(junk)
    with pytest.raises(GribDecodeError, match="file not found"):
        decode_grib(tmp_path / "absent.grib2")
    # bytes between or after messages are not messages: ignored, as by wgrib2
    padded = tmp_path / "padded.grib2"
    padded.write_bytes(b"\0\0" + data[:first] + b"\n" + data[first:] + b"\n")
    assert sorted(decode_grib(padded).data_vars) == ["refc", "t2m"]


def test_several_valid_times_refused_unless_selected(tmp_path):
    a = write_grib2(tmp_path / "a.grib2", _fields(4), datetime(2024, 6, 1, 12), SMALL)
    b = write_grib2(tmp_path / "b.grib2", _fields(5), datetime(2024, 6, 1, 13), SMALL)
    both = tmp_path / "both.grib2"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    with pytest.raises(GribDecodeError, match=r"both.grib2: holds 2 valid times.*pass valid_time="):
        decode_grib(both)
    ds = decode_grib(both, valid_time="2024-06-01T13:00")
    np.testing.assert_array_equal(ds.t2m.values, _fields(5)["t2m"])
    # choosing only variables of one time is not enough: the same variables exist at both times
    with pytest.raises(GribDecodeError, match="valid times"):
        decode_grib(both, ["refc"])
