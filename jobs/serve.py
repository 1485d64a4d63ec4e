"""Run the ensemble forecast HTTP endpoint: `python jobs/serve.py --config CFG --model CKPT`.

Starts Ray Serve's proxy on serve.host:serve.port (config) and deploys def_ray.serve.app (POST /forecast,
GET /healthz, OpenAPI at /docs) until Ctrl-C.  With RAY_ADDRESS set (e.g. after `ray job submit --`) it deploys
onto that cluster.  The API key, if any, comes from the environment variable named by serve.api_key_env.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import def_ray  # noqa: F401
except ImportError:  # run from a checkout (e.g. a job's working dir) where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from def_ray.config import CommandParser, load_config, parse_overrides, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """0 after Ctrl-C, 2 bad input (checked before Ray starts: config, checkpoint, a request's defaults), 1 failed."""
    parser = CommandParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML (serve and forecast sections, data.store)")
    parser.add_argument("--model", required=True, help="checkpoint: local path, s3:// URL or MLflow URI")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. -o serve.port=8080 (repeatable)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    def work() -> int:
        from def_ray.serve.app import run_serve

        run_serve(load_config(args.config, parse_overrides(args.override)), args.model, blocking=True)
        return 0

    from def_ray.commands import BAD_INPUT  # ForecastError (the checkpoint, a request's defaults) and the like

    return run_command(parser.prog, work, BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
