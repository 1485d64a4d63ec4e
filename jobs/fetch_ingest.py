"""Fetch HRRR hours and ingest them into the config's Zarr store: `python jobs/fetch_ingest.py --config CFG`.

With --synthetic it writes the config's seeded synthetic scenes instead of fetching (no network needed), which is
what the demo and the cluster test use.  Works the same after `ray job submit --working-dir . -- python jobs/...`.
Exit status: 0 when every hour arrived and ingested, 1 when some failed (the rest is kept), 2 on a bad config.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--synthetic", action="store_true", help="write synthetic scenes instead of fetching")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.override))
    except ConfigError as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    from def_ray.data.ingest import format_report, ingest

    if args.synthetic:
        from def_ray.data.synthetic import write_synthetic_grib

        sources = [str(p) for p in write_synthetic_grib(cfg.synth)]
        fetch_ok = True
    else:
        from def_ray.data.fetch import fetch_hrrr

        if cfg.fetch.start is None:
            print(f"{parser.prog}: {args.config}: fetch.start is not set (or use --synthetic)", file=sys.stderr)
            return 2
        report = fetch_hrrr(cfg.fetch.start, cfg.fetch.end or cfg.fetch.start, cfg.data.variables, cfg.fetch)
        print(report.summary())
        sources = [str(f.path) for f in report.files]
        fetch_ok = report.ok
    ingested = ingest(sources, cfg.data.store, cfg.data.variables, store_options=cfg.data.storage.to_fsspec(),
                      tile=cfg.data.tile)
    print(format_report(ingested))
    return 0 if fetch_ok and ingested.ok else 1


if __name__ == "__main__":
    sys.exit(main())
