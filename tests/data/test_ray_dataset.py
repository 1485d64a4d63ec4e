"""Ray Data windows from a Zarr store: right frames, train-split normalisation, crops, shuffling, S3."""

from __future__ import annotations

import numpy as np
import pytest

from def_ray.config import DataConfig
from def_ray.data.ray_dataset import WindowReader, prepare_windows
from def_ray.data.windows import WindowError, window_times
from def_ray.data.zarr_store import ZarrStore

VARS = ["refc", "t2m", "u10"]
NT, NY, NX = 40, 12, 16
T0 = np.datetime64("2024-06-01T00:00:00")


def field(t: int, k: int) -> np.ndarray:
    """A value that encodes (time, variable, y, x), so every read can be checked exactly."""
    y, x = np.mgrid[0:NY, 0:NX]
    return (1000.0 * t + 100.0 * k + 0.5 * y + 0.01 * x).astype(np.float32)


def make_store(url: str, storage_options=None, skip=(7,), nan_at=None) -> ZarrStore:
    lat, lon = np.meshgrid(np.linspace(30, 31, NY), np.linspace(-100, -99, NX), indexing="ij")
    store = ZarrStore.create(url, variables=VARS, latitude=lat, longitude=lon, t0=T0, dt_seconds=3600,
                             n_times=NT, tile=8, storage_options=storage_options)
    for t in range(NT):
        if t in skip:
            continue
        fields = {v: field(t, k) for k, v in enumerate(VARS)}
        if nan_at is not None and t == nan_at:
            fields["t2m"][0, 0] = np.nan
        store.write_step(T0 + np.timedelta64(t, "h"), fields)
    return store


def cfg_for(url: str, **kw) -> DataConfig:
    base = dict(store=url, variables=VARS, target_variables=["refc"], n_past=3, dt_steps=1, val_fraction=0.2,
                test_fraction=0.2, gap_steps=2)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture
def store_url(tmp_path):
    url = str(tmp_path / "s.zarr")
    make_store(url, nan_at=20)
    return url


def test_windows_hold_the_right_frames_normalised_with_train_stats(store_url):
    wd = prepare_windows(cfg_for(store_url))
    train_t = window_times(wd.splits.train, 3, 1)
    ref = ZarrStore(store_url).stats(train_t.tolist())
    mean, std = [wd.spec.normaliser.mean[v] for v in VARS], [wd.spec.normaliser.std[v] for v in VARS]
    for k, v in enumerate(VARS):
        assert mean[k] == pytest.approx(ref[v].mean) and std[k] == pytest.approx(ref[v].std)
    # the train statistics differ from whole-store statistics (the store drifts in time): no leak from val/test
    assert wd.spec.normaliser.mean["refc"] < ZarrStore(store_url).stats()["refc"].mean
    start = int(wd.splits.train[3])
    out = WindowReader(wd.spec).read([start])
    assert out["cond"].shape == (1, 3 * 3, NY, NX) and out["target"].shape == (1, 1, NY, NX)
    for j in range(3):  # frames oldest -> newest, each with all variables in config order
        for k in range(3):
            expect = (field(start + j, k) - mean[k]) / std[k]
            np.testing.assert_allclose(out["cond"][0, j * 3 + k], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["target"][0, 0], (field(start + 3, 0) - mean[0]) / std[0],
                               rtol=1e-5, atol=1e-5)
    assert out["time"][0] == int((T0 + np.timedelta64(start + 3, "h")).astype("datetime64[s]").astype(int))


def test_missing_values_become_zero_and_static_fields_are_appended(store_url):
    wd = prepare_windows(cfg_for(store_url, static_fields=["latitude", "longitude"], val_fraction=0.0,
                                 test_fraction=0.0))
    start = 20 - 2  # frame 20 (with the NaN at t2m[0, 0]) is the window's last condition frame
    out = WindowReader(wd.spec).read([start])
    assert np.isfinite(out["cond"]).all()
    assert out["cond"][0, 2 * 3 + 1, 0, 0] == 0.0
    assert out["cond"].shape[1] == 3 * 3 + 2 == wd.spec.cond_channels
    lat_n = out["cond"][0, -2]
    assert abs(lat_n.mean()) < 1e-5 and lat_n[-1, 0] > lat_n[0, 0]  # normalised latitude grows northwards


