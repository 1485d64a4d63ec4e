"""The console of a training run: quiet unless asked (``DEF_RAY_VERBOSE=1``, which `--verbose` sets).

One line per epoch printed by the driver (``EpochLines``: train loss, validation score, seconds per epoch, ETA),
relayed from the Ray Train controller (``ReportRelay``); no Ray Data progress bars or execution banners, no Ray Train
echo of every report and checkpoint.  Ray Train's print patch stays off whatever the verbosity: it printed every
line a worker prints twice (once to stdout, once through the root logger).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["verbose", "set_verbose", "quiet_console", "connect_ray", "format_duration", "EpochLines", "ReportRelay",
           "VERBOSE_ENV"]

VERBOSE_ENV = "DEF_RAY_VERBOSE"


def verbose() -> bool:
    """True when the user asked for Ray's own progress bars and logs (`--verbose`, or DEF_RAY_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """What `--verbose` does: DEF_RAY_VERBOSE for this process and the Ray processes it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


_RAY_DATA_WARNING = "ignore:`ExecutionOptions.exclude_resources` is deprecated"


def _ray_data_logging_config() -> Path:
    """Ray Data's default logging config with the console handler at ERROR (RAY_DATA_LOGGING_CONFIG takes a file)."""
    from ray.data._internal.logging import DEFAULT_CONFIG

    config = {**DEFAULT_CONFIG, "handlers": {**DEFAULT_CONFIG["handlers"]}}
    config["handlers"]["console"] = {**config["handlers"]["console"], "level": "ERROR"}
    path = Path(tempfile.gettempdir()) / f"def_ray_ray_data_logging_{os.getuid()}.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def quiet_console(is_verbose: bool | None = None) -> None:
    """Console settings of this process (the driver, or a training worker): Ray Data progress bars and execution
    banners off unless verbose; Ray Train's print patch off always.

    Call it before Ray starts (a local Ray's processes inherit the environment) and before datasets are built (a
    Dataset keeps the DataContext it was created under, and its execution runs in Ray Train's split coordinator).
    """
    is_verbose = verbose() if is_verbose is None else is_verbose
    # Ray Train (V2) patches `print` in its workers to also log through the root logger: each line twice on the
    # console; the variable travels from the driver to the controller and the workers
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if is_verbose:
        return
    # for the processes of a Ray started from here (they inherit this environment): no bars, Ray Data's console
    # log at ERROR (its file log, ray-data.log in the session's logs, keeps everything), and not the deprecation
    # warning Ray Train's own DataConfig causes in its DatasetManager actor
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(_ray_data_logging_config()))
    if _RAY_DATA_WARNING not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), _RAY_DATA_WARNING) if w)
    import ray.data

    try:  # this process's Ray Data logging was configured when ray.data was imported: again, with the file above
        from ray.data._internal.logging import configure_logging

        configure_logging()
    except Exception:
        pass
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.enable_rich_progress_bars = False
    ctx.print_on_execution_start = False  # "Starting execution of Dataset ..." and its plan, every epoch


def connect_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as `ray job submit` sets it), else start a local Ray.

    The console settings (quiet_console) are applied first, so a local Ray's workers inherit them.
    """
    import ray

    quiet_console()
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            # a local Ray has no node to drain; the watcher's actor only logs a core_worker error line per run
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(address="auto" if os.environ.get("RAY_ADDRESS") else None)


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class EpochLines:
    """The one console line per epoch, printed by the driver from the metrics rank 0 reports.

    `line(metrics, now)` formats it: epoch n/N, the mean training loss of the epoch (when reported), the validation
    score (CRPS for the diffusion model, MSE for the deterministic one) with the best so far, the wall time of the
    epoch (training, validation and the checkpoint) and the ETA of the run from the mean of the epochs seen.
    """

    def __init__(self, epochs: int, started: float, prefix: str = "[def-ray]"):
        self.epochs, self.prefix = epochs, prefix
        self.last = started
        self.times: list[float] = []
        self.best: tuple[float, int] | None = None

    def line(self, metrics: dict[str, Any], now: float) -> str:
        epoch = int(metrics.get("epoch", len(self.times))) + 1  # reported 0-based, shown 1-based
        took = max(0.0, now - self.last)
        self.last = now
        # the first epoch of a fit also pays for starting the workers and the data pipeline: the ETA uses the
        # epochs after it once there are some
        self.times.append(took)
        typical = self.times[1:] or self.times
        eta = (self.epochs - epoch) * sum(typical) / len(typical)
        parts = [f"{self.prefix} epoch {epoch}/{self.epochs}"]
        if "epoch_train_loss" in metrics:
            parts.append(f"train loss {metrics['epoch_train_loss']:.4g}")
        score = metrics.get("val_score")
        if score is not None:
            name = "val CRPS" if "val_crps" in metrics else "val MSE"
            if self.best is None or score < self.best[0]:
                self.best = (float(score), epoch)
            best = "" if self.best[1] == epoch else f" (best {self.best[0]:.4g}, epoch {self.best[1]})"
            parts.append(f"{name} {score:.4g}{best}")
        if "val_spread_skill" in metrics:
            parts.append(f"spread/skill {metrics['val_spread_skill']:.2f}")
        parts.append(f"{took:.1f} s/epoch")
        parts.append(f"ETA {format_duration(eta)}" if epoch < self.epochs else "done")
        return ", ".join(parts[:1]) + ": " + ", ".join(parts[1:])


class ReportRelay:
    """Carries each report's rank-0 metrics from the Ray Train controller (a UserCallback runs there) to the
    driver through a small queue actor; a driver thread prints the epoch lines as they come."""

    def __init__(self, epochs: int):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.lines = EpochLines(epochs, time.perf_counter())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="def-ray-epoch-lines", daemon=True)

    def callback(self) -> Any:
        return _epoch_callback(self.queue)

    def __enter__(self) -> "ReportRelay":
        self._thread.start()
        return self

    def _print_next(self, timeout: float) -> bool:
        from ray.util.queue import Empty

        try:
            metrics = self.queue.get(timeout=timeout)
        except Empty:
            return False
        print(self.lines.line(metrics, time.perf_counter()), flush=True)
        return True

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._print_next(0.5)
            except Exception:  # the queue actor gone (Ray shut down): nothing more to print
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        try:
            while self._print_next(0.1):  # the last reports, when fit() returned before the thread took them
                pass
        except Exception:
            pass
        try:
            self.queue.shutdown()
        except Exception:
            pass


def _epoch_callback(queue: Any) -> Any:
    """A ray.train.UserCallback (run in the Ray Train controller) that puts rank 0's numeric metrics of each report
    on `queue`.  Defined on call, so importing this module does not import Ray Train."""
    import ray.train

    class EpochCallback(ray.train.UserCallback):
        def __init__(self, q: Any):
            self.queue = q

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            try:
                if metrics:
                    self.queue.put({k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}, timeout=5)
            except Exception:  # a console line is never worth failing a training run
                pass

    return EpochCallback(queue)
