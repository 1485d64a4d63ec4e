"""Assemble and run the TorchTrainer for one config; export one checkpoint (``train.export``) as one file.

Everything that can be wrong with a config or its store is checked here, on the driver, before any worker starts
(errors are ConfigError naming the key).  The run lives in ``<train.storage_path>/<train.run_name>`` (a local
folder or s3://bucket/prefix): Ray Train's checkpoints, the MLflow run id, the failure-hook markers and, by
default, ``best.pt``.  Running the same command again continues that run: Ray Train finds the run's checkpoint
snapshot under the same storage path and name, and the workers resume from the latest checkpoint; the MLflow run
is re-opened from the saved id.

The console (def_ray.train.console) stays quiet unless asked: one line per epoch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from def_ray.config import Config, ConfigError
from def_ray.train.console import ReportRelay, connect_ray, quiet_console, verbose

__all__ = ["TrainResult", "train", "plan_steps", "run_url"]

RUN_ID_FILE = "mlflow_run_id"


@dataclass
class TrainResult:
    run_name: str
    run_path: str  # the run folder on storage (local path or URL)
    checkpoint_path: str | None  # the exported model (one file; train.export chooses the epoch)
    mlflow_run_id: str | None
    tracking_uri: str | None
    exported_metrics: dict[str, Any] = field(default_factory=dict)  # the exported epoch's metrics
    final_metrics: dict[str, Any] = field(default_factory=dict)
    registered_model: str | None = None  # models:/NAME/VERSION when tracking registered the export (alias champion when promoted)


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """The training loop (def_ray.train.loop) with the driver's console settings applied in the worker: its
    iterators then draw no progress bars (the driver prints the epoch line)."""
    from def_ray.train.loop import train_loop_per_worker

    is_verbose = bool(loop_config.get("verbose"))
    quiet_console(is_verbose)
    if not is_verbose:
        try:  # Ray Train logs "Reporting training result ..." (every report, every rank) under the module's file
            # path, not under "ray.train", so RunConfig's LoggingConfig does not reach it
            import logging

            from ray.train.v2._internal.execution import context as train_context

            logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
        except Exception:
            pass
    return train_loop_per_worker(loop_config)


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def run_url(cfg: Config) -> str:
    base = cfg.train.storage_path
    if not _is_remote(base):
        base = str(Path(base.removeprefix("file://")).resolve())
    return f"{base.rstrip('/')}/{cfg.train.run_name}"


def plan_steps(cfg: Config, n_train: int, n_val: int) -> int:
    """Optimiser steps per epoch of each worker; ConfigError when the split is too small for the batch layout."""
    tc = cfg.train
    per_worker = n_train // tc.num_workers
    steps = per_worker // tc.batch_size // tc.grad_accum
    if steps < 1:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} x train.grad_accum={tc.grad_accum} x train.num_workers="
            f"{tc.num_workers} needs at least {tc.batch_size * tc.grad_accum * tc.num_workers} training windows; "
            f"the store gives {n_train}")
    if n_val // tc.num_workers < 1:
        raise ConfigError(f"data.val_fraction gives {n_val} validation windows, fewer than train.num_workers="
                          f"{tc.num_workers}")
    return steps


def _check_resources(cfg: Config) -> None:
    import ray

    tc = cfg.train
    res = ray.cluster_resources()
    need_cpu = tc.num_workers * tc.cpus_per_worker
    if res.get("CPU", 0) < need_cpu:
        raise ConfigError(f"train.num_workers={tc.num_workers} x train.cpus_per_worker={tc.cpus_per_worker} needs "
                          f"{need_cpu} CPUs; the Ray cluster has {res.get('CPU', 0)}")
    if tc.use_gpu and res.get("GPU", 0) < tc.num_workers:
        raise ConfigError(f"train.use_gpu with train.num_workers={tc.num_workers} needs that many GPUs; the Ray "
                          f"cluster has {res.get('GPU', 0)}")


def _storage(cfg: Config) -> tuple[str, Any, dict[str, Any]]:
    """(storage_path for RunConfig, pyarrow filesystem or None, fsspec options for the run folder)."""
    from def_ray.data.ray_dataset import resolve_storage_options

    base = cfg.train.storage_path
    opts = resolve_storage_options(base, cfg.train.storage.to_fsspec())
    if not _is_remote(base):
        return str(Path(base.removeprefix("file://")).resolve()), None, {}
    import fsspec
    import pyarrow.fs

    fs, path = fsspec.core.url_to_fs(base, **opts)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), opts


def _read_text(url: str, opts: dict[str, Any]) -> str | None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **opts)
    fs.invalidate_cache(path)  # s3fs listing caches live as long as the process; the run folder may have changed
    return fs.cat_file(path).decode().strip() if fs.exists(path) else None


def _write_text(url: str, text: str, opts: dict[str, Any]) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **opts)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, text.encode())


def _with_chosen_sampler(cfg: Config, wd: Any, state: Any, description: Any, tracker: Any) -> Any:
    """The description with the sampler chosen on the validation windows (def_ray.train.sampler_choice)."""
    from dataclasses import replace

    from def_ray.models import build_model
    from def_ray.train.sampler_choice import choose_sampler

    model = build_model(cfg.model, wd.spec.cond_channels, wd.spec.target_channels)
    model.load_state_dict(state.ema if state.ema is not None else state.model)
    d = cfg.data
    windows = wd.windows("val", cfg.train.choice_windows, crop=d.crop if d.val_crop else None,
                         sampling=d.crop_sampling if d.val_crop else "uniform", seed=cfg.train.seed + 1)
    options, table = choose_sampler(cfg, model, wd.spec.layout, windows, wd.spec.normaliser,
                                    km_per_pixel=description.km_per_pixel,
                                    step_minutes=description.step_seconds / 60 if description.step_seconds else None)
    picked = next(c for c in table if (c.spread_scale, c.guidance) == (options.spread_scale, options.guidance))
    rule = (f"validation split, {windows['cond'].shape[0]} windows x {cfg.train.val_members} members: the smallest "
            "|log spread/skill| + relative reliability (at forecast.thresholds) among the candidates within 2% of "
            "the best CRPS")
    print(f"[def-ray] sampler chosen on validation: spread_scale {options.spread_scale:g}, guidance "
          f"{options.guidance:g} (CRPS {picked.crps:.4f}, spread/skill {picked.spread_skill:.3f}, reliability "
          f"{picked.reliability:.3f}; {len(table)} candidates)", flush=True)
    tracker.set_tag("sampler_choice", f"spread_scale={options.spread_scale:g} guidance={options.guidance:g}")
    return replace(description, sampler={**options.model_dump(mode="json"), "chosen_by": rule,
                                         "candidates": [c.row() for c in table]})


def train(cfg: Config, config_path: str | Path | None = None) -> TrainResult:
    """Train `cfg.model` on the windows of `cfg.data` with Ray Train; returns where the results are."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from def_ray.data.ray_dataset import prepare_windows
    from def_ray.data.windows import WindowError
    from def_ray.models import build_model
    from def_ray.models.description import ModelDescription
    from def_ray.train.checkpointing import load_state
    from def_ray.train.tracking import Tracker, resolve_tracking_uri

    # -- everything checked before a worker starts ----------------------------------------------------------
    try:
        wd = prepare_windows(cfg.data, first_guess=cfg.model.residual == "extrapolation")
    except WindowError as err:
        raise ConfigError(str(err)) from None
    try:
        build_model(cfg.model, wd.spec.cond_channels, wd.spec.target_channels)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None
    steps_per_epoch = plan_steps(cfg, wd.n_windows("train") * cfg.data.crops_per_window, wd.n_windows("val"))
    connect_ray()
    _check_resources(cfg)
    storage_path, storage_fs, storage_opts = _storage(cfg)
    url = run_url(cfg)

    # -- tracking: one MLflow run per training run, re-opened when the command is run again --------------------
    run_id_url = f"{url}/{RUN_ID_FILE}"
    previous_id = _read_text(run_id_url, storage_opts)
    tracker = Tracker.start(cfg.tracking, cfg.train.run_name, cfg.dump(), run_id=previous_id)
    if tracker.run_id is not None and tracker.run_id != previous_id:
        _write_text(run_id_url, tracker.run_id, storage_opts)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(config_path) if config_path else Path(tmp) / "config.yaml"
        if not config_path:
            cfg_file.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
        tracker.log_artifact(cfg_file, "config")
        if config_path:  # the resolved config (overrides applied) too
            resolved = Path(tmp) / "resolved_config.yaml"
            resolved.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
            tracker.log_artifact(resolved, "config")
    tracking_uri = resolve_tracking_uri(cfg.tracking) if cfg.tracking.enabled else None
    print(f"[def-ray] run {url}; {wd.n_windows('train')} train / {wd.n_windows('val')} val windows, "
          f"{steps_per_epoch} optimiser steps per epoch; MLflow run {tracker.run_id} at {tracking_uri}", flush=True)

    tc = cfg.train
    diffusion = cfg.model.kind == "diffusion"
    relay = ReportRelay(tc.epochs)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": cfg.dump(), "cond_channels": wd.spec.cond_channels,
                           "target_channels": wd.spec.target_channels, "steps_per_epoch": steps_per_epoch,
                           "mlflow_run_id": tracker.run_id, "tracking_uri": tracking_uri if tracker.enabled else None,
                           "run_url": url, "storage_options": storage_opts, "verbose": verbose()},
        scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                               resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=tc.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints,
                                                         checkpoint_score_attribute="val_score",
                                                         checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            # Ray Train's own INFO lines (every report, checkpoint, worker-group start) only when verbose
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
            callbacks=[relay.callback()]),
        datasets={"train": wd.dataset("train", crop=cfg.data.crop, shuffle=True, seed=tc.seed,
                                      sampling=cfg.data.crop_sampling, augment=cfg.data.augment,
                                      repeats=cfg.data.crops_per_window),
                  "val": wd.dataset("val", crop=cfg.data.crop if cfg.data.val_crop else None, seed=tc.seed + 1,
                                    sampling=cfg.data.crop_sampling if cfg.data.val_crop else "uniform",
                                    repeats=cfg.data.crops_per_window if cfg.data.val_crop else 1,
                                    same_every_pass=True)},
    )
    try:
        with relay:
            result = trainer.fit()
    except Exception:
        tracker.end("FAILED")
        raise

    # -- export the chosen checkpoint as one file -------------------------------------------------------------
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if "val_score" in m]
    if ranked and tc.export == "best":
        chosen, chosen_metrics = min(ranked, key=lambda cm: cm[1]["val_score"])
    else:  # the latest checkpoint is always kept, whatever its score
        chosen, chosen_metrics = result.checkpoint, dict(result.metrics or {})
    export, epoch, registered = None, None, None
    if chosen is not None:
        from def_ray.train.checkpointing import export_model

        with chosen.as_directory() as d:
            state = load_state(d)
        description = ModelDescription.of_training(cfg, wd, tracker.run_id)
        if tc.choose_sampler and diffusion:
            description = _with_chosen_sampler(cfg, wd, state, description, tracker)
        export = export_model(state, wd.spec.cond_channels, wd.spec.target_channels,
                              tc.export_path or f"{url}/best.pt",
                              storage_opts if _is_remote(tc.export_path or url) else None,
                              description=description)
        epoch = state.epoch + 1  # state.epoch counts from 0; the console and MLflow show epochs from 1 ("epoch 5/20")
        tracker.set_tag("exported_checkpoint", export)
        tracker.set_tag("exported_epoch", str(epoch))
        tracker.set_tag("export", tc.export)
        # the exported file as an MLflow model of this run, registered, promoted as train.promote says
        # (def_ray.train.publish)
        published = tracker.publish_model(export, description, cfg.dump(), exported_epoch=epoch, export=tc.export,
                                          promote=tc.promote,
                                          storage_options=storage_opts if _is_remote(export) else None)
        registered = f"models:/{published['name']}/{published['version']}" if published else None
    tracker.end("FINISHED")
    kind = "diffusion" if diffusion else "deterministic"
    print(f"[def-ray] {kind} model: {tc.export} checkpoint, epoch {epoch}/{tc.epochs}, exported to {export} "
          f"(val_score {chosen_metrics.get('val_score')}); MLflow run {tracker.run_id} at {tracking_uri}", flush=True)
    if registered and published["promoted"]:
        print(f"[def-ray] registered as {registered}, alias {published['model_uri']} "
              f"(def-ray forecast --model {published['model_uri']})", flush=True)
    elif registered:
        print(f"[def-ray] registered as {registered} (def-ray forecast --model {registered}); the alias champion "
              f"stays on version {published['champion'] or 'none'} (train.promote: true moves it)", flush=True)
    return TrainResult(run_name=tc.run_name, run_path=url, checkpoint_path=export, mlflow_run_id=tracker.run_id,
                       tracking_uri=tracking_uri, exported_metrics=dict(chosen_metrics),
                       final_metrics=dict(result.metrics or {}), registered_model=registered)
