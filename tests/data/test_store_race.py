"""Several ingests racing into one store (creating it, growing its time axis, writing the same steps, refreshing its
statistics at once) end in the store a single writer makes: local disk, and a real S3 API (moto_server).

The racers are separate processes (spawned once per module, so each repetition costs only the ingest itself) that
run the real `ingest_dataset` path on seeded synthetic scenes, released together at one wall-clock instant.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime

import numpy as np
import pytest
import xarray as xr

from def_ray.config import SynthConfig
from def_ray.data.ingest import ingest_dataset
from def_ray.data.synthetic import generate_scenes
from def_ray.data.zarr_store import LOCK_NAME, ZarrStore

CFG = SynthConfig(seed=11, hours=12, ny=16, nx=16, start=datetime(2024, 6, 1, 12))
VARS = ["refc", "t2m", "u10"]
TILE = 8
# every part holds hour 0, so whichever run creates the store gives it the same first time; the parts overlap
PARTS = ([0, 1, 2, 3, 4, 5], [0, 3, 4, 5, 6, 7, 8], [0, 6, 7, 8, 9, 10, 11])


@functools.lru_cache(maxsize=1)
def _scenes() -> xr.Dataset:
    return generate_scenes(CFG)[VARS].load()


def _ingest_hours(out: str, opts: dict, hours: list[int], start_at: float) -> tuple[list[int], list[int], list[str]]:
    """One racer: wait for the common start, ingest `hours`; (written, skipped, failure reasons) as hour numbers."""
    ds = _scenes().isel(time=hours)
    time.sleep(max(0.0, start_at - time.time()))
    report = ingest_dataset(ds, out, storage_options=opts, tile=TILE, progress=False)
    hour = {np.datetime64(t, "s"): h for h, t in zip(hours, ds.time.values)}
    return ([hour[np.datetime64(t, "s")] for t in report.written],
            [hour[np.datetime64(t, "s")] for t in report.skipped], [f.reason for f in report.failed])


def _warm() -> None:
    _scenes()


def _contents(store: ZarrStore) -> dict:
    """Everything a reader can see of a store, to compare two stores exactly (NaN equal to NaN)."""
    g = store.group
    arrays = {name: g[name][:] for name in (*VARS, "time", "committed", "step_stats", "latitude", "longitude")}
    return {"arrays": arrays, "stats": g.attrs["stats"], "t0": g.attrs["t0"], "variables": g.attrs["variables"]}


def _assert_equal_stores(got: ZarrStore, want: dict) -> None:
    have = _contents(got)
    assert {k: have[k] for k in ("stats", "t0", "variables")} == {k: want[k] for k in ("stats", "t0", "variables")}
    for name, a in want["arrays"].items():
        np.testing.assert_array_equal(have["arrays"][name], a, err_msg=f"{got.url}: array {name}")


@pytest.fixture(scope="module")
def racers():
    """N worker processes, started (and their imports done) once; joined at the end, none left behind."""
    pool = ProcessPoolExecutor(max_workers=len(PARTS), mp_context=multiprocessing.get_context("spawn"))
    try:
        for f in [pool.submit(_warm) for _ in range(2 * len(PARTS))]:
            f.result()
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def single_writer(tmp_path_factory) -> dict:
    """The store one ingest of every hour makes: what every race must end in."""
    url = str(tmp_path_factory.mktemp("single") / "all.zarr")
    report = ingest_dataset(_scenes(), url, tile=TILE, progress=False)
    assert report.ok and len(report.written) == CFG.hours
    return _contents(ZarrStore(url))


def _race(pool: ProcessPoolExecutor, out: str, opts: dict, extend: bool) -> None:
    """The racers into `out`: creating it together, or (extend) growing a store that holds the first hour."""
    if extend:
        first = ingest_dataset(_scenes().isel(time=[0]), out, storage_options=opts, tile=TILE, dt_seconds=3600,
                               progress=False)
        assert first.ok and len(first.written) == 1
    start_at = time.time() + 0.3
    futures = [pool.submit(_ingest_hours, out, opts, list(p), start_at) for p in PARTS]
    for part, fut in zip(PARTS, futures):
        written, skipped, failed = fut.result(timeout=120)
        assert failed == [], f"{out}: racer for hours {part} failed: {failed}"
        assert sorted(written + skipped) == list(part)  # every hour of the part is in the store, by it or another


@pytest.mark.slow
def test_racing_ingests_on_local_disk_end_in_the_single_writer_store(racers, single_writer, tmp_path):
    for rep in range(20):
        out = str(tmp_path / f"race-{rep:02d}.zarr")
        _race(racers, out, {}, extend=rep % 2 == 1)
        _assert_equal_stores(ZarrStore(out), single_writer)
        assert not (tmp_path / f"race-{rep:02d}.zarr" / LOCK_NAME).exists()  # released, nothing left behind


@pytest.mark.slow
@pytest.mark.s3
def test_racing_ingests_on_s3_end_in_the_single_writer_store(racers, single_writer, s3_bucket):
    import fsspec

    bucket, opts = s3_bucket
    fs = fsspec.filesystem("s3", **opts)
    for rep in range(5):
        out = f"s3://{bucket}/race-{rep}.zarr"
        _race(racers, out, opts, extend=rep % 2 == 1)
        _assert_equal_stores(ZarrStore(out, opts), single_writer)
        fs.invalidate_cache()
        assert not fs.exists(f"{bucket}/race-{rep}.zarr/{LOCK_NAME}")
