"""A tiny learnable store and a tiny config for the training tests."""

from __future__ import annotations

import numpy as np
import pytest

from def_ray.config import Config, config_from_dict
from def_ray.data.zarr_store import ZarrStore

NT, NY, NX = 48, 24, 24
T0 = np.datetime64("2024-06-01T00:00:00")


def write_store(url: str, storage_options=None, seed: int = 0) -> str:
    """48 hourly steps of two smooth fields drifting east by one pixel an hour (so the next hour is learnable)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:NY, 0:NX]
    lat, lon = 30 + 0.03 * y, -100 + 0.03 * x
    store = ZarrStore.create(url, variables=["refc", "t2m"], latitude=lat, longitude=lon, t0=T0, dt_seconds=3600,
                             n_times=NT, tile=16, storage_options=storage_options)
    phase = rng.uniform(0, 2 * np.pi, 2)
    for t in range(NT):
        refc = 20 + 15 * np.sin(2 * np.pi * (x - t) / NX + phase[0]) * np.cos(2 * np.pi * y / NY)
        t2m = 290 + 5 * np.cos(2 * np.pi * (x - t) / NX + phase[1]) + rng.normal(0, 0.2, (NY, NX))
        store.write_step(T0 + np.timedelta64(t, "h"), {"refc": refc, "t2m": t2m})
    return url


def tiny_config(store: str, storage_path: str, kind: str = "deterministic", endpoint: str | None = None,
                **sections) -> Config:
    """Two variables, n_past 2, 16 px crops, base_dims 8 with mults [1, 2], T = 10, 2 workers of half a CPU."""
    raw = {
        "name": "tiny",
        "data": {"store": store, "variables": ["refc", "t2m"], "target_variables": ["refc"], "n_past": 2,
                 "crop": 16, "val_fraction": 0.2, "test_fraction": 0.1, "gap_steps": 1},
        "model": {"kind": kind, "base_dims": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_levels": [],
                  "timesteps": 10},
        # 30 train windows // 2 workers // batch 4 = 3 optimiser steps per epoch
        "train": {"epochs": 2, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "num_workers": 2,
                  "cpus_per_worker": 0.5, "storage_path": storage_path, "run_name": "tiny", "max_failures": 1,
                  "val_members": 3, "val_windows": 2, "val_steps": 2, "log_every_steps": 1, "bf16": False},
        "tracking": {"enabled": False, "http_timeout_s": 2},
        "forecast": {"sampler": {"name": "ddim", "steps": 2}},
    }
    if endpoint:
        raw["data"]["storage"] = {"endpoint_url": endpoint}
        raw["train"]["storage"] = {"endpoint_url": endpoint}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, "tiny test config")


@pytest.fixture(scope="module")
def s3_train_store(s3_server):
    """(bucket, store URL) written once per module on the session's moto S3 server (writing costs ~9 s)."""
    import boto3

    bucket = f"train-tests-{np.random.default_rng().integers(1 << 30)}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    url = write_store(f"s3://{bucket}/tiny.zarr", storage_options={"client_kwargs": {"endpoint_url": s3_server}})
    return bucket, url


@pytest.fixture
def s3_store(s3_train_store, s3_server, request):
    """(store URL, a run storage URL of this test's own, endpoint)."""
    bucket, url = s3_train_store
    return url, f"s3://{bucket}/runs-{request.node.name[:60]}", s3_server


@pytest.fixture
def make_config():
    """The `tiny_config` factory (fixtures, not imports: test folders share the module name `conftest`)."""
    return tiny_config


@pytest.fixture
def make_store():
    return write_store
