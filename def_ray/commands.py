"""The forecast and verify commands: argument parsing, and the parts (maps, plots) wired into the workflows.

`def-ray forecast` / jobs/generate_ensemble_forecast.py and `def-ray verify` / jobs/verify.py.  The workflows
(def_ray.forecast.batch, def_ray.verify.workflow) receive their drawing functions from here, which keeps the
layers one-way: viz sits above forecast and verify.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial

import numpy as np

from def_ray.config import ConfigError, load_config, parse_overrides
from def_ray.forecast.forecaster import ForecastError

__all__ = ["forecast_parser", "forecast_main", "verify_parser", "verify_main"]


def forecast_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate_ensemble_forecast",
                                description="Ensemble forecast from a diffusion checkpoint, members sampled by Ray "
                                            "actors (local Ray, or the cluster named by RAY_ADDRESS).")
    p.add_argument("--model", required=True, help="checkpoint: local path, s3:// URL or MLflow URI (runs:/...)")
    p.add_argument("--config", required=True, help="experiment YAML (data.store and the forecast section)")
    p.add_argument("--members", type=int, help="ensemble size (default forecast.members)")
    p.add_argument("--init-time", type=np.datetime64, help="initialisation time, e.g. 2024-06-01T18 "
                                                           "(default: the last usable time of the store)")
    p.add_argument("--lead-hours", type=int, help="hours ahead (default forecast.lead_hours)")
    p.add_argument("--seed", type=int, help="forecast seed (default forecast.seed)")
    p.add_argument("--out", help="output .zarr or .nc, local or s3:// (default forecast.out)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    p.add_argument("--plot", action="store_true", help="also write PNG maps beside the output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. -o forecast.num_actors=4 (repeatable)")
    return p


def forecast_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the forecast job and of `def-ray forecast`; exit code 2 on bad input."""
    import ray

    from def_ray.forecast.batch import run_forecast_job
    from def_ray.viz.maps import forecast_map_set

    parser = forecast_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    started_ray = False
    try:
        cfg = load_config(args.config, parse_overrides(args.override))
        if args.members is not None and args.members < 1:
            raise ForecastError(f"--members {args.members} must be >= 1", field="members")
        draw = partial(forecast_map_set, members=cfg.forecast.map_members) if args.plot else None
        if not ray.is_initialized():
            ray.init(log_to_driver=True)  # joins RAY_ADDRESS when set (ray job submit), else a local instance
            started_ray = True
        result = run_forecast_job(cfg, args.model, init_time=args.init_time, members=args.members,
                                  lead_hours=args.lead_hours, out=args.out, seed=args.seed, draw_maps=draw,
                                  overwrite=args.overwrite, progress=not args.no_progress)
    except (ConfigError, ForecastError) as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    finally:
        if started_ray:
            ray.shutdown()
    print(f"forecast: {result.path} ({result.dataset.sizes['member']} members, "
          f"{result.dataset.sizes['lead_time']} lead(s), {result.seconds:.1f} s)")
    for m in result.maps:
        print(f"map: {m}")
    return 0


def verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="def-ray verify",
                                description="Score the models and the baselines on the same test windows and report.")
    p.add_argument("--config", required=True)
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CKPT",
                   help="a checkpoint to score, e.g. diffusion=runs/demo/best.pt (repeatable)")
    p.add_argument("--out", help="report folder (default: verify.out)")
    p.add_argument("--synth-truth", action="store_true",
                   help="the store holds the config's synthetic scenes: check reliability against known probabilities")
    p.add_argument("--mlflow-run-id", help="log the report to this MLflow run")
    return p


def verify_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the verify job and of `def-ray verify`; exit code 2 on bad input."""
    from def_ray.verify.workflow import verify
    from def_ray.viz.plots import verification_plots

    args = verify_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.override))
        models = {}
        for item in args.model:
            name, sep, path = item.partition("=")
            if not sep:
                raise ConfigError(f"--model {item!r} is not NAME=CKPT")
            models[name] = path
        result = verify(cfg, models, args.out, synth_truth=args.synth_truth, mlflow_run_id=args.mlflow_run_id,
                        plotter=verification_plots)
    except (ConfigError, ForecastError) as err:
        print(f"def-ray verify: {err}", file=sys.stderr)
        return 2
    print(result.paths["markdown"].read_text())
    print(result)
    return 0
