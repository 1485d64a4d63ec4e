"""def_ray.data.zarr_store: the store contract (layout, committed steps, statistics, crash states, errors, what
create refuses, the store's lock on local disk and on a real S3 API)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from def_ray.data.grid import HRRR_GRID
from def_ray.data.zarr_store import (LOCK_NAME, ForeignPathError, StoreError, StoreExistsError, StoreLock,
                                     StoreLockTimeout, ZarrStore)

GRID = HRRR_GRID.crop(300, 700, 20, 24)
T0 = np.datetime64("2024-06-01T12:00", "s")
HOUR = np.timedelta64(3600, "s")


def _new(url, variables=("refc", "t2m"), **kw) -> ZarrStore:
    lat, lon = GRID.latlon()
    return ZarrStore.create(url, variables=list(variables), latitude=lat, longitude=lon, t0=T0, dt_seconds=3600,
                            tile=16, projection=GRID.attrs(), **kw)


def _fields(seed):
    rng = np.random.default_rng(seed)
    return {"refc": rng.normal(10, 4, (GRID.ny, GRID.nx)).astype("float32"),
            "t2m": rng.normal(290, 3, (GRID.ny, GRID.nx)).astype("float32")}


@pytest.mark.parametrize("shard", [False, True])
def test_write_read_and_statistics(tmp_path, shard):
    store = _new(str(tmp_path / "s.zarr"), shard=shard)
    store.ensure_times([T0 + 3 * HOUR])
    assert store.shape == (4, GRID.ny, GRID.nx)
    written = {}
    for k in (0, 1, 3):  # step 2 stays empty
        f = _fields(k)
        if k == 1:
            f["refc"][:5] = np.nan  # NaN is missing data: not counted in the statistics
        store.write_step(T0 + k * HOUR, f)
        written[k] = f
    assert store.committed_mask().tolist() == [True, True, False, True]
    np.testing.assert_array_equal(store.committed_times(), [T0, T0 + HOUR, T0 + 3 * HOUR])
    np.testing.assert_array_equal(store.read("t2m", 3), written[3]["t2m"])
    np.testing.assert_array_equal(store.read_frames(["refc", "t2m"], [0, 3], slice(2, 5), slice(0, 4)),
                                  np.stack([[written[k][v][2:5, :4] for v in ("refc", "t2m")] for k in (0, 3)]))
    assert np.isnan(store.read("refc", 2)).all()
    stats = store.finalize()
    for v in ("refc", "t2m"):
        allv = np.concatenate([written[k][v].ravel() for k in (0, 1, 3)]).astype("float64")
        allv = allv[np.isfinite(allv)]
        # float64 sums of ~1400 float32 values: agreement to 1e-9 relative is far inside their rounding
        assert stats[v]["mean"] == pytest.approx(allv.mean(), rel=1e-9)
        assert stats[v]["std"] == pytest.approx(allv.std(), rel=1e-6)
    assert ZarrStore(store.url).group.attrs["stats"] == stats
    ds = store.to_xarray()
    assert ds.sizes["time"] == 3 and ds["t2m"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(ds["time"].values.astype("datetime64[s]"), store.committed_times())
    np.testing.assert_allclose(ds.latitude.values, GRID.latlon()[0].astype("float32"))
    assert store.projection["nx"] == GRID.nx


def test_write_step_errors_leave_step_uncommitted(tmp_path):
    store = _new(str(tmp_path / "s.zarr"))
    store.ensure_times([T0])
    f = _fields(0)
    with pytest.raises(StoreError, match=r"no data for \['t2m'\]; the step stays uncommitted"):
        store.write_step(T0, {"refc": f["refc"]})
    with pytest.raises(StoreError, match=r"variable t2m: shape \(3, 3\)"):
        store.write_step(T0, {"refc": f["refc"], "t2m": np.zeros((3, 3))})
    assert not store.is_committed(T0)
    with pytest.raises(StoreError, match="outside the time axis; call ensure_times first"):
        store.write_step(T0 + 5 * HOUR, f)
    with pytest.raises(StoreError, match="not on the store's 3600 s axis"):
        store.ensure_times([T0 + np.timedelta64(90, "m")])
    with pytest.raises(StoreError, match="before the store's first time"):
        store.ensure_times([T0 - HOUR])
    with pytest.raises(StoreError, match="no committed steps"):
        store.stats()
    with pytest.raises(StoreError, match="a store already exists"):
        _new(store.url)
    with pytest.raises(StoreError, match="variable 'cape' not in store"):
        store.read("cape", 0)
    with pytest.raises(StoreError, match="no def_ray store at"):
        ZarrStore(str(tmp_path / "absent.zarr")).variables


def test_states_a_crash_leaves_are_recovered(tmp_path):
    """What an interrupted writer leaves on disk: readers see nothing of it, and the next writer repairs it."""
    import zarr

    store = _new(str(tmp_path / "s.zarr"))
    store.ensure_times([T0, T0 + HOUR])
    store.write_step(T0, _fields(0))
    g = zarr.open_group(store.url, mode="r+")
    g["refc"][1] = 999.0  # a step whose first variable was written, then the writer died
    g["refc"].resize((5, GRID.ny, GRID.nx))  # an ensure_times that grew one array, then died
    reopened = ZarrStore(store.url, mode="a")
    assert reopened.shape[0] == 2 and reopened.committed_times().tolist() == [T0]
    reopened.ensure_times([T0 + 4 * HOUR])
    assert reopened.shape[0] == 5
    np.testing.assert_array_equal(reopened.all_times(), T0 + HOUR * np.arange(5))
    f = _fields(1)
    reopened.write_step(T0 + HOUR, f)
    np.testing.assert_array_equal(reopened.read("refc", 1), f["refc"])
    assert reopened.to_xarray().sizes["time"] == 2


def test_handle_pickles_without_its_open_group(tmp_path):
    store = _new(str(tmp_path / "s.zarr"))
    store.variables  # opens the group
    copy = pickle.loads(pickle.dumps(store))
    assert copy._group is None and copy.url == store.url and copy.variables == ["refc", "t2m"]


@pytest.mark.s3
def test_store_on_s3(s3_bucket):
    bucket, opts = s3_bucket
    store = _new(f"s3://{bucket}/s.zarr", storage_options=opts)
    store.ensure_times([T0])
    f = _fields(3)
    store.write_step(T0, f)
    again = ZarrStore(f"s3://{bucket}/s.zarr", opts)
    np.testing.assert_array_equal(again.read("refc", 0), f["refc"])
    assert again.to_xarray().sizes["time"] == 1


# -- what create refuses, and what overwrite replaces --------------------------------------------------------------
def test_create_refuses_a_path_holding_something_else(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ForeignPathError) as err:
        _new(str(other))
    assert str(err.value) == f"{other} exists and is not a def_ray store; pass --overwrite (overwrite=True) to " \
                             f"replace it"
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]  # untouched, no lock left behind
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    with pytest.raises(ForeignPathError, match="file.zarr exists and is not a def_ray store"):
        _new(str(a_file))
    assert a_file.read_text() == "x"
    for path in (other, a_file):  # overwrite=True replaces either with an empty store
        store = _new(str(path), overwrite=True)
        assert store.shape == (0, GRID.ny, GRID.nx) and sorted(p.name for p in path.iterdir())[0] == "committed"
        assert not (path / "keep.txt").exists() and not (path / LOCK_NAME).exists()


def test_create_over_a_store_and_an_interrupted_create(tmp_path):
    import zarr

    store = _new(str(tmp_path / "s.zarr"))
    store.ensure_times([T0])
    store.write_step(T0, _fields(0))
    with pytest.raises(StoreExistsError, match="a store already exists"):
        _new(store.url)
    assert ZarrStore(store.url).committed_mask().tolist() == [True]
    assert _new(store.url, overwrite=True).shape[0] == 0  # overwrite starts afresh
    # a create that died after its first write (the group marked as ours, no `committed`) is redone unasked
    half = tmp_path / "half.zarr"
    zarr.open_group(str(half), mode="w", zarr_format=3, attributes={"def_ray_store": 1}).create_array(
        "refc", shape=(3, 2, 2), dtype="float32")
    assert not ZarrStore(str(half)).exists()
    assert _new(str(half)).variables == ["refc", "t2m"]



def test_a_create_under_way_is_not_taken_for_a_foreign_path(tmp_path):
    """A racing writer that holds the lock may be half-way through writing the group document (local files are
    not written atomically): beside our lock that is a create of ours, not someone else's folder."""
    busy = tmp_path / "busy.zarr"
    busy.mkdir()
    (busy / LOCK_NAME).touch()
    (busy / "zarr.json").write_text('{"zarr_format": 3, "node_')  # cut off mid-write
    ZarrStore.check_target(str(busy))  # no ForeignPathError
    assert _new(str(busy)).variables == ["refc", "t2m"]  # taken under the lock as an interrupted create, redone
    # the same half document without our lock is someone else's: refused and left as it was
    other = tmp_path / "other"
    other.mkdir()
    (other / "zarr.json").write_text('{"zarr_format": 3, "node_')
    with pytest.raises(ForeignPathError):
        ZarrStore.check_target(str(other))
    with pytest.raises(ForeignPathError):
        _new(str(other))
    assert sorted(p.name for p in other.iterdir()) == ["zarr.json"]


