"""The shared `main` of the training jobs (jobs/train_deterministic.py, jobs/train_diffusion.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from def_ray.config import ConfigError, load_config


def job_main(argv: Sequence[str] | None, kind: str) -> int:
    """Parse --config / --override, check the model kind, train; exit code 2 on a bad config."""
    from def_ray.config import parse_overrides

    parser = argparse.ArgumentParser(description=f"Train the {kind} model on Ray Train (local Ray, or the cluster "
                                                 "named by RAY_ADDRESS as under `ray job submit`).")
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/diffusion_4090.yaml")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. -o train.epochs=3 (repeatable; values parsed as YAML)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        cfg = load_config(args.config, parse_overrides(args.override))
        if cfg.model.kind != kind:
            raise ConfigError(f"{args.config}: model.kind is {cfg.model.kind!r} but this job trains the {kind} "
                              f"model (use the other job, or --override model.kind={kind})")
        from def_ray.train.trainer import train

        result = train(cfg, config_path=args.config)
    except ConfigError as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    print(f"checkpoint: {result.checkpoint_path}")
    print(f"mlflow run: {result.mlflow_run_id} ({result.tracking_uri})")
    return 0
