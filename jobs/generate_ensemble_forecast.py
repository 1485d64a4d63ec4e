"""Ensemble forecast batch job: `python jobs/generate_ensemble_forecast.py --model CKPT --config CFG --members 50`.

Options: --init-time T, --lead-hours N, --out PATH (.zarr / .nc, local or s3://), --plot, --override KEY=VALUE.
Works the same after `ray job submit --working-dir . --`: with RAY_ADDRESS set it joins that cluster, otherwise
it starts a local Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import def_ray  # noqa: F401
except ImportError:  # run from a checkout (e.g. a job's working dir) where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from def_ray.commands import forecast_main


def main(argv: Sequence[str] | None = None) -> int:
    return forecast_main(argv)


if __name__ == "__main__":
    sys.exit(main())
