"""`def-ray demo`: the whole pipeline on embedded synthetic data, local Ray, local files, a local MLflow store.

synthetic GRIB2 -> Zarr store -> deterministic UNet and conditional DDPM on Ray Train -> 50-member forecast with maps
(Ray actors) -> verification report against persistence, pysteps and the known probabilities of the process.

About 8 minutes on 2 CPU cores.  Everything lands under the output folder (default ./demo_out): grib/ (the
synthetic GRIB2), demo.zarr (the store), runs/ (Ray Train runs and the exported checkpoints), mlruns/ (the MLflow
store), forecast.zarr and forecast.nc (the ensemble, CF), forecast_maps/ (PNG), verification/ (report and plots).
The console shows one line per training epoch; `def-ray demo --verbose` adds Ray's own progress bars and logs.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from def_ray.config import Config, load_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def demo_config(out_dir: Path, config_path: str | Path | None = None, quick: bool = False,
                overrides: dict[str, Any] | None = None) -> Config:
    """The demo config with every output under `out_dir` (absolute, so Ray workers agree on it).

    `overrides` (dotted keys, e.g. {"train.epochs": 60}) apply last.
    """
    out = out_dir.resolve()
    out_paths: dict[str, Any] = {
        "synth.out_dir": str(out / "grib"),
        "data.store": str(out / "demo.zarr"),
        "train.storage_path": str(out / "runs"),
        "forecast.out": str(out / "forecast.zarr"),
        "verify.out": str(out / "verification"),
        "tracking.tracking_uri": f"sqlite:///{out / 'mlruns' / 'mlflow.db'}",
    }
    if quick:
        out_paths.update({"synth.hours": 72, "train.epochs": 1, "data.crops_per_window": 1, "verify.max_cases": 4,
                          "forecast.members": 10})
    return load_config(config_path or DEMO_CONFIG, {**out_paths, **(overrides or {})})


def train_both(cfg: Config, deterministic_epochs: int | None = None, deterministic_whole_windows: bool = False):
    """Train the deterministic UNet (run `<run_name>-deterministic`, `deterministic_epochs` or train.epochs) and the
    config's diffusion model.  `deterministic_whole_windows`: the UNet sees each whole window once an epoch, unturned
    (no data.crop, crops_per_window or augment)."""
    from def_ray.train.trainer import train

    det_cfg = cfg.model_copy(deep=True)
    det_cfg.model.kind = "deterministic"
    det_cfg.model.cond_dropout = 0.0
    if deterministic_whole_windows:
        det_cfg.data.crops_per_window, det_cfg.data.augment, det_cfg.data.crop = 1, False, None
    if deterministic_epochs is not None:
        det_cfg.train.epochs = deterministic_epochs
    det_cfg.train.run_name = f"{cfg.train.run_name}-deterministic"
    det_cfg.train.export = "best"  # its validation score is exact (no sampling noise): the baseline at its best
    det = train(det_cfg)
    diff = train(cfg)
    for name, r, c in (("deterministic", det, det_cfg), ("diffusion", diff, cfg)):
        print(f"{name}: exported {export_reason(r, c)}; checkpoint {r.checkpoint_path}")
    return det, diff


def export_reason(result, cfg: Config) -> str:
    """Which epoch a run exported and why, for the demo's one line per model."""
    epoch = int(result.exported_metrics.get("epoch", cfg.train.epochs - 1)) + 1
    steps = result.exported_metrics.get("global_step")
    at = f"epoch {epoch}/{cfg.train.epochs}" + (f" ({steps} optimiser steps)" if steps is not None else "")
    if cfg.train.export == "last":
        why = "the final weights (train.export: last)"
        if cfg.model.kind == "diffusion":
            why = (f"the final EMA weights (train.export: last; a {cfg.train.val_windows}-window validation CRPS is "
                   "too noisy to pick an epoch by)")
    else:
        score = result.exported_metrics.get("val_score")
        what = "validation MSE (exact)" if cfg.model.kind != "diffusion" else "validation CRPS"
        why = f"its lowest {what}" + (f", {score:.4g}" if isinstance(score, (int, float)) else "") + \
            " (train.export: best)"
    return f"{at}, {why}"


