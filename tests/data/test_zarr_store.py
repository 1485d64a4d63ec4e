"""def_ray.data.zarr_store: the store contract (layout, committed steps, statistics, crash states, errors)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from def_ray.data.grid import HRRR_GRID
from def_ray.data.zarr_store import StoreError, ZarrStore

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
