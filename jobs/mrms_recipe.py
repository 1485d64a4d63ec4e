"""Real-radar recipe: MRMS frames -> cropped, coarsened store -> both models trained -> verified vs baselines.

    python jobs/mrms_recipe.py --config configs/mrms_preciprate.yaml

The earlier frames train, the later frames (the config's test split) are verified against persistence, pysteps
extrapolation and STEPS, and the deterministic UNet; report under verify.out.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import def_ray  # noqa: F401
except ImportError:  # run from a checkout (a job's working dir) where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from def_ray.config import parse_overrides
from def_ray.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--deterministic-epochs", type=int, help="epochs of the deterministic UNet baseline "
                        "(default: train.epochs)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.override))
        files = sorted(glob.glob(cfg.mrms.files))
        if not files:
            raise ConfigError(f"mrms.files: no file matches {cfg.mrms.files!r}")
    except ConfigError as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    from def_ray.data.ingest import format_report, ingest_dataset
    from def_ray.data.mrms import read_mrms_series
    from def_ray.demo import train_both
    from def_ray.verify.workflow import verify
    from def_ray.viz.plots import verification_plots

    series = read_mrms_series(files, box=tuple(cfg.mrms.box), factor=cfg.mrms.factor,
                              min_coverage=cfg.mrms.min_coverage)
    print(format_report(ingest_dataset(series[cfg.data.variables], cfg.data.store, tile=cfg.data.tile)))
    det, diff = train_both(cfg, deterministic_epochs=args.deterministic_epochs)
    result = verify(cfg, {"diffusion": diff.checkpoint_path, "deterministic": det.checkpoint_path},
                    mlflow_run_id=diff.mlflow_run_id, plotter=verification_plots)
    print(result.paths["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