def _stage(name: str) -> float:
    print(f"\n=== {name}", flush=True)
    return time.perf_counter()


def run_demo(out_dir: Path = Path("demo_out"), config_path: str | Path | None = None, quick: bool = False,
             overrides: dict[str, Any] | None = None) -> dict:
    from def_ray.data.ingest import format_report, ingest
    from def_ray.data.synthetic import write_synthetic_grib
    from def_ray.forecast.batch import run_forecast_job
    from def_ray.forecast.writer import write_forecast
    from def_ray.train.console import connect_ray
    from def_ray.verify.workflow import verify
    from def_ray.viz.maps import forecast_map_set
    from def_ray.viz.plots import verification_plots

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cfg = demo_config(Path(out_dir), config_path, quick, overrides)
    (Path(out_dir) / "mlruns").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    connect_ray()

    t = _stage(f"1/5 synthesise {cfg.synth.hours} hours of {cfg.synth.ny}x{cfg.synth.nx} HRRR-like GRIB2")
    paths = write_synthetic_grib(cfg.synth)
    print(f"{len(paths)} files under {cfg.synth.out_dir} ({time.perf_counter() - t:.1f} s)")

    _stage("2/5 ingest GRIB2 -> Zarr (Ray tasks)")
    report = ingest([str(p) for p in paths], cfg.data.store, cfg.data.variables, tile=cfg.data.tile)
    print(format_report(report))
    summary["store"] = cfg.data.store

    _stage("3/5 train the deterministic UNet and the conditional DDPM (Ray Train)")
    # the UNet's own recipe, 20 epochs of whole windows: the diffusion model's 8 turned repeats an epoch (600 steps)
    # left it at epoch 2 of 10 by validation MSE and worse on the test hours (CRPS 8.5 dBZ against 6.8 this way)
    det, diff = train_both(cfg, deterministic_epochs=None if quick else 20, deterministic_whole_windows=True)
    summary.update(deterministic_checkpoint=det.checkpoint_path, diffusion_checkpoint=diff.checkpoint_path,
                   mlflow_run_id=diff.mlflow_run_id, tracking_uri=diff.tracking_uri)

    _stage(f"4/5 {cfg.forecast.members}-member forecast across {cfg.forecast.num_actors} Ray actors, with maps")
    fc = run_forecast_job(cfg, diff.checkpoint_path, overwrite=True,
                          draw_maps=partial(forecast_map_set, members=cfg.forecast.map_members))
    # the same forecast as NetCDF-4 beside the Zarr store: what NetCDF tools (Panoply, ncview, GIS) open
    netcdf = write_forecast(fc.dataset, str(Path(str(fc.path)).with_suffix(".nc")), overwrite=True)
    print(f"forecast: {fc.path} and {netcdf} ({fc.seconds:.1f} s); maps: {', '.join(str(p) for p in fc.maps)}")
    summary.update(forecast=str(fc.path), forecast_netcdf=netcdf, maps=[str(p) for p in fc.maps])

    _stage("5/5 verify against persistence, pysteps and the known probabilities")
    result = verify(cfg, {"diffusion": diff.checkpoint_path, "deterministic": det.checkpoint_path},
                    synth_truth=True, mlflow_run_id=diff.mlflow_run_id, plotter=verification_plots)
    report_text = result.paths["markdown"].read_text()
    print(report_text.split("\n## Plots", 1)[0].rstrip())  # the tables; the plots are files beside the report
    print(f"\nplots: {result.paths['markdown'].parent}/*.png")
    summary["report"] = str(result.paths["markdown"])

    print("\n=== done")
    for key, value in summary.items():
        print(f"{key:>24}: {value}")
    print(f"{'MLflow UI':>24}: mlflow ui --backend-store-uri {diff.tracking_uri}")
    return summary
