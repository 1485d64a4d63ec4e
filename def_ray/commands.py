"""The forecast and verify commands: argument parsing, the checks made before any work, and the parts (maps,
plots) wired into the workflows.

`def-ray forecast` / jobs/generate_ensemble_forecast.py and `def-ray verify` / jobs/verify.py.  The workflows
(def_ray.forecast.batch, def_ray.verify.workflow) receive their drawing functions from here, which keeps the
layers one-way: viz sits above forecast and verify.

Everything that can be checked without Ray is checked before Ray starts (arguments, the config, the checkpoint's
description, the store, the init time, the output path), so a bad command fails in a second with one line and
exit status 2; failures of the work itself exit 1, also with one line (DEF_RAY_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from def_ray.config import CommandParser, Config, ConfigError, load_config, parse_overrides, run_command
from def_ray.forecast.forecaster import ForecastError, load_for_config

__all__ = ["forecast_parser", "forecast_main", "check_forecast_inputs", "verify_parser", "verify_main",
           "check_verify_inputs", "parse_time", "BAD_INPUT"]


def _bad_input() -> tuple[type[BaseException], ...]:
    from def_ray.data.lexicon import UnknownVariableError
    from def_ray.data.windows import WindowError
    from def_ray.models.checkpoint import CheckpointError

    return ForecastError, WindowError, CheckpointError, UnknownVariableError, FileExistsError


BAD_INPUT = _bad_input()
"""The exceptions that mean "the command was asked something it cannot do" (exit 2), besides ConfigError."""


def parse_time(text: str) -> np.datetime64:
    """An ISO time (UTC; a zone is converted), e.g. 2024-06-01T18 or 2024-06-01T18:00Z, as datetime64[s]."""
    raw = text.strip()
    if len(raw) == 13 and raw[10] == "T":  # 2024-06-01T18: fromisoformat wants minutes
        raw += ":00"
    try:
        t = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2024-06-01T18 or 2024-06-01T18:00Z") from None
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(t, "s")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 2**62:
        raise argparse.ArgumentTypeError(f"{value} must lie in 0..2**62")
    return value


def _store(cfg: Config) -> Any:
    """The config's store, which must exist (ForecastError naming data.store otherwise)."""
    from def_ray.data.ray_dataset import resolve_storage_options
    from def_ray.data.zarr_store import ZarrStore

    store = ZarrStore(cfg.data.store, resolve_storage_options(cfg.data.store, cfg.data.storage.to_fsspec()))
    if not store.exists():
        raise ForecastError(f"data.store: no def_ray store at {cfg.data.store} (def-ray ingest writes one)",
                            field="init_time")
    return store


# -- def-ray forecast -----------------------------------------------------------------------------------------------


