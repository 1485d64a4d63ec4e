"""Train the deterministic model: `python jobs/train_deterministic.py --config CFG [--override key=value ...]`.

Works the same after `ray job submit --working-dir . -- python jobs/train_deterministic.py --config CFG`: with RAY_ADDRESS
set it joins that cluster, otherwise it starts a local Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import def_ray  # noqa: F401
except ImportError:  # run from a checkout (e.g. a job's working dir) where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from def_ray.train.entry import job_main


def main(argv: Sequence[str] | None = None) -> int:
    return job_main(argv, kind="deterministic")


if __name__ == "__main__":
    sys.exit(main())
