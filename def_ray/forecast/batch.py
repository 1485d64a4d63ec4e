"""The ensemble batch job: members sampled by Ray actors (one GPU each where there are GPUs), written once.

The driver loads the checkpoint's config, builds the conditioning from the store and splits the members into
chunks of ``member_batch_size``; each actor loads the model once and samples the chunks it is given with their
``member_offset``, so the ensemble does not depend on how many actors there are.  Chunks are gathered in member
order, turned into the CF Dataset and written once (Zarr or NetCDF, local or s3://), with PNG maps on request.

    python jobs/generate_ensemble_forecast.py --model CKPT --config CFG --members 50 [--init-time T]
        [--lead-hours N] [--out PATH] [--plot]
    (the same line after `ray job submit --working-dir . --`; `def-ray forecast ...` is the same command)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import xarray as xr

from def_ray.config import Config, ConfigError, SamplerConfig, load_config, parse_overrides
from def_ray.data.normalise import Normaliser
from def_ray.data.ray_dataset import resolve_storage_options
from def_ray.data.zarr_store import ZarrStore
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.forecast.forecaster import ForecastError, Forecaster
from def_ray.forecast.members import MemberSampler, member_chunks
from def_ray.forecast.writer import output_format, write_forecast

__all__ = ["BatchResult", "sample_with_actors", "run_forecast_job", "main"]


@dataclass
class BatchResult:
    path: str
    dataset: xr.Dataset
    maps: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _gpus_per_actor(cfg: Config) -> float:
    if cfg.forecast.gpus_per_actor is not None:
        return cfg.forecast.gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _gather(refs: Mapping[ray.ObjectRef, int], members: int, progress: bool) -> np.ndarray:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    parts: dict[int, np.ndarray] = {}
    pending = list(refs)
    with Progress(TextColumn("sampling members"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress) as bar:
        task = bar.add_task("members", total=members)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            arr = ray.get(done[0])
            parts[refs[done[0]]] = arr
            bar.advance(task, arr.shape[0])
    return np.concatenate([parts[k] for k in sorted(parts)], axis=0)


def sample_with_actors(model_uri: str, model_options: Mapping[str, Any], cond: np.ndarray, members: int,
                       lead_steps: int, options: SamplerConfig, seed: int, normaliser: Normaliser, *,
                       num_actors: int, cpus: float, gpus: float, progress: bool = False) -> np.ndarray:
    """The ensemble (members, lead, n_targets, y, x), its chunks spread round-robin over `num_actors` actors; the
    conditioning goes into the object store once."""
    chunks = member_chunks(members, options.member_batch_size)
    n = max(1, min(num_actors, len(chunks)))
    actor_cls = ray.remote(MemberSampler).options(num_cpus=cpus, num_gpus=gpus)
    actors = [actor_cls.remote(model_uri, dict(model_options), max(1, int(cpus))) for _ in range(n)]
    try:
        cond_ref = ray.put(cond)
        refs = {actors[i % n].sample.remote(cond_ref, count, lead_steps, options, seed, offset, normaliser): offset
                for i, (offset, count) in enumerate(chunks)}
        return _gather(refs, members, progress)
    finally:
        for a in actors:
            ray.kill(a)


def _maps_dir(out: str) -> Path:
    if "://" in out and not out.startswith("file://"):
        return Path("forecast_maps")
    p = Path(out.removeprefix("file://").rstrip("/"))
    return p.with_name(p.name.rsplit(".", 1)[0] + "_maps")


def run_forecast_job(cfg: Config, model_uri: str, *, init_time: Any = None, members: int | None = None,
                     lead_hours: int | None = None, out: str | None = None, seed: int | None = None,
                     plot: bool = False, progress: bool = True) -> BatchResult:
    """Sample, build and write one ensemble forecast with Ray actors (Ray must be initialised)."""
    started = time.perf_counter()
    fc_cfg = cfg.forecast
    members = fc_cfg.members if members is None else members
    lead_hours = fc_cfg.lead_hours if lead_hours is None else lead_hours
    out = out or fc_cfg.out
    seed = fc_cfg.seed if seed is None else seed
    output_format(out)  # a bad extension fails before any sampling
    if members < 1:
        raise ForecastError(f"members={members} must be >= 1", field="members")
    model_opts = resolve_storage_options(model_uri, cfg.train.storage.to_fsspec())
    fc = Forecaster.load(model_uri, model_opts, light=True)
    store = ZarrStore(cfg.data.store, resolve_storage_options(cfg.data.store, cfg.data.storage.to_fsspec()))
    if not store.exists():
        raise ForecastError(f"data.store: no def_ray store at {cfg.data.store}", field="init_time")
    init_time = fc.init_time(store, init_time if init_time is not None else cfg.forecast.init_time)
    norm = fc.normaliser(store)
    lead_steps = fc.lead_steps(lead_hours, store)
    cond = fc.conditioning(store, init_time, norm)
    options = fc.sampler_options(cfg.forecast.sampler)
    ens = sample_with_actors(model_uri, model_opts, cond, members, lead_steps, options, seed, norm,
                             num_actors=fc_cfg.num_actors, cpus=fc_cfg.cpus_per_actor, gpus=_gpus_per_actor(cfg),
                             progress=progress)
    lat, lon = store.latlon()
    attrs = fc.provenance(options, seed=seed, members=members, lead_hours=lead_hours, normaliser=norm,
                          store_url=store.url)
    ds = build_forecast_dataset(ens, targets=fc.targets, init_time=init_time, step_seconds=fc.step_seconds(store),
                                latitude=lat, longitude=lon, projection=store.projection,
                                thresholds=fc_cfg.thresholds, quantiles=fc_cfg.quantiles, attrs=attrs)
    path = write_forecast(ds, out, resolve_storage_options(out, fc_cfg.storage.to_fsspec()))
    maps: list[Path] = []
    if plot:
        from def_ray.viz.maps import forecast_maps

        for v in fc.targets:
            maps += forecast_maps(ds, _maps_dir(out), v, members=fc_cfg.map_members)
    return BatchResult(path=path, dataset=ds, maps=maps, seconds=time.perf_counter() - started)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate_ensemble_forecast",
                                description="Ensemble forecast from a diffusion checkpoint, members sampled by Ray "
                                            "actors (local Ray, or the cluster named by RAY_ADDRESS).")
    p.add_argument("--model", required=True, help="checkpoint: local path, s3:// URL or MLflow URI (runs:/...)")
    p.add_argument("--config", required=True, help="experiment YAML (data.store and the forecast section)")
    p.add_argument("--members", type=int, help="ensemble size (default forecast.members)")
    p.add_argument("--init-time", type=np.datetime64, help="initialisation time, e.g. 2024-06-01T18 "
                                                           "(default: the last usable time of the store)")
    p.add_argument("--lead-hours", type=int, help="hours ahead (default forecast.lead_hours)")
    p.add_argument("--seed", type=int, help="forecast seed (default forecast.seed)")
    p.add_argument("--out", help="output .zarr or .nc, local or s3:// (default forecast.out)")
    p.add_argument("--plot", action="store_true", help="also write PNG maps beside the output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. -o forecast.num_actors=4 (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the job and of `def-ray forecast`; exit code 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    started_ray = False
    try:
        cfg = load_config(args.config, parse_overrides(args.override))
        if not ray.is_initialized():
            ray.init(log_to_driver=True)  # joins RAY_ADDRESS when set (ray job submit), else a local instance
            started_ray = True
        result = run_forecast_job(cfg, args.model, init_time=args.init_time, members=args.members,
                                  lead_hours=args.lead_hours, out=args.out, seed=args.seed, plot=args.plot,
                                  progress=not args.no_progress)
    except (ConfigError, ForecastError) as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    finally:
        if started_ray:
            ray.shutdown()
    print(f"forecast: {result.path} ({result.dataset.sizes['member']} members, "
          f"{result.dataset.sizes['lead_time']} lead(s), {result.seconds:.1f} s)")
    for m in result.maps:
        print(f"map: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