def forecast_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="def-ray forecast",
                      description="Ensemble forecast from a diffusion checkpoint, members sampled by Ray actors "
                                  "(local Ray, or the cluster named by RAY_ADDRESS). Exit status: 0 done, 2 bad "
                                  "input (checked before Ray starts), 1 failed.")
    p.add_argument("--model", required=True,
                   help="checkpoint: local path, s3:// URL or MLflow URI (runs:/..., models:/NAME@ALIAS)")
    p.add_argument("--config", required=True, help="experiment YAML (data.store and the forecast section)")
    p.add_argument("--members", type=_positive_int, help="ensemble size (default forecast.members)")
    p.add_argument("--init-time", type=parse_time, help="initialisation time (UTC), e.g. 2024-06-01T18 "
                                                        "(default: forecast.init_time, else the store's last usable)")
    p.add_argument("--lead-hours", type=_positive_int, help="hours ahead (default forecast.lead_hours)")
    p.add_argument("--seed", type=_seed, help="forecast seed (default forecast.seed)")
    p.add_argument("--out", help="output .zarr or .nc (the whole forecast) or .grib2 (probabilities and mean), "
                                  "local or s3:// (default forecast.out)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    p.add_argument("--plot", action="store_true", help="also write PNG maps beside the output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. -o forecast.num_actors=4 (repeatable)")
    return p


def check_forecast_inputs(cfg: Config, model: str, *, members: int | None = None, init_time: Any = None,
                          lead_hours: int | None = None, out: str | None = None, overwrite: bool = False) -> None:
    """Everything a forecast job can be refused for without Ray: ForecastError naming the argument or key.

    The members, the lead, the output (extension, not an input, not already there unless `overwrite`), the
    checkpoint (readable, consistent with the config, one member for a deterministic model), the store and the
    init time in it, the lead in model steps, the sampler options.
    """
    from def_ray.forecast.writer import check_output_not_input, output_format

    fc_cfg = cfg.forecast
    n = fc_cfg.members if members is None else members
    source = "--members" if members is not None else "forecast.members"
    if n < 1:
        raise ForecastError(f"{source} {n} must be >= 1", field="members")
    hours = fc_cfg.lead_hours if lead_hours is None else lead_hours
    if hours < 1:
        raise ForecastError(f"--lead-hours {hours} must be >= 1", field="lead_hours")
    target = out or fc_cfg.out
    try:
        output_format(target)
        check_output_not_input(target, [cfg.data.store, model])
    except ValueError as err:
        raise ForecastError(f"--out: {err}", field="out") from None
    _check_new_output(target, overwrite)
    fc = load_for_config(model, cfg)
    if fc.kind == "deterministic" and n != 1:
        raise ForecastError(f"{source} {n}: checkpoint {model} holds the deterministic model, which makes one "
                            "member (use --members 1)", field="members")
    store = _store(cfg)
    fc.init_time(store, init_time if init_time is not None else fc_cfg.init_time)
    fc.lead_steps(hours, store)
    fc.sampler_options(fc_cfg.sampler)


def _check_new_output(out: str, overwrite: bool) -> None:
    """A local output that exists is refused before the work unless `overwrite` (the writer refuses again, atomically,
    at the end; remote outputs are checked only there)."""
    if overwrite or ("://" in out and not out.startswith("file://")):
        return
    path = Path(out.removeprefix("file://"))
    if path.exists() or path.is_symlink():
        raise ForecastError(f"--out {out} already exists; pass --overwrite to replace it, or choose a new path",
                            field="out")


def forecast_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the forecast job and of `def-ray forecast`: 0 done, 2 bad input, 1 failed."""
    parser = forecast_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # a usage error (one line already printed) or --help
        return int(stop.code or 0)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return run_command(parser.prog, partial(_forecast, args), BAD_INPUT)


def _forecast(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_overrides(args.override))
    check_forecast_inputs(cfg, args.model, members=args.members, init_time=args.init_time,
                          lead_hours=args.lead_hours, out=args.out, overwrite=args.overwrite)
    import ray

    from def_ray.forecast.batch import run_forecast_job
    from def_ray.viz.maps import forecast_map_set

    draw = partial(forecast_map_set, members=cfg.forecast.map_members) if args.plot else None
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(log_to_driver=True)  # joins RAY_ADDRESS when set (ray job submit), else a local instance
    try:
        result = run_forecast_job(cfg, args.model, init_time=args.init_time, members=args.members,
                                  lead_hours=args.lead_hours, out=args.out, seed=args.seed, draw_maps=draw,
                                  overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        if started_ray:
            ray.shutdown()
    print(f"forecast: {result.path} ({result.dataset.sizes['member']} members, "
          f"{result.dataset.sizes['lead_time']} lead(s), {result.seconds:.1f} s)")
    for m in result.maps:
        print(f"map: {m}")
    return 0


# -- def-ray verify -------------------------------------------------------------------------------------------------


def verify_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="def-ray verify",
                      description="Score the models and the baselines on the same test windows and report. Exit "
                                  "status: 0 done, 2 bad input (checked before any scoring), 1 failed.")
    p.add_argument("--config", required=True)
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CKPT",
                   help="a checkpoint to score, e.g. diffusion=runs/demo/best.pt (repeatable)")
    p.add_argument("--out", help="report folder (default: verify.out)")
    p.add_argument("--synth-truth", action="store_true",
                   help="the store holds the config's synthetic scenes: check reliability against known probabilities")
    p.add_argument("--mlflow-run-id", help="log the report to this MLflow run")
    return p


def parse_models(items: Sequence[str], baselines: Sequence[str] = ()) -> dict[str, str]:
    """["name=ckpt", ...] -> {name: ckpt}; names non-empty, distinct, and not those of the baselines."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--model {item!r} is not NAME=CKPT (e.g. diffusion=runs/demo/best.pt)")
        if name in models or name in baselines:
            raise ConfigError(f"--model {item!r}: the name {name!r} is already used by "
                              f"{'another --model' if name in models else 'a baseline (verify.baselines)'}")
        models[name] = path
    return models


def check_verify_inputs(cfg: Config, models: dict[str, str], out: str | None = None) -> None:
    """Everything verification can be refused for before scoring: each checkpoint readable and consistent with the
    config, the store there, the report folder not an input."""
    from def_ray.forecast.writer import check_output_not_input

    for name, path in models.items():
        load_for_config(path, cfg, what=f"--model {name}=")
    _store(cfg)
    report = out or cfg.verify.out
    try:
        check_output_not_input(report, [cfg.data.store, *models.values()])
    except ValueError as err:
        raise ConfigError(f"--out {report}: the report folder must not be an input ({err})") from None
    if Path(report).exists() and not Path(report).is_dir():
        raise ConfigError(f"--out {report} is a file; the report needs a folder")


def verify_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the verify job and of `def-ray verify`: 0 done, 2 bad input, 1 failed."""
    parser = verify_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    return run_command(parser.prog, partial(_verify, args), BAD_INPUT)


def _verify(args: argparse.Namespace) -> int:
    from def_ray.verify.workflow import verify
    from def_ray.viz.plots import verification_plots

    cfg = load_config(args.config, parse_overrides(args.override))
    models = parse_models(args.model, cfg.verify.baselines)
    check_verify_inputs(cfg, models, args.out)
    result = verify(cfg, models, args.out, synth_truth=args.synth_truth, mlflow_run_id=args.mlflow_run_id,
                    plotter=verification_plots)
    print(result.paths["markdown"].read_text())
    print(result)
    return 0