@pytest.mark.parametrize("bad, match", [({"tile": -1}, "tile must be a whole number of grid points >= 1, got -1"),
                                        ({"tile": 0}, "tile must be"), ({"dt_seconds": 0}, "dt_seconds must be"),
                                        ({"variables": []}, "variables must be distinct"),
                                        ({"variables": ["refc", "refc"]}, "variables must be distinct")])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, bad, match):
    lat, lon = GRID.latlon()
    args = {"variables": ["refc"], "latitude": lat, "longitude": lon, "t0": T0, "dt_seconds": 3600, "tile": 16, **bad}
    with pytest.raises(ValueError, match=match):
        ZarrStore.create(str(tmp_path / "s.zarr"), **args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.s3
def test_create_on_s3_refuses_a_prefix_with_objects(s3_bucket):
    import fsspec

    bucket, opts = s3_bucket
    fs = fsspec.filesystem("s3", **opts)
    fs.pipe_file(f"{bucket}/data/readme.txt", b"keep")
    with pytest.raises(ForeignPathError, match=f"s3://{bucket}/data exists and is not a def_ray store"):
        _new(f"s3://{bucket}/data", storage_options=opts)
    fs.invalidate_cache()
    assert fs.find(f"{bucket}/data") == [f"{bucket}/data/readme.txt"]
    store = _new(f"s3://{bucket}/data", storage_options=opts, overwrite=True)
    fs.invalidate_cache()
    assert store.shape[0] == 0 and not fs.exists(f"{bucket}/data/readme.txt")
    assert not fs.exists(f"{bucket}/data/{LOCK_NAME}")
    with pytest.raises(StoreExistsError):
        _new(f"s3://{bucket}/data", storage_options=opts)


# -- the store's lock ------------------------------------------------------------------------------------------------
_HOLD = """
import sys, time
from def_ray.data.zarr_store import StoreLock
with StoreLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_local_lock_excludes_another_process_and_dies_with_it(tmp_path, monkeypatch):
    from def_ray.data import zarr_store

    monkeypatch.setattr(zarr_store, "LOCK_TIMEOUT_S", 0.5)
    store = _new(str(tmp_path / "s.zarr"))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, store.url], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(StoreLockTimeout) as err:
            with StoreLock(store.url):
                pass
        assert 0.5 <= time.monotonic() - started < 3
        assert f"held by pid {holder.pid} on " in str(err.value) and "retry later" in str(err.value)
        with pytest.raises(StoreLockTimeout):
            store.ensure_times([T0 + HOUR])  # growing needs the lock ...
        assert store.shape[0] == 0  # ... and a refused call changed nothing
        os.kill(holder.pid, signal.SIGKILL)  # a holder that dies releases it with no stale lease to wait for
        holder.wait()
        started = time.monotonic()
        with StoreLock(store.url, timeout_s=5):
            assert (tmp_path / "s.zarr" / LOCK_NAME).exists()
        assert time.monotonic() - started < 2
        assert not (tmp_path / "s.zarr" / LOCK_NAME).exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.s3
def test_s3_lease_excludes_expires_and_is_removed(s3_bucket):
    import json

    import boto3

    bucket, opts = s3_bucket
    url = f"s3://{bucket}/s.zarr"
    s3 = boto3.client("s3", endpoint_url=opts["client_kwargs"]["endpoint_url"])
    key = f"s.zarr/{LOCK_NAME}"

    def lease_exists() -> bool:
        return s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 1

    with StoreLock(url, opts):
        assert lease_exists() and f"pid {os.getpid()}" in json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"]
                                                                     .read())["holder"]
        with pytest.raises(StoreLockTimeout, match=f"lock s3://{bucket}/{key} still held by pid {os.getpid()}"):
            with StoreLock(url, opts, timeout_s=0.5):
                pass
    assert not lease_exists()

    # a lease left by a writer that died: waited for while fresh, taken over once older than the lease time
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"holder": "pid 1 on gone-host", "token": "x"}).encode())
    with pytest.raises(StoreLockTimeout, match="still held by pid 1 on gone-host"):
        with StoreLock(url, opts, timeout_s=0.5, ttl_s=30):
            pass
    time.sleep(2.1)  # S3 times have a resolution of one second
    with StoreLock(url, opts, timeout_s=5, ttl_s=1):
        assert f"pid {os.getpid()}" in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert not lease_exists()
