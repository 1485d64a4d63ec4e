"""The shared `main` of the training jobs (jobs/train_deterministic.py, jobs/train_diffusion.py) and `def-ray train`.

Bad input (the config, the model kind, where the run writes) is refused before Ray starts with one line and exit
status 2; `train` itself checks the store and its windows before any worker starts.  A failed run exits 1 with one
line (DEF_RAY_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

from def_ray.config import CommandParser, Config, ConfigError, load_config, parse_overrides, run_command

__all__ = ["job_main", "check_train_inputs", "run_training", "BAD_INPUT"]


def _bad_input() -> tuple[type[BaseException], ...]:
    from def_ray.data.lexicon import UnknownVariableError
    from def_ray.data.windows import WindowError

    return WindowError, UnknownVariableError


BAD_INPUT = _bad_input()
"""Besides ConfigError, the exceptions that mean the run was asked something it cannot do (exit 2)."""


def _location(path: str) -> str:
    """A comparable form of a local path (resolved) or URL (normalised, lower-case scheme and host)."""
    if "://" in path and not path.startswith("file://"):
        scheme, rest = path.split("://", 1)
        host, _, key = rest.partition("/")
        return f"{scheme.lower()}://{host.lower()}{posixpath.normpath('/' + key)}"
    return str(Path(path.removeprefix("file://")).expanduser().resolve())


def _overlap(a: str, b: str) -> bool:
    """True when one location is the other or lies inside it."""
    la, lb = _location(a), _location(b)
    return la == lb or la.startswith(lb.rstrip("/") + "/") or lb.startswith(la.rstrip("/") + "/")


def check_train_inputs(cfg: Config, kind: str | None = None, config_path: str | None = None) -> None:
    """Refuse, before Ray starts, a run of the wrong model kind or one whose outputs would land on its input store."""
    if kind is not None and cfg.model.kind != kind:
        raise ConfigError(f"{config_path or 'config'}: model.kind is {cfg.model.kind!r} but this job trains the "
                          f"{kind} model (use the other job, or --override model.kind={kind})")
    run = cfg.train.storage_path.rstrip("/") + "/" + cfg.train.run_name
    outputs = {"train.storage_path/train.run_name": run}
    if cfg.train.export_path:
        outputs["train.export_path"] = cfg.train.export_path
        if not cfg.train.export_path.endswith(".pt"):
            raise ConfigError(f"train.export_path={cfg.train.export_path}: the exported checkpoint is one file; "
                              "name it *.pt")
    for key, path in outputs.items():
        if _overlap(path, cfg.data.store):
            raise ConfigError(f"{key}={path} overlaps data.store={cfg.data.store}: a run never writes where it "
                              "reads; choose another folder")


def run_training(cfg: Config, config_path: str | None = None, kind: str | None = None) -> int:
    """Check, then train; prints where the checkpoint and the MLflow run are."""
    check_train_inputs(cfg, kind, config_path)
    from def_ray.train.trainer import train

    result = train(cfg, config_path=config_path)
    print(f"checkpoint: {result.checkpoint_path}")
    print(f"mlflow run: {result.mlflow_run_id} ({result.tracking_uri})")
    return 0


def job_main(argv: Sequence[str] | None, kind: str) -> int:
    """Parse --config / --override, check, train: 0 done, 2 bad input, 1 failed."""
    parser = CommandParser(description=f"Train the {kind} model on Ray Train (local Ray, or the cluster named by "
                                       "RAY_ADDRESS as under `ray job submit`). Exit status: 0 done, 2 bad input, "
                                       "1 failed.")
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/diffusion_4090.yaml")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. -o train.epochs=3 (repeatable; values parsed as YAML)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show Ray's own console output too: Ray Data progress bars, Ray Train's report and "
                             "checkpoint lines (default: one line per epoch; DEF_RAY_VERBOSE=1 does the same)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.verbose:
        os.environ["DEF_RAY_VERBOSE"] = "1"  # def_ray.train.console.set_verbose, without importing Ray here

    def work() -> int:
        cfg = load_config(args.config, parse_overrides(args.override))
        return run_training(cfg, args.config, kind)

    return run_command(parser.prog, work, BAD_INPUT)

