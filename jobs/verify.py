"""Verification report: `python jobs/verify.py --config CFG --model diffusion=CKPT [--model deterministic=CKPT]`.

Scores the models and the baselines (persistence, pysteps extrapolation and STEPS) on the same test windows and
writes report.md, scores.json and plots.  Works the same after `ray job submit --working-dir . -- python jobs/...`.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import def_ray  # noqa: F401
except ImportError:  # run from a checkout (a job's working dir) where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from def_ray.commands import verify_main as main

if __name__ == "__main__":
    sys.exit(main())
