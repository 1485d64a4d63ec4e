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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import xarray as xr

from def_ray.config import Config, SamplerConfig
from def_ray.data.normalise import Normaliser
from def_ray.data.ray_dataset import resolve_storage_options
from def_ray.data.zarr_store import ZarrStore
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.forecast.forecaster import ForecastError, Forecaster
from def_ray.forecast.members import MemberSampler, member_chunks
from def_ray.forecast.writer import check_output_not_input, output_format, write_forecast

__all__ = ["BatchResult", "MapWriter", "maps_dir", "sample_with_actors", "run_forecast_job"]


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
    chunks = member_chunks(members, options.member_batch_size, num_actors)
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


MapWriter = Callable[[xr.Dataset, Path], list[Path]]
"""(forecast Dataset, folder) -> PNG paths written: def_ray.viz.maps.forecast_map_set."""


def maps_dir(out: str) -> Path:
    """The folder of a forecast's maps: beside a local output, ./forecast_maps for a remote one."""
    if "://" in out and not out.startswith("file://"):
        return Path("forecast_maps")
    p = Path(out.removeprefix("file://").rstrip("/"))
    return p.with_name(p.name.rsplit(".", 1)[0] + "_maps")


def run_forecast_job(cfg: Config, model_uri: str, *, init_time: Any = None, members: int | None = None,
                     lead_hours: int | None = None, out: str | None = None, seed: int | None = None,
                     draw_maps: MapWriter | None = None, overwrite: bool = False,
                     progress: bool = True) -> BatchResult:
    """Sample, build and write one ensemble forecast with Ray actors (Ray must be initialised).

    The output must be a new path (or `overwrite`), never the input store or the checkpoint; `draw_maps`
    (def_ray.viz.maps.forecast_map_set) also writes PNG maps beside it.
    """
    started = time.perf_counter()
    fc_cfg = cfg.forecast
    members = fc_cfg.members if members is None else members
    lead_hours = fc_cfg.lead_hours if lead_hours is None else lead_hours
    out = out or fc_cfg.out
    seed = fc_cfg.seed if seed is None else seed
    try:  # a bad or forbidden output fails before any sampling
        output_format(out)
        check_output_not_input(out, [cfg.data.store, model_uri])
    except ValueError as err:
        raise ForecastError(str(err), field="out") from None
    if members < 1:
        raise ForecastError(f"members={members} must be >= 1", field="members")
    model_opts = resolve_storage_options(model_uri, cfg.train.storage.to_fsspec())
    fc = Forecaster.load(model_uri, model_opts, light=True)
    fc.check_config(cfg.data)
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
    try:
        path = write_forecast(ds, out, resolve_storage_options(out, fc_cfg.storage.to_fsspec()), overwrite=overwrite)
    except FileExistsError as err:
        raise ForecastError(str(err), field="out") from None
    maps = draw_maps(ds, maps_dir(out)) if draw_maps is not None else []
    return BatchResult(path=path, dataset=ds, maps=maps, seconds=time.perf_counter() - started)
