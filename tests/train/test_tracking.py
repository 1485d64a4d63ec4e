"""Tracking never stops training: an unreachable server costs one warning and seconds."""

from __future__ import annotations

import logging
import time

import pytest

from def_ray.config import TrackingConfig
from def_ray.train.tracking import Tracker, flatten, resolve_tracking_uri


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flatten_names_every_leaf():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "None", "e": "[1, 2]"}


def test_default_uri_is_a_local_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_tracking_uri(TrackingConfig()) == "http://example:5000"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://x:1")) == "http://x:1"


def test_unreachable_server_warns_once_and_goes_quiet(caplog):
    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{_closed_port()}", http_timeout_s=1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="def_ray.train.tracking"):
        tracker = Tracker.start(cfg, "run", {"a": 1})
        for step in range(5):
            tracker.log_metrics({"loss": 1.0}, step)
        tracker.set_tag("k", "v")
        tracker.end()
    assert tracker.run_id is None and not tracker.enabled
    warnings = [r for r in caplog.records if r.name == "def_ray.train.tracking"]
    assert len(warnings) == 1 and "training continues" in warnings[0].getMessage()
    assert time.monotonic() - t0 < 15  # refused connections, no retries: seconds, not minutes


@pytest.mark.mlflow
@pytest.mark.slow
def test_logs_reach_a_real_server(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    cfg = TrackingConfig(tracking_uri=mlflow_server, experiment="tracking-test")
    tracker = Tracker.start(cfg, "run", {"train": {"lr": 0.1}, "name": "x"})
    assert tracker.enabled and tracker.run_id
    tracker.log_metrics({"val_loss": 0.5}, 3)
    art = tmp_path / "note.txt"
    art.write_text("hello")
    tracker.log_artifact(art, "notes")
    tracker.end()
    run = MlflowClient(mlflow_server).get_run(tracker.run_id)
    assert run.data.params == {"train.lr": "0.1", "name": "x"}
    assert run.data.metrics == {"val_loss": 0.5} and run.info.status == "FINISHED"
    again = Tracker.start(cfg, "run", {"train": {"lr": 0.2}}, run_id=tracker.run_id)  # a re-run re-opens it
    assert again.run_id == tracker.run_id and again.enabled
    assert MlflowClient(mlflow_server).get_run(tracker.run_id).data.params["train.lr"] == "0.1"
