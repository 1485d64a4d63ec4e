"""Ray Train end to end on the session's local Ray (2 CPU workers): data and checkpoints on moto S3.

Each fit costs ~15-30 s on 2 cores (worker start-up dominates), so these are marked slow.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time

import fsspec
import pytest

from def_ray.train.checkpointing import STATE_FILE, load_state
from def_ray.train.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.s3]
STEPS_PER_EPOCH = 3  # 30 train windows // 2 workers // batch 4


def _opts(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}}


def _final_state(result, endpoint: str):
    """The training state of the newest checkpoint of a run folder on S3."""
    fs, root = fsspec.core.url_to_fs(result.run_path, **_opts(endpoint))
    fs.invalidate_cache()  # s3fs caches listings per process; the run folder changed under it
    newest = sorted(p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("epoch_"))[-1]
    with tempfile.TemporaryDirectory() as tmp:
        fs.get_file(f"{newest}/{STATE_FILE}", f"{tmp}/{STATE_FILE}")
        state = load_state(tmp)
    return state, [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]


def _adam_steps(state) -> set[int]:
    return {int(s["step"]) for s in state.optimizer["state"].values()}


@pytest.mark.mlflow
def test_short_diffusion_run_trains_tracks_and_exports(ray_session, s3_store, mlflow_server, make_config, capsys):
    import re

    from mlflow import MlflowClient

    from def_ray.models.checkpoint import load_checkpoint

    store, runs, endpoint = s3_store
    cfg = make_config(store, runs, kind="diffusion", endpoint=endpoint,
                      train={"epochs": 3, "keep_checkpoints": 2, "promote": False},
                      tracking={"enabled": True, "tracking_uri": mlflow_server, "experiment": "trainer-test"})
    result = train(cfg)

    # the exported checkpoint is one file on S3 that loads into the same model
    assert result.checkpoint_path == f"{runs}/tiny/best.pt"
    model, config_dict, extra = load_checkpoint(result.checkpoint_path, storage_options=_opts(endpoint))
    assert model.kind == "diffusion" and config_dict["model"] == cfg.dump()["model"]
    assert extra["mlflow_run_id"] == result.mlflow_run_id
    # best = lowest validation score among the kept checkpoints
    assert result.exported_metrics["val_score"] <= result.final_metrics["val_score"]
    assert {"val_crps", "val_spread", "val_rmse", "val_spread_skill"} <= set(result.final_metrics)
    state, entries = _final_state(result, endpoint)
    assert state.global_step == 3 * STEPS_PER_EPOCH and _adam_steps(state) == {3 * STEPS_PER_EPOCH}
    assert sum(e.startswith("epoch_") for e in entries) == 2  # keep_checkpoints
    assert state.ema is not None and state.rng and len(state.rng) == 2  # both ranks' RNG states

    run = MlflowClient(mlflow_server).get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    # epochs are 1-based on the console and in MLflow: the exported epoch's console line shows its val score
    assert run.data.tags["exported_epoch"] == str(extra["epoch"] + 1) and run.data.tags["export"] == "best"
    console = capsys.readouterr().out
    lines = {int(m[1]): m[2] for m in re.finditer(r"epoch (\d+)/3: .*?val CRPS ([0-9.e+-]+)", console)}
    assert sorted(lines) == [1, 2, 3], console
    exported = int(run.data.tags["exported_epoch"])
    assert lines[exported] == f"{result.exported_metrics['val_score']:.4g}", console
    assert f"best checkpoint, epoch {exported}/3" in console
    # ... and the export is registered with the commit and the data period, not promoted (train.promote false)
    assert result.registered_model.startswith("models:/def-ray-diffusion/")
    version = MlflowClient(mlflow_server).get_model_version("def-ray-diffusion", result.registered_model.split("/")[-1])
    assert version.run_id == result.mlflow_run_id and "champion" not in version.aliases
    assert f"registered as {result.registered_model} (def-ray forecast" in console
    assert "the alias champion stays on version" in console
    assert version.tags["exported_epoch"] == run.data.tags["exported_epoch"]
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["data_period"].startswith("2024-06-01")
    assert run.data.params["train.lr"] == str(cfg.train.lr) and run.data.params["model.kind"] == "diffusion"
    history = MlflowClient(mlflow_server).get_metric_history(result.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 3 * STEPS_PER_EPOCH + 1))  # log_every_steps = 1
    assert len(MlflowClient(mlflow_server).get_metric_history(result.mlflow_run_id, "val_crps")) == 3
    assert run.data.tags["exported_checkpoint"] == result.checkpoint_path
    arts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(result.mlflow_run_id, "config")}
    assert arts == {"config/config.yaml"}


def test_killed_worker_resumes_without_repeating_or_losing_steps(ray_session, s3_store, make_config):
    store, runs, endpoint = s3_store
    # rank 1 kills its process after optimiser step 5, in the middle of epoch 2 (steps 4-6)
    cfg = make_config(store, runs, endpoint=endpoint,
                      train={"epochs": 3, "fail_at_step": 5, "fail_mode": "exit", "fail_rank": 1,
                             "max_failures": 1})
    result = train(cfg)
    fs, root = fsspec.core.url_to_fs(result.run_path, **_opts(endpoint))
    fs.invalidate_cache()
    assert fs.exists(f"{root}/.fail_injected_step5")  # the failure did happen
    state, _ = _final_state(result, endpoint)
    # resumed once, from the checkpoint of epoch 0 (epoch 1 was never completed before the kill)
    assert state.restored_from == [0]
    # same step count as an uninterrupted run, and AdamW counted exactly those steps: none repeated, none lost
    assert state.epoch == 2 and state.global_step == 3 * STEPS_PER_EPOCH
    assert _adam_steps(state) == {3 * STEPS_PER_EPOCH}
    assert state.scheduler["last_epoch"] == 3 * STEPS_PER_EPOCH


def test_running_the_same_command_again_continues_the_run(ray_session, s3_store, make_config):
    store, runs, endpoint = s3_store
    first = train(make_config(store, runs, endpoint=endpoint, train={"epochs": 1}))
    s1, _ = _final_state(first, endpoint)
    assert s1.global_step == STEPS_PER_EPOCH and s1.restored_from == []
    # the driver is gone; the same storage path and run name pick the run up where it stopped
    second = train(make_config(store, runs, endpoint=endpoint, train={"epochs": 2, "export": "last"}))
    s2, _ = _final_state(second, endpoint)
    assert s2.restored_from == [0] and s2.global_step == 2 * STEPS_PER_EPOCH
    assert _adam_steps(s2) == {2 * STEPS_PER_EPOCH}
    # export: last = the final epoch's weights, whatever its validation score
    from def_ray.models.checkpoint import load_checkpoint

    _, _, extra = load_checkpoint(second.checkpoint_path, storage_options=_opts(endpoint))
    assert extra["epoch"] == 1 and second.exported_metrics == second.final_metrics


@pytest.mark.mlflow
def test_tracking_server_stopped_mid_run_does_not_stop_training(ray_session, s3_store, make_config, tmp_path,
                                                               caplog):
    from mlflow import MlflowClient

    import socket

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/m.db",
         "--default-artifact-root", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    killed_at: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while True:  # mlflow server answers /health after 10-15 s
            try:
                if requests.get(uri + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
            time.sleep(0.3)
        store, runs, endpoint = s3_store
        cfg = make_config(store, runs, endpoint=endpoint, train={"epochs": 3},
                          tracking={"enabled": True, "tracking_uri": uri, "experiment": "dies"})

        def kill_after_first_metric() -> None:
            client = MlflowClient(uri)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    runs_ = client.search_runs([client.get_experiment_by_name("dies").experiment_id])
                    if runs_ and runs_[0].data.metrics:
                        break
                except Exception:  # noqa: BLE001 - not created yet
                    pass
                time.sleep(0.2)
            os.killpg(proc.pid, 9)
            killed_at.append(time.monotonic())

        watcher = threading.Thread(target=kill_after_first_metric, daemon=True)
        watcher.start()
        with caplog.at_level(logging.WARNING, logger="def_ray.train.tracking"):
            result = train(cfg)
        finished_at = time.monotonic()
        watcher.join(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait(10)
    assert killed_at and killed_at[0] < finished_at  # the server died while training ran
    state, _ = _final_state(result, endpoint)
    assert state.global_step == 3 * STEPS_PER_EPOCH and result.checkpoint_path is not None
    assert result.mlflow_run_id is not None
    # the driver's own end-of-run calls met the dead server: one warning, not one per call
    warnings = [r for r in caplog.records if r.name == "def_ray.train.tracking"]
    assert len(warnings) == 1 and "training continues" in warnings[0].getMessage()


def test_exported_model_carries_its_training_statistics_and_ignores_later_hours(ray_session, tmp_path, make_store,
                                                                              make_config):
    import numpy as np

    from def_ray.data.ray_dataset import prepare_windows
    from def_ray.data.zarr_store import ZarrStore
    from def_ray.forecast.forecaster import Forecaster

    url = make_store(str(tmp_path / "s.zarr"))
    cfg = make_config(url, str(tmp_path / "runs"), kind="diffusion", train={"epochs": 1})
    result = train(cfg)
    fc = Forecaster.load(result.checkpoint_path)
    d = fc.description
    train_norm = prepare_windows(cfg.data).spec.normaliser
    assert d.normalisation == train_norm.to_dict() and d.step_seconds == 3600 and d.grid["shape"] == [24, 24]
    assert d.provenance["data_period"].startswith("2024-06-01T00:00:00") and d.provenance["code_version"]
    init = ZarrStore(url).committed_times()[-1]
    options = fc.sampler_options(cfg.forecast.sampler)
    before = fc.forecast(ZarrStore(url), init, 3, 2, options, seed=4)

    # six later hours of extreme values change the store's statistics a lot ...
    store = ZarrStore(url, mode="a")
    later = init + np.arange(1, 7) * np.timedelta64(1, "h")
    store.ensure_times(later)
    for t in later:
        store.write_step(t, {"refc": np.full((24, 24), 75.0), "t2m": np.full((24, 24), 330.0)})
    grown = ZarrStore(url)
    assert grown.stats()["refc"].mean > train_norm.mean["refc"] + 5
    # ... and leave the model's forecast for the same init time and seed unchanged, to the bit
    np.testing.assert_array_equal(fc.forecast(grown, init, 3, 2, options, seed=4), before)
