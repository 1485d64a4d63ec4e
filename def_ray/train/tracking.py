"""MLflow tracking that can never stop training.

The driver creates (or, on a re-run, re-opens) the MLflow run and hands its id to the rank-0 worker, which logs
through an explicit `MlflowClient` — no fluent API, so no process-wide active run and no MLFLOW_EXPERIMENT_ID
surprises.  Every call is guarded: the first failure (server down, timeout, refused value) logs ONE warning and
turns tracking off for that process; training goes on.  HTTP retries and timeouts are kept small so an unreachable
server costs seconds, not minutes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from def_ray.config import TrackingConfig

__all__ = ["Tracker", "resolve_tracking_uri", "flatten"]

log = logging.getLogger("def_ray.train.tracking")
T = TypeVar("T")


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """cfg.tracking_uri, else $MLFLOW_TRACKING_URI, else a local store in ./mlruns (absolute, so workers agree).

    The local store is a sqlite file, ./mlruns/mlflow.db, with artifacts in ./mlruns/artifacts: MLflow 3 refuses
    its plain-file backend unless MLFLOW_ALLOW_FILE_STORE is set.  `mlflow ui --backend-store-uri` shows it.
    """
    from def_ray.models.registry import local_tracking_uri

    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(create=True)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database (else MLflow picks the process's cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": "0.001"} (lists and None as their text)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


class Tracker:
    """Guarded logging to one MLflow run; `enabled` turns False after the first failure."""

    def __init__(self, uri: str | None, run_id: str | None, *, timeout_s: float = 5.0, retries: int = 0):
        self.uri, self.run_id = uri, run_id
        self.enabled = uri is not None and run_id is not None
        self._client = None
        self.http_limits(timeout_s, retries)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    @staticmethod
    def http_limits(timeout_s: float, retries: int) -> None:
        """MLflow reads these at every request (process-wide)."""
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            if os.environ.get("DEF_RAY_VERBOSE", "").strip().lower() not in ("1", "true", "yes"):
                # a new sqlite store announces "Creating initial MLflow database tables..." and its migrations
                for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
                    logging.getLogger(name).setLevel(logging.WARNING)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _guard(self, what: str, fn: Callable[[], T]) -> T | None:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self.enabled = False
            log.warning("MLflow tracking at %s failed while %s (%s: %s); training continues without tracking",
                        self.uri, what, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
            return None

    @classmethod
    def start(cls, cfg: TrackingConfig, run_name: str, params: Mapping[str, Any] | None,
              run_id: str | None = None) -> Tracker:
        """Create the run (or re-open `run_id`) on the driver; params are logged only for a new run."""
        if not cfg.enabled:
            return cls(None, None)
        tracker = cls(resolve_tracking_uri(cfg), "pending", timeout_s=cfg.http_timeout_s, retries=cfg.http_retries)

        def open_run() -> str:
            client = tracker.client
            if run_id is not None:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                return run_id
            exp = client.get_experiment_by_name(cfg.experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(
                cfg.experiment, artifact_location=_artifact_location(tracker.uri))
            return client.create_run(exp_id, run_name=run_name).info.run_id

        tracker.http_limits(max(cfg.open_timeout_s, cfg.http_timeout_s), max(cfg.http_retries, 1))
        tracker.run_id = tracker._guard("opening the run", open_run)
        tracker.http_limits(cfg.http_timeout_s, cfg.http_retries)
        if tracker.run_id is not None and run_id is None and params:
            tracker.log_params(params)
        return tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:  # nor import mlflow (a second of a training worker's time)
            return
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v[:6000]) for k, v in flat.items()]

        def send() -> None:
            for i in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])

        self._guard("logging params", send)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        self._guard("logging metrics", lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._guard("logging an artifact", lambda: self.client.log_artifact(self.run_id, str(local_path),
                                                                              artifact_path))

    def set_tag(self, key: str, value: str) -> None:
        self._guard("setting a tag", lambda: self.client.set_tag(self.run_id, key, value))

    def publish_model(self, checkpoint_uri: str, description: Any, config: Mapping[str, Any],
                      **options: Any) -> dict[str, Any] | None:
        """The exported checkpoint logged as this run's MLflow model, registered, promoted to champion as `promote`
        says, tagged (def_ray.train.publish); None when tracking is off or it failed (one warning, as every call
        here)."""
        from def_ray.train.publish import publish_model

        return self._guard("logging and registering the model", lambda: publish_model(
            self.client, self.uri, self.run_id, checkpoint_uri, description, config, **options))

    def end(self, status: str = "FINISHED") -> None:
        self._guard("ending the run", lambda: self.client.set_terminated(self.run_id, status=status))