@pytest.mark.ray
def test_dataset_streams_every_window_once_in_blocks(ray_session, store_url):
    wd = prepare_windows(cfg_for(store_url))
    ds = wd.dataset("val", block_bytes=1)  # one window per read task
    rows = ds.take_all()
    assert len(rows) == wd.n_windows("val") and ds.materialize().num_blocks() == wd.n_windows("val")
    got = sorted(int(r["time"]) for r in rows)
    expect = sorted(int(wd.spec.times[s + 3]) for s in wd.splits.val)
    assert got == expect
    # full-frame windows of a dataset equal the direct reads
    direct = WindowReader(wd.spec).read(wd.splits.val)
    by_time = {int(r["time"]): r for r in rows}
    for i, t in enumerate(direct["time"]):
        np.testing.assert_array_equal(by_time[int(t)]["cond"], direct["cond"][i])


@pytest.mark.ray
def test_training_stream_is_shuffled_and_cropped_anew_each_pass(ray_session, store_url):
    wd = prepare_windows(cfg_for(store_url))
    ds = wd.dataset("train", crop=8, shuffle=True, seed=3, block_bytes=1)
    passes = [ds.take_all() for _ in range(2)]
    reader = WindowReader(wd.spec)
    full = reader.read(wd.splits.train)
    by_time = {int(t): i for i, t in enumerate(full["time"])}
    for rows in passes:
        assert sorted(int(r["time"]) for r in rows) == sorted(by_time)
        for r in rows:
            assert r["cond"].shape == (9, 8, 8) and r["target"].shape == (1, 8, 8)
            # a crop is a window of the full frame: locate it by its corner value (every pixel's value differs)
            f = full["cond"][by_time[int(r["time"])], 0]
            y0, x0 = np.unravel_index(np.argmin(np.abs(f - r["cond"][0, 0, 0])), f.shape)
            np.testing.assert_allclose(r["cond"], full["cond"][by_time[int(r["time"])], :, y0:y0 + 8, x0:x0 + 8],
                                       atol=1e-6)
    # 24 windows: the chance that two independent passes give the same order is 1/24!, and the same crops ~0
    orders = [[int(r["time"]) for r in rows] for rows in passes]
    assert orders[0] != orders[1]
    corners = [{int(r["time"]): float(r["cond"][0, 0, 0]) for r in rows} for rows in passes]
    assert corners[0] != corners[1]


@pytest.mark.ray
@pytest.mark.s3
def test_reads_from_s3_equal_local_reads(ray_session, s3_bucket, store_url):
    bucket, opts = s3_bucket
    url = f"s3://{bucket}/s.zarr"
    make_store(url, storage_options=opts, nan_at=20)
    local = prepare_windows(cfg_for(store_url))
    remote = prepare_windows(cfg_for(url), storage_options=opts)
    np.testing.assert_array_equal(local.splits.val, remote.splits.val)
    rows = sorted(remote.dataset("val").take_all(), key=lambda r: int(r["time"]))
    direct = WindowReader(local.spec).read(local.splits.val)
    np.testing.assert_allclose(np.stack([r["cond"] for r in rows]), direct["cond"], rtol=1e-6)


def test_bad_data_config_names_the_key(store_url, tmp_path):
    with pytest.raises(WindowError, match="data.store"):
        prepare_windows(cfg_for(str(tmp_path / "nothing.zarr")))
    with pytest.raises(WindowError, match=r"data.variables: \['cape'\]"):
        prepare_windows(cfg_for(store_url, variables=["refc", "cape"]))
    with pytest.raises(WindowError, match="data.crop=32"):
        prepare_windows(cfg_for(store_url, crop=32))
    with pytest.raises(WindowError, match="split 'val'"):
        prepare_windows(cfg_for(store_url, val_fraction=0.02))
