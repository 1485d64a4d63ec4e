"""def_ray.data.ingest: GRIB2 -> Zarr with Ray tasks; merging per valid time, resuming, bad files, S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import numpy as np
import pytest
import xarray as xr

from def_ray.config import SynthConfig
from def_ray.data.grib import decode_grib
from def_ray.data.grib_writer import write_grib2
from def_ray.data.grid import HRRR_GRID
from def_ray.cli import main
from def_ray.data.ingest import FailedSource, IngestError, IngestReport, format_report, ingest, ingest_dataset
from def_ray.data.synthetic import generate_scenes
from def_ray.data.zarr_store import ZarrStore

H07 = np.datetime64("2023-07-22T07:00", "s")


def _assert_same_store(a: ZarrStore, b: ZarrStore) -> None:
    assert a.variables == b.variables
    np.testing.assert_array_equal(a.committed_mask(), b.committed_mask())
    np.testing.assert_array_equal(a.all_times(), b.all_times())
    for v in a.variables:
        np.testing.assert_array_equal(a.group[v][:], b.group[v][:])  # NaN in the same places counts as equal
    np.testing.assert_array_equal(a.group["step_stats"][:], b.group["step_stats"][:])
    assert a.group.attrs["stats"] == b.group.attrs["stats"]


@pytest.mark.realdata
@pytest.mark.ray
@pytest.mark.slow
def test_real_files_merge_by_time_and_bad_files_are_reported(shared_data, ray_session, tmp_path):
    hrrr = shared_data / "hrrr"
    sources = [hrrr / "hrrr.t06z.wrfsfcf01-TMP.grib2", hrrr / "hrrr.t06z.wrfsfcf01-UGRD.grib2",
               hrrr / "hrrr.t11z.wrfsfcf12.grib2", hrrr / "hrrr.t06z.wrfsfcf01-missing-zeros.grib2"]
    out = str(tmp_path / "real.zarr")
    report = ingest([str(s) for s in sources], out, ["tsfc", "u10"], tile=512, progress=False)
    assert report.written == [H07] and not report.skipped
    failed = {f.source: f for f in report.failed}
    assert set(failed) == {str(sources[2]), str(sources[3])}
    trunc = failed[str(sources[2])]
    assert trunc.message == 5 and trunc.offset == 1971449 and "truncated" in trunc.reason
    assert "holds none of ['tsfc', 'u10']" in failed[str(sources[3])].reason
    text = format_report(report)
    assert "1 step(s) written" in text and "2 failure(s)" in text
    assert f"FAILED {sources[2]} (message 5 at byte 1971449): truncated" in text

    store = ZarrStore(out)
    assert store.shape == (1, 1059, 1799)
    tsfc = decode_grib(sources[0]).tsfc.values
    u10 = decode_grib(sources[1]).u10.values
    np.testing.assert_array_equal(store.read("tsfc", 0), tsfc)
    np.testing.assert_array_equal(store.read("u10", 0), u10)
    # float64 sums over 1.9 M float32 values: means agree far below 1e-7 relative
    assert report.stats["tsfc"]["mean"] == pytest.approx(tsfc.astype("float64").mean(), rel=1e-7)
    assert report.stats["u10"]["std"] == pytest.approx(u10.astype("float64").std(), rel=1e-6)
    assert store.projection["nx"] == 1799

    again = ingest([str(s) for s in sources[:2]], out, ["tsfc", "u10"], progress=False)
    assert again.written == [] and again.skipped == [H07] and again.ok


# -- synthetic hours: small crops, many steps ------------------------------------------------------------------------
CFG = SynthConfig(seed=3, hours=6, ny=24, nx=32, start=datetime(2024, 6, 1, 12))
VARS = ["refc", "t2m", "u10"]


@pytest.fixture(scope="module")
def scenes() -> xr.Dataset:
    return generate_scenes(CFG)[VARS]


def _write_split(scenes: xr.Dataset, folder, hours=None) -> list[str]:
    """Per hour two files, as byte-range fetches give them: refc + t2m in one, u10 in the other."""
    grid = HRRR_GRID.crop(CFG.y0, CFG.x0, CFG.ny, CFG.nx)
    paths = []
    for k in range(scenes.sizes["time"]) if hours is None else hours:
        t = CFG.start + timedelta(hours=k)
        f = {v: scenes[v].values[k] for v in VARS}
        paths.append(str(write_grib2(folder / f"{k:02d}-a.grib2", {"refc": f["refc"], "t2m": f["t2m"]}, t, grid)))
        paths.append(str(write_grib2(folder / f"{k:02d}-b.grib2", {"u10": f["u10"]}, t, grid)))
    return paths


@pytest.mark.ray
def test_synthetic_hours_equal_the_dataset_path_and_resume(scenes, ray_session, tmp_path):
    paths = _write_split(scenes, tmp_path)
    missing_hour = [p for p in paths if not p.endswith("03-b.grib2")]
    out = str(tmp_path / "grib.zarr")
    first = ingest(missing_hour, out, VARS, tile=16, progress=False)
    times = scenes.time.values.astype("datetime64[s]")
    assert first.written == [t for k, t in enumerate(times) if k != 3]
    (fail,) = first.failed
    assert fail.valid_time == times[3] and "no file holds ['u10']" in fail.reason and "03-a.grib2" in fail.source
    assert ZarrStore(out).committed_mask().tolist() == [True, True, True, False, True, True]

    second = ingest(paths, out, VARS, tile=16, progress=False)  # the late file arrives: only its step is written
    assert second.written == [times[3]] and second.ok and len(second.skipped) == 5

    via_dataset = str(tmp_path / "ds.zarr")
    report = ingest_dataset(scenes, via_dataset, tile=16, progress=False)
    assert report.written == list(times)
    # GRIB2 written as IEEE float32 decodes bit for bit, so both paths give identical stores
    _assert_same_store(ZarrStore(out), ZarrStore(via_dataset))
    np.testing.assert_array_equal(ZarrStore(out).read("u10", 2), scenes.u10.values[2])


def test_conflicting_and_invalid_requests(scenes, tmp_path):
    paths = _write_split(scenes, tmp_path, hours=[0])
    grid = HRRR_GRID.crop(CFG.y0, CFG.x0, CFG.ny, CFG.nx)
    dup = str(write_grib2(tmp_path / "dup.grib2", {"u10": scenes.u10.values[0]}, CFG.start, grid))
    out = str(tmp_path / "s.zarr")
    with pytest.raises(IngestError, match=r"dup.grib2 and .*00-b.grib2 both hold \['u10'\] valid at 2024-06-01T12"):
        ingest(paths + [dup], out, VARS, parallel=False, progress=False)
    assert not ZarrStore(out).exists()  # refused before anything was written
    ingest(paths, out, VARS, parallel=False, progress=False)
    with pytest.raises(IngestError, match=r"holds variables \['refc', 't2m', 'u10'\], not \['refc'\]"):
        ingest(paths, out, ["refc"], parallel=False, progress=False)
    with pytest.raises(IngestError, match="3600 s time step, not 600 s"):
        ingest(paths, out, VARS, dt_seconds=600, parallel=False, progress=False)
    with pytest.raises(KeyError, match="unknown variable"):
        ingest(paths, out, ["reflectivity"], parallel=False, progress=False)
    with pytest.raises(IngestError, match="2-D latitude/longitude"):
        ingest_dataset(scenes.drop_vars(["latitude", "longitude"]), str(tmp_path / "x.zarr"), progress=False)
    off_axis = ingest([str(write_grib2(tmp_path / "half.grib2", {v: scenes[v].values[1] for v in VARS},
                                       CFG.start + timedelta(minutes=90), grid))], out, VARS, parallel=False,
                      progress=False)
    assert "not on the store's 3600 s axis" in off_axis.failed[0].reason and not off_axis.written


def test_a_path_that_is_not_a_store_is_refused_unless_overwrite(scenes, tmp_path):
    paths = _write_split(scenes, tmp_path / "in", hours=[0, 1, 2, 3])
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    refusal = f"{folder} exists and is not a def_ray store; pass --overwrite (overwrite=True) to replace it"
    with pytest.raises(IngestError) as err:
        ingest(paths, str(folder), VARS, parallel=False, progress=False)
    assert str(err.value) == refusal
    with pytest.raises(IngestError, match="exists and is not a def_ray store"):
        ingest_dataset(scenes, str(folder), tile=16, progress=False)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_bytes() == b"keep me"

    report = ingest(paths[:4], str(folder), VARS, tile=16, parallel=False, progress=False, overwrite=True)
    assert report.ok and len(report.written) == 2 and not (folder / "notes.txt").exists()
    resumed = ingest(paths, str(folder), VARS, tile=16, parallel=False, progress=False)  # a store is continued
    assert len(resumed.skipped) == 2 and len(resumed.written) == 2
    # the same grid from GRIB2 (micro-degrees) and from the dataset (floats) continues one store
    assert len(ingest_dataset(scenes, str(folder), tile=16, progress=False).written) == 2
    fresh = ingest_dataset(scenes.isel(time=[4, 5]), str(folder), tile=16, progress=False, overwrite=True)
    assert len(fresh.written) == 2 and ZarrStore(str(folder)).shape[0] == 2  # overwrite replaces a store too


@pytest.mark.parametrize("tile", [-1, 0])
def test_bad_sizes_fail_before_anything_is_read_or_written(scenes, tmp_path, tile):
    out = tmp_path / "s.zarr"
    with pytest.raises(IngestError, match=f"tile={tile}: expected a whole number >= 1"):
        ingest(["never-read.grib2"], str(out), VARS, tile=tile, parallel=False, progress=False)
    with pytest.raises(IngestError, match=f"tile={tile}: expected a whole number >= 1"):
        ingest_dataset(scenes, str(out), tile=tile, progress=False)
    assert not out.exists()


def test_the_summary_stays_short_however_many_files_fail():
    report = IngestReport(store="s.zarr", variables=["refc"],
                          failed=[FailedSource(f"f{k:02d}.grib2", "truncated", 1, None, 0) for k in range(25)])
    lines = format_report(report).splitlines()
    assert len(lines) == 11 and "25 failure(s)" in lines[0]
    assert lines[1] == "  FAILED f00.grib2 (message 1 at byte 0): truncated"
    assert lines[-1] == "  ... and 16 more failure(s)"


# -- the command line: bad input exits 2 with one line, failures exit 1, every run ends with its summary ---------
def test_cli_refuses_bad_input_with_one_line_and_status_2(scenes, tmp_path, capsys):
    paths = _write_split(scenes, tmp_path / "in", hours=[0])
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    cases = [
        (["--out", str(folder)], f"def-ray: {folder} exists and is not a def_ray store; pass --overwrite "
                                 f"(overwrite=True) to replace it"),
        (["--out", str(tmp_path / "new.zarr"), "--tile", "-1"], "def-ray: tile=-1: expected a whole number >= 1"),
        (["--out", str(tmp_path / "new.zarr"), "--variables", "refc,reflectivity"], "def-ray: unknown variable(s)"),
    ]
    for extra, message in cases:
        assert main(["ingest", *paths, "--variables", ",".join(VARS), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith(message), err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and not (tmp_path / "new.zarr").exists()


@pytest.mark.ray
def test_cli_ingest_prints_its_summary_and_exits_1_on_failures(scenes, ray_session, tmp_path, capsys):
    paths = _write_split(scenes, tmp_path / "in", hours=[0, 1, 2])
    out = str(tmp_path / "cli.zarr")
    args = ["ingest", "--variables", ",".join(VARS), "--out", out, "--tile", "16"]
    assert main([*args, *paths[:4]]) == 0
    text = capsys.readouterr().out
    assert f"ingest into {out} (refc, t2m, u10): 2 step(s) written, 0 already committed, 0 failure(s)" in text
    broken = tmp_path / "in" / "broken.grib2"
    broken.write_bytes(b"GRIB" + b"\0" * 60)
    assert main([*args, *paths, str(broken)]) == 1
    text = capsys.readouterr().out
    assert "1 step(s) written, 2 already committed, 1 failure(s)" in text and f"FAILED {broken}" in text
    assert ZarrStore(out).committed_mask().tolist() == [True, True, True]


@pytest.mark.ray
def test_cli_ingest_stops_with_one_line_when_the_store_stays_locked(scenes, ray_session, tmp_path, capsys,
                                                                     monkeypatch):
    from def_ray.data import zarr_store

    paths = _write_split(scenes, tmp_path / "in", hours=[0, 1])
    out = str(tmp_path / "busy.zarr")
    ingest(paths[:2], out, VARS, tile=16, parallel=False, progress=False)
    monkeypatch.setattr(zarr_store, "LOCK_TIMEOUT_S", 0.5)
    with zarr_store.StoreLock(out):  # another writer, stuck while growing the store
        code = main(["ingest", *paths, "--variables", ",".join(VARS), "--out", out, "--tile", "16"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"def-ray ingest: {out}: lock {out}/.def_ray.lock still held by pid ") and "retry" in err
    assert ZarrStore(out).committed_mask().tolist() == [True]  # untouched and valid; a re-run completes it
    assert main(["ingest", *paths, "--variables", ",".join(VARS), "--out", out, "--tile", "16"]) == 0
    assert ZarrStore(out).committed_mask().tolist() == [True, True]


@pytest.mark.ray
@pytest.mark.s3
def test_s3_sources_to_s3_store_roundtrip(scenes, ray_session, s3_bucket, tmp_path):
    import fsspec

    bucket, opts = s3_bucket
    # the Ray workers may have started before the S3 fixture set credentials in the environment: pass them
    opts = {**opts, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    fs = fsspec.filesystem("s3", **opts)
    urls = []
    for p in _write_split(scenes, tmp_path, hours=[0, 1, 2]):
        url = f"s3://{bucket}/grib/{os.path.basename(p)}"
        fs.put_file(p, url)
        urls.append(url)
    out = f"s3://{bucket}/hrrr.zarr"
    report = ingest(urls, out, VARS, storage_options=opts, tile=16, progress=False)
    assert report.ok and len(report.written) == 3
    store = ZarrStore(out, opts)
    for v in VARS:
        np.testing.assert_array_equal(store.read(v, slice(0, 3)), scenes[v].values[:3])
    assert store.to_xarray().sizes["time"] == 3


# -- a real crash: SIGKILL the ingesting process, then run again --------------------------------------------------
_CHILD = """
import sys
from def_ray.data.ingest import ingest
ingest(sys.argv[2:], sys.argv[1], ["refc", "t2m", "u10"], tile=16, parallel=False, progress=False)
"""


@pytest.mark.ray
@pytest.mark.slow
def test_killed_ingest_resumes_to_the_uninterrupted_store(ray_session, tmp_path):
    grid = HRRR_GRID.crop(200, 600, 64, 64)
    rng = np.random.default_rng(7)
    paths = []
    for k in range(32):
        fields = {v: rng.normal(10 * (i + 1), 3, (grid.ny, grid.nx)).astype("float32") for i, v in enumerate(VARS)}
        paths.append(str(write_grib2(tmp_path / "in" / f"{k:02d}.grib2", fields,
                                     datetime(2024, 7, 1) + timedelta(hours=k), grid)))
    reference = str(tmp_path / "reference.zarr")
    ingest(paths, reference, VARS, tile=16, progress=False)

    out = str(tmp_path / "killed.zarr")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, out, *paths], start_new_session=True)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and child.poll() is None:
        try:
            committed = int(ZarrStore(out).committed_mask().sum())
        except Exception:  # the store is still being created
            committed = 0
        if committed >= 3:
            break
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = ZarrStore(out, mode="a")
    mask = store.committed_mask()
    assert 3 <= mask.sum() < len(paths), "the ingest must be interrupted part-way for this test to mean anything"
    # whatever state the kill left, add the worst one: the next step's first variable written, then death
    nxt = int(np.flatnonzero(~mask)[0])
    store.group["refc"][nxt] = -999.0
    assert store.to_xarray().sizes["time"] == mask.sum()  # readers see committed steps only

    report = ingest(paths, out, VARS, tile=16, progress=False)
    assert report.ok and len(report.skipped) == mask.sum() and len(report.written) == len(paths) - mask.sum()
    _assert_same_store(ZarrStore(out), ZarrStore(reference))
