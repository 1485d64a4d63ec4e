"""`def-ray` command line: one sub-command per stage of the pipeline (each --help explains itself).

Exit status: 0 done, 2 bad input (one line naming the argument, key or file; checked before Ray starts where it
can be), 1 failed (one line naming the error; DEF_RAY_DEBUG=1 shows the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


from def_ray.config import CommandParser, Config, ConfigError, load_config, parse_overrides, run_command


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = parse_overrides(getattr(args, "override", None) or [])
    if getattr(args, "config", None):
        return load_config(args.config, overrides)
    from def_ray.config import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides({}, overrides), "<command line>")


def _add_config(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="experiment YAML (configs/*.yaml)")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. -o train.epochs=3 (repeatable)")


_VERBOSE_HELP = ("show Ray's own console output too: Ray Data progress bars, Ray Train's report and checkpoint "
                 "lines, the workers' epoch lines (default: one line per epoch; DEF_RAY_VERBOSE=1 does the same)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from def_ray.demo import run_demo
    from def_ray.train.console import set_verbose

    set_verbose(args.verbose)

    run_demo(out_dir=Path(args.out), config_path=args.config, quick=args.quick,
             overrides=parse_overrides(args.override))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from def_ray.data.synthetic import write_synthetic_grib

    cfg = config_from_args(args)
    paths = write_synthetic_grib(cfg.synth)
    print(f"wrote {len(paths)} GRIB2 files under {cfg.synth.out_dir}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch, then print the report's summary; exit 1 when any hour or variable is missing or failed."""
    import logging

    from def_ray.data.fetch import fetch_hrrr
    from def_ray.data.lexicon import UnknownVariableError

    cfg = config_from_args(args)
    fetch = cfg.fetch
    start = args.start or fetch.start
    end = args.end or fetch.end or start
    if start is None:
        raise ConfigError("fetch-hrrr needs --start (or fetch.start in the config)")
    variables = args.variables.split(",") if args.variables else cfg.data.variables
    out = args.out or fetch.out_dir
    if not args.verbose:  # the summary names every problem; per-request retries and errors only with --verbose
        logging.getLogger("def_ray.data.fetch").setLevel(logging.CRITICAL)
    try:
        report = fetch_hrrr(start, end, variables, fetch, out, progress=sys.stdout.isatty())
    except (ValueError, UnknownVariableError) as err:  # times, variables: refused before any request
        raise ConfigError(str(err)) from None
    print(f"fetch-hrrr {fetch.archive_url} {start:%Y-%m-%d %HZ} .. {end:%Y-%m-%d %HZ} -> {out}")
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest, then print the summary; bad input exits 2 (ConfigError), failed files or a busy store exit 1."""
    from def_ray.data.ingest import IngestError, format_report, ingest
    from def_ray.data.lexicon import UnknownVariableError
    from def_ray.data.zarr_store import StoreError

    cfg = config_from_args(args)
    variables = args.variables.split(",") if args.variables else cfg.data.variables
    sources = list(args.sources)
    if not sources:
        raise ConfigError("ingest needs GRIB2 files or URLs")
    try:
        report = ingest(sources, args.out or cfg.data.store, variables, storage_options=cfg.data.storage.to_fsspec(),
                        tile=cfg.data.tile if args.tile is None else args.tile, shard=args.shard,
                        overwrite=args.overwrite)
    except (IngestError, UnknownVariableError) as err:
        raise ConfigError(str(err)) from None
    except StoreError as err:  # e.g. the store's lock stayed busy: the store is valid, run again later
        print(f"def-ray ingest: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 1 if report.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from def_ray.train.entry import run_training
    from def_ray.train.console import set_verbose

    set_verbose(args.verbose)

    return run_training(config_from_args(args), args.config)


def _forecast_main(argv: Sequence[str]) -> int:
    from def_ray.commands import forecast_main

    return forecast_main(argv)


def _verify_main(argv: Sequence[str]) -> int:
    from def_ray.commands import verify_main

    return verify_main(argv)


# sub-commands whose own parser owns every argument after the name
DELEGATED = {"forecast": _forecast_main, "verify": _verify_main}


def _cmd_serve(args: argparse.Namespace) -> int:
    from def_ray.serve.app import run_serve

    cfg = config_from_args(args)
    run_serve(cfg, args.model, blocking=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="def-ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="end to end on embedded synthetic data (local Ray, local files, local MLflow)")
    p.add_argument("--out", default="demo_out", help="folder for every output of the demo")
    p.add_argument("--config", default=None, help="default: configs/demo.yaml shipped with the package")
    p.add_argument("--quick", action="store_true", help="fewer hours and epochs (a smoke run)")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied last, e.g. -o train.epochs=60 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true", help=_VERBOSE_HELP)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("synth", help="write seeded synthetic HRRR-like GRIB2 scenes (config section synth)")
    _add_config(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("fetch-hrrr", help="download only the needed GRIB2 messages from the HRRR archive")
    _add_config(p)
    p.add_argument("--start", type=_parse_time, help="first cycle, e.g. 2024-06-01T00")
    p.add_argument("--end", type=_parse_time, help="last cycle (inclusive)")
    p.add_argument("--variables", help="comma-separated short names (default: data.variables)")
    p.add_argument("--out", help="local folder (default: fetch.out_dir)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every retry and failed request as it happens")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("ingest", help="GRIB2 files or URLs -> one Zarr v3 store (local or s3://)")
    _add_config(p)
    p.add_argument("sources", nargs="*", help="GRIB2 files or URLs")
    p.add_argument("--out", help="store URL (default: data.store)")
    p.add_argument("--variables", help="comma-separated short names (default: data.variables)")
    p.add_argument("--tile", type=int, help="spatial chunk edge (default: data.tile)")
    p.add_argument("--shard", action="store_true", help="one shard object per time step and variable")
    p.add_argument("--overwrite", action="store_true",
                   help="replace whatever is at --out; without it an existing def_ray store is continued and any "
                        "other content is refused")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("train", help="train the model of the config on Ray Train (TorchTrainer)")
    _add_config(p, required=True)
    p.add_argument("--verbose", "-v", action="store_true", help=_VERBOSE_HELP)
    p.set_defaults(func=_cmd_train)

    sub.add_parser("forecast", help="ensemble forecast batch job across Ray actors (def-ray forecast --help)")
    sub.add_parser("verify", help="scores and report vs persistence and pysteps (def-ray verify --help)")

    p = sub.add_parser("serve", help="run the Ray Serve HTTP endpoint (POST /forecast)")
    _add_config(p, required=True)
    p.add_argument("--model", required=True, help="checkpoint file (local or s3://)")
    p.set_defaults(func=_cmd_serve)
    return parser


def _parse_time(text: str):
    from datetime import datetime

    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2024-06-01T18:00") from None


# exceptions that mean bad input (exit 2) besides ConfigError, as "module:name"; only those of modules already
# imported can have been raised, so classifying an error imports nothing
BAD_INPUT = ("def_ray.forecast.forecaster:ForecastError", "def_ray.data.windows:WindowError",
             "def_ray.models.checkpoint:CheckpointError", "def_ray.data.lexicon:UnknownVariableError",
             "def_ray.data.ingest:IngestError", "def_ray.serve.schema:RequestProblem", "builtins:FileExistsError")


def bad_input_types() -> tuple[type[BaseException], ...]:
    """The classes named by BAD_INPUT whose modules are loaded."""
    found = []
    for spec in BAD_INPUT:
        module, name = spec.split(":")
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `def-ray` command; returns its exit status (see the module doc)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]](argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a usage error (one line already printed) or --help
        return int(stop.code or 0)
    return run_command("def-ray", lambda: args.func(args), bad_input_types)


if __name__ == "__main__":
    sys.exit(main())
