"""The whole pipeline through `ray job submit` on a real local cluster (`ray start --head` on loopback).

Stages: synthetic GRIB2 -> ingest to a store on the moto S3 server -> train (checkpoints on S3, tracking on a real
mlflow server) -> 4-member forecast from the exported checkpoint -> verification report.  Each stage is one job
submitted with the CLI, exactly as a user would, and its outputs are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.mlflow]

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def cluster(tmp_path):
    """A one-node Ray cluster started with the CLI; yields the job-submission address and the environment."""
    port, dash = free_port(), free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    # unique (its processes are found by it at teardown) and short (Ray's socket paths must stay under 107 chars)
    temp = Path("/tmp") / f"ray-e2e-{port}-{os.getpid()}"
    start = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
             "--disable-usage-stats", "--include-dashboard=true",
             # the agents' fixed default ports (52365, ...) belong to whichever Ray started first on this machine: a
             # second cluster's job agent then never comes up ("No available agent to submit job")
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--ray-client-server-port={free_port()}"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_processes_mentioning(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_mentioning(marker: str, timeout: float = 20.0) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every Ray on the machine, the test session's too):
    each Ray process of a cluster carries its temp dir on its command line."""
    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if marker.encode() in (proc / "cmdline").read_bytes():
                        pids.append(int(proc.name))
                except OSError:
                    pass
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not ours():
            return


def submit(address: str, env: dict, *cmd: str) -> str:
    """`ray job submit --working-dir . -- python jobs/...`; returns the job's log, fails the test on a failed job."""
    args = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "demo_out", "mlruns", "runs", "data"]}),
            "--", "python", *cmd]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    return log


def test_pipeline_through_ray_job_submit(cluster, s3_bucket, mlflow_server, tmp_path):
    address, env = cluster
    bucket, opts = s3_bucket
    endpoint = opts["client_kwargs"]["endpoint_url"]
    cfg = {
        "name": "e2e",
        "synth": {"hours": 40, "ny": 16, "nx": 16, "out_dir": str(tmp_path / "grib"), "start": "2024-06-02T00:00:00"},
        "data": {"store": f"s3://{bucket}/e2e.zarr", "storage": {"endpoint_url": endpoint}, "tile": 16,
                 "val_fraction": 0.2, "test_fraction": 0.2, "gap_steps": 1},
        "model": {"kind": "diffusion", "base_dims": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [], "timesteps": 10, "groups": 4},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 1, "storage_path": f"s3://{bucket}/runs",
                  "storage": {"endpoint_url": endpoint}, "run_name": "e2e", "val_members": 2, "val_windows": 2},
        "tracking": {"tracking_uri": mlflow_server, "experiment": "e2e"},
        "forecast": {"members": 4, "num_actors": 2, "out": str(tmp_path / "forecast.nc"),
                     "sampler": {"name": "dpmpp", "steps": 2, "member_batch_size": 2}},
        "verify": {"max_cases": 2, "members": 4, "out": str(tmp_path / "report"), "baselines": ["persistence"]},
    }
    config = tmp_path / "e2e.yaml"
    config.write_text(yaml.safe_dump(cfg))

    log = submit(address, env, "jobs/fetch_ingest.py", "--config", str(config), "--synthetic")
    assert "40 step(s) written" in log

    log = submit(address, env, "jobs/train_diffusion.py", "--config", str(config))
    ckpt = f"s3://{bucket}/runs/e2e/best.pt"
    assert f"checkpoint: {ckpt}" in log

    submit(address, env, "jobs/generate_ensemble_forecast.py", "--model", ckpt, "--config", str(config),
           "--members", "4")
    import xarray as xr

    ds = xr.open_dataset(tmp_path / "forecast.nc")
    assert ds.sizes["member"] == 4 and float(ds["refc_probability"].max()) <= 1.0

    submit(address, env, "jobs/verify.py", "--config", str(config), "--model", f"diffusion={ckpt}")
    scores = json.loads((tmp_path / "report" / "scores.json").read_text())
    assert set(scores) == {"persistence", "diffusion"} and scores["diffusion"]["1"]["members"] == 4

    from mlflow import MlflowClient

    runs = MlflowClient(mlflow_server).search_runs(
        [MlflowClient(mlflow_server).get_experiment_by_name("e2e").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics  # the training job tracked its run on the server
