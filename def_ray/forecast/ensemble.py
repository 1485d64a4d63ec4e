"""The ensemble forecast workflow: conditioning from the store, member sampling, and the output Dataset.

A forecast initialised at time t0 conditions on the ``n_past`` frames ending at t0 (t0 included), spaced by the
model step ``dt_steps * store dt``, normalised as in training, NaN -> 0, then the static fields; lead k (k >= 1) is
valid at t0 + k * model step, and leads beyond the first are autoregressive (``def_ray.models.rollout``).

Reproducibility: member k of a forecast with seed s is a function of (checkpoint, conditioning, sampler, steps,
s, k) only; the batch job's actors and the Serve replicas sample disjoint member ranges with ``member_offset`` and
the result is the same as one call for all members.  The output's attributes record everything needed, and
``regenerate_member`` redoes one member from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from def_ray.config import Config, config_from_dict
from def_ray.data.lexicon import LEXICON
from def_ray.data.zarr_store import StoreError, ZarrStore
from def_ray.forecast.products import ensemble_mean, ensemble_quantiles, ensemble_spread, exceedance_probability

__all__ = ["ForecastError", "ForecastModel", "Normalisation", "load_forecast_model", "resolve_checkpoint",
           "normalisation_for", "model_step_seconds", "lead_steps_for", "check_init_time", "latest_init_time",
           "conditioning_from_store", "conditioning_from_frames", "sample_members", "forecast",
           "build_forecast_dataset", "forecast_attrs", "regenerate_member"]


class ForecastError(ValueError):
    """A forecast that cannot be made as asked; ``field`` names the input at fault (used by the HTTP app)."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


# -- the model and how its data were scaled ---------------------------------------------------------------------


@dataclass
class ForecastModel:
    """A loaded checkpoint: the network, its (training) config, the extra dict and where it came from."""

    model: Any
    config: Config
    extra: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def variables(self) -> list[str]:
        return list(self.config.data.variables)

    @property
    def targets(self) -> list[str]:
        return list(self.config.data.target_variables)

    @property
    def target_idx(self) -> list[int]:
        return [self.variables.index(v) for v in self.targets]

    @property
    def timesteps(self) -> int:
        return int(self.config.model.timesteps)


def resolve_checkpoint(uri: str) -> str:
    """A local path or fsspec URL for `uri`; MLflow URIs (runs:/..., models:/..., mlflow-artifacts:/...) are
    downloaded first (a folder must hold exactly one *.pt file)."""
    if not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return uri
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    if local.is_dir():
        found = sorted(local.rglob("*.pt"))
        if len(found) != 1:
            raise ForecastError(f"MLflow artifact {uri} holds {len(found)} *.pt files ({[p.name for p in found]}); "
                                "name the checkpoint file in the URI", field="model")
        local = found[0]
    return str(local)


def load_forecast_model(path: str, storage_options: Mapping[str, Any] | None = None,
                        map_location: str = "cpu") -> ForecastModel:
    """Load a checkpoint (local path, s3:// URL or MLflow URI) in eval mode: a diffusion model samples ensembles,
    the deterministic UNet gives one member."""
    from def_ray.models.checkpoint import CheckpointError, load_checkpoint

    local = resolve_checkpoint(str(path))
    try:
        model, cfg_dict, extra = load_checkpoint(local, map_location=map_location,
                                                 storage_options=dict(storage_options or {}) or None)
    except CheckpointError as err:
        raise ForecastError(str(err), field="model") from None
    cfg = cfg_dict if isinstance(cfg_dict, Config) else config_from_dict(cfg_dict, f"checkpoint {path}")
    model.eval()
    return ForecastModel(model=model, config=cfg, extra=dict(extra or {}), path=str(path))


def _floor(variable: str) -> float:
    known = LEXICON.get(variable)
    return -np.inf if known is None or known.floor is None else known.floor


@dataclass(frozen=True)
class Normalisation:
    """Per-variable mean and std used to scale the model's inputs and outputs; `source` says where they came from."""

    mean: dict[str, float]
    std: dict[str, float]
    source: str

    def normalise(self, frames: np.ndarray, variables: Sequence[str]) -> np.ndarray:
        """(n_past, n_vars, H, W) physical -> normalised float32, NaN and inf -> 0 (as in training)."""
        m = np.asarray([self.mean[v] for v in variables], dtype=np.float32)[None, :, None, None]
        s = np.asarray([self.std[v] for v in variables], dtype=np.float32)[None, :, None, None]
        out = (np.asarray(frames, dtype=np.float32) - m) / s
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)

    def denormalise(self, x: np.ndarray, variables: Sequence[str]) -> np.ndarray:
        """(..., n_vars, H, W) normalised -> physical float32 (float32 arithmetic, the same everywhere).

        Values below a variable's physical floor (lexicon: 0 for rain, -10 dBZ for reflectivity) are raised to it.
        """
        m = np.asarray([self.mean[v] for v in variables], dtype=np.float32)[:, None, None]
        s = np.asarray([self.std[v] for v in variables], dtype=np.float32)[:, None, None]
        floor = np.asarray([_floor(v) for v in variables], dtype=np.float32)[:, None, None]
        return np.maximum(np.asarray(x, dtype=np.float32) * s + m, floor).astype(np.float32, copy=False)

    def to_json(self) -> str:
        return json.dumps({v: {"mean": self.mean[v], "std": self.std[v]} for v in self.mean}, sort_keys=True)


def normalisation_for(fm: ForecastModel, store: ZarrStore | None) -> Normalisation:
    """The checkpoint's training statistics (extra["normalisation"]), else the store's statistics."""
    norm = fm.extra.get("normalisation")
    if isinstance(norm, Mapping) and all(v in norm for v in fm.variables):
        return Normalisation({v: float(norm[v]["mean"]) for v in fm.variables},
                             {v: float(norm[v]["std"]) for v in fm.variables}, "checkpoint")
    if store is None:
        raise ForecastError(f"checkpoint {fm.path} has no normalisation statistics and no store is configured "
                            "to take them from (data.store)", field="model")
    stats = store.stats()
    missing = [v for v in fm.variables if v not in stats]
    if missing:
        raise ForecastError(f"store {store.url} lacks the model's variables {missing}", field="init_time")
    return Normalisation({v: stats[v].mean for v in fm.variables}, {v: stats[v].std for v in fm.variables},
                         f"store statistics of {store.url} (the checkpoint carries none)")


# -- time -----------------------------------------------------------------------------------------------------------


def model_step_seconds(cfg: Config, store: ZarrStore | None, default_dt_seconds: int = 3600) -> int:
    """Seconds between a model's frames: data.dt_steps times the store's time step (hourly without a store)."""
    dt = store.dt_seconds if store is not None else default_dt_seconds
    return int(cfg.data.dt_steps) * int(dt)


def lead_steps_for(lead_hours: int, step_seconds: int) -> int:
    if isinstance(lead_hours, bool) or not isinstance(lead_hours, (int, np.integer)) or lead_hours < 1:
        raise ForecastError(f"lead_hours={lead_hours!r} must be a whole number of hours >= 1", field="lead_hours")
    if (lead_hours * 3600) % step_seconds:
        raise ForecastError(f"lead_hours={lead_hours} is not a whole number of model steps of {step_seconds} s "
                            f"({step_seconds / 3600:g} h)", field="lead_hours")
    return lead_hours * 3600 // step_seconds


def _history(store: ZarrStore, cfg: Config) -> np.ndarray:
    """Store indices of the conditioning frames relative to the init index: -(n_past-1)*dt, ..., 0."""
    return np.arange(-(cfg.data.n_past - 1), 1) * cfg.data.dt_steps


def _usable_range(store: ZarrStore, cfg: Config) -> str:
    committed = store.committed_times()
    if committed.size == 0:
        return f"the store {store.url} has no committed time steps"
    return (f"committed times of {store.url} run {committed[0]} .. {committed[-1]} ({committed.size} steps); "
            f"an init time needs n_past={cfg.data.n_past} committed frames {cfg.data.dt_steps * store.dt_seconds} s "
            f"apart ending at it")


def check_init_time(store: ZarrStore, cfg: Config, init_time: Any) -> int:
    """Store index of `init_time`, checked: on the axis and with its n_past conditioning frames committed."""
    try:
        t = np.datetime64(init_time, "s")
    except (TypeError, ValueError):
        raise ForecastError(f"init_time {init_time!r} is not a time", field="init_time") from None
    try:
        i = store.index_of(t)
    except StoreError as err:
        raise ForecastError(f"init_time {t}: {err}; {_usable_range(store, cfg)}", field="init_time") from None
    idx = i + _history(store, cfg)
    committed = store.committed_mask()
    ok = idx.min() >= 0 and idx.max() < committed.size and bool(committed[idx].all())
    if not ok:
        raise ForecastError(f"init_time {t} is outside the store or lacks its conditioning frames: "
                            f"{_usable_range(store, cfg)}", field="init_time")
    return int(i)


def latest_init_time(store: ZarrStore, cfg: Config) -> np.datetime64:
    """The last committed time that has all its conditioning frames."""
    committed = store.committed_mask()
    for i in np.flatnonzero(committed)[::-1]:
        idx = i + _history(store, cfg)
        if idx.min() >= 0 and committed[idx].all():
            return store.all_times()[i]
    raise ForecastError(f"no usable init time: {_usable_range(store, cfg)}", field="init_time")


# -- conditioning ---------------------------------------------------------------------------------------------------


def _static(store: ZarrStore | None, cfg: Config, shape: tuple[int, int]) -> np.ndarray | None:
    names = list(cfg.data.static_fields)
    if not names:
        return None
    if store is None or tuple(store.shape[1:]) != tuple(shape):
        have = None if store is None else tuple(store.shape[1:])
        raise ForecastError(f"the model uses static fields {names}, which come from the store grid {have}; the "
                            f"conditioning grid {tuple(shape)} must be that grid", field="conditioning")
    from def_ray.data.ray_dataset import _static_fields  # the training normalisation of the static fields

    return _static_fields(store, names)


def conditioning_from_frames(fm: ForecastModel, frames: np.ndarray, norm: Normalisation,
                             store: ZarrStore | None = None) -> np.ndarray:
    """(n_past, n_vars, H, W) physical frames, oldest first -> normalised conditioning (C_cond, H, W)."""
    frames = np.asarray(frames, dtype=np.float32)
    want = (fm.config.data.n_past, len(fm.variables))
    if frames.ndim != 4 or frames.shape[:2] != want:
        raise ForecastError(f"conditioning shape {tuple(frames.shape)} must be (n_past={want[0]}, "
                            f"n_vars={want[1]} [{', '.join(fm.variables)}], y, x)", field="conditioning")
    factor = 2 ** (len(fm.config.model.channel_mults) - 1)
    if frames.shape[2] % factor or frames.shape[3] % factor:
        raise ForecastError(f"conditioning grid {frames.shape[2:]} must be a multiple of {factor} in y and x "
                            "(the network's downsampling)", field="conditioning")
    cond = norm.normalise(frames, fm.variables).reshape(-1, *frames.shape[2:])
    static = _static(store, fm.config, frames.shape[2:])
    if static is not None:
        cond = np.concatenate([cond, static.astype(np.float32)], axis=0)
    return np.ascontiguousarray(cond, dtype=np.float32)


def conditioning_from_store(fm: ForecastModel, store: ZarrStore, init_time: Any, norm: Normalisation) -> np.ndarray:
    """Normalised conditioning (C_cond, H, W) of the forecast initialised at `init_time`."""
    missing = [v for v in fm.variables if v not in store.variables]
    if missing:
        raise ForecastError(f"store {store.url} lacks the model's variables {missing}", field="init_time")
    i = check_init_time(store, fm.config, init_time)
    frames = store.read_frames(fm.variables, (i + _history(store, fm.config)).tolist())
    return conditioning_from_frames(fm, frames, norm, store)


# -- sampling -------------------------------------------------------------------------------------------------------


def sample_members(fm: ForecastModel, cond: np.ndarray, members: int, lead_steps: int, norm: Normalisation, *,
                   sampler: str, steps: int | None, seed: int, member_batch_size: int, spread_scale: float = 1.0,
                   member_offset: int = 0, eta: float = 0.0) -> np.ndarray:
    """Members member_offset .. member_offset + members - 1, physical units, (members, lead_steps, n_targets, H, W).

    The one sampling function behind the batch job's actors, the Serve replicas and ``forecast``.
    """
    import torch

    from def_ray.models.rollout import rollout

    if members < 1:
        raise ForecastError(f"members={members} must be >= 1", field="members")
    device = next(fm.model.parameters()).device
    c = torch.from_numpy(np.ascontiguousarray(cond, dtype=np.float32))[None].to(device)
    n_static = len(fm.config.data.static_fields)
    if getattr(fm.model, "kind", "diffusion") == "deterministic":
        if members != 1 or member_offset != 0:
            raise ForecastError(f"checkpoint {fm.path} holds the deterministic model: one member, not {members}",
                                field="members")
        out = rollout(fm.model, c, lead_steps, len(fm.variables), fm.target_idx, 1, n_static=n_static)
    else:
        out = rollout(fm.model, c, lead_steps, len(fm.variables), fm.target_idx, members, n_static=n_static,
                      sampler=sampler, steps=steps, seed=seed, member_batch_size=member_batch_size,
                      spread_scale=spread_scale, member_offset=member_offset, eta=eta)
    return norm.denormalise(out.detach().float().cpu().numpy(), fm.targets)


def forecast(model: Any, cfg_dict: Mapping[str, Any] | Config, store: ZarrStore, init_time: Any, members: int,
             lead_hours: int, sampler: str, steps: int | None, seed: int, member_batch_size: int,
             spread_scale: float = 1.0, member_offset: int = 0, *, normalisation: Normalisation | None = None,
             eta: float = 0.0, extra: Mapping[str, Any] | None = None) -> np.ndarray:
    """Ensemble (members, lead, n_targets, y, x) in physical units, in this process.

    `model` is a network or a ``ForecastModel``; `normalisation` defaults to the checkpoint's (`extra`) or else
    the store's statistics.
    """
    if isinstance(model, ForecastModel):
        fm = model
    else:
        cfg = cfg_dict if isinstance(cfg_dict, Config) else config_from_dict(dict(cfg_dict), "cfg_dict")
        fm = ForecastModel(model=model, config=cfg, extra=dict(extra or {}))
    norm = normalisation or normalisation_for(fm, store)
    lead_steps = lead_steps_for(lead_hours, model_step_seconds(fm.config, store))
    cond = conditioning_from_store(fm, store, init_time, norm)
    return sample_members(fm, cond, members, lead_steps, norm, sampler=sampler, steps=steps, seed=seed,
                          member_batch_size=member_batch_size, spread_scale=spread_scale,
                          member_offset=member_offset, eta=eta)


# -- the output Dataset ---------------------------------------------------------------------------------------------


def _netcdf_attr(v: Any) -> Any:
    """Attribute values netCDF and Zarr both accept: numbers, strings, flat number lists; others as JSON."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float, str, np.integer, np.floating)):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v):
        return list(v)
    return json.dumps(v, default=str)


def _projection_xy(projection: Mapping[str, Any], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    from def_ray.data.grid import LambertGrid

    names = LambertGrid.__dataclass_fields__.keys()
    if not all(k in projection for k in names):
        return None
    grid = LambertGrid(**{k: projection[k] for k in names})
    if (grid.ny, grid.nx) != tuple(shape):
        return None
    return grid.projection_xy()


def build_forecast_dataset(ens: np.ndarray, *, targets: Sequence[str], init_time: Any, step_seconds: int,
                           latitude: np.ndarray | None = None, longitude: np.ndarray | None = None,
                           projection: Mapping[str, Any] | None = None, thresholds: Sequence[float] = (),
                           quantiles: Sequence[float] = (), attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """CF Dataset of an ensemble (members, lead, n_targets, y, x).

    Per target variable V: V (member, lead_time, y, x), V_mean and V_spread (lead_time, y, x),
    V_probability (threshold, lead_time, y, x) = P(V >= threshold), V_quantile (quantile, lead_time, y, x).
    Coordinates: member, lead_time (timedelta), time (valid time, on lead_time), forecast_reference_time,
    threshold, quantile, latitude/longitude (y, x), and projection x/y in metres when the grid is known.
    """
    ens = np.asarray(ens, dtype=np.float32)
    if ens.ndim != 5 or ens.shape[2] != len(targets):
        raise ValueError(f"ensemble shape {ens.shape} must be (members, lead, {len(targets)} targets, y, x)")
    n_mem, n_lead, _, ny, nx = ens.shape
    init = np.datetime64(init_time, "ns")
    lead = (np.arange(1, n_lead + 1) * int(step_seconds)).astype("timedelta64[s]").astype("timedelta64[ns]")
    coords: dict[str, Any] = {
        "member": ("member", np.arange(n_mem, dtype=np.int32), {"long_name": "ensemble member",
                                                                 "standard_name": "realization"}),
        "lead_time": ("lead_time", lead, {"long_name": "time since forecast_reference_time",
                                          "standard_name": "forecast_period"}),
        "time": ("lead_time", init + lead, {"long_name": "valid time", "standard_name": "time"}),
        "forecast_reference_time": ((), init, {"standard_name": "forecast_reference_time"}),
    }
    if latitude is not None and longitude is not None:
        coords["latitude"] = (("y", "x"), np.asarray(latitude, dtype=np.float32),
                              {"units": "degrees_north", "standard_name": "latitude"})
        coords["longitude"] = (("y", "x"), np.asarray(longitude, dtype=np.float32),
                               {"units": "degrees_east", "standard_name": "longitude"})
    projection = dict(projection or {})
    xy = _projection_xy(projection, (ny, nx))
    if xy is not None:
        coords["x"] = ("x", xy[0], {"units": "m", "standard_name": "projection_x_coordinate"})
        coords["y"] = ("y", xy[1], {"units": "m", "standard_name": "projection_y_coordinate"})
    data_vars: dict[str, Any] = {}
    grid_mapping = None
    if projection:
        grid_mapping = "lambert_conformal"
        data_vars[grid_mapping] = ((), np.int32(0), {k: _netcdf_attr(v) for k, v in projection.items()})
    for k, name in enumerate(targets):
        meta = LEXICON.get(name)
        units = meta.units if meta is not None else ""
        long_name = meta.long_name if meta is not None else name
        base = {"units": units}  # xarray writes the CF "coordinates" attribute from the lat/lon coords
        if grid_mapping:
            base["grid_mapping"] = grid_mapping
        da = xr.DataArray(ens[:, :, k], dims=("member", "lead_time", "y", "x"), name=name)
        data_vars[name] = (da.dims, da.values, {**base, "long_name": long_name})
        data_vars[f"{name}_mean"] = (("lead_time", "y", "x"), ensemble_mean(da.values),
                                     {**base, "long_name": f"ensemble mean of {long_name}",
                                      "cell_methods": "realization: mean"})
        data_vars[f"{name}_spread"] = (("lead_time", "y", "x"), ensemble_spread(da.values),
                                       {**base, "long_name": f"ensemble standard deviation (ddof=1) of {long_name}",
                                        "cell_methods": "realization: standard_deviation"})
        if len(thresholds):
            data_vars[f"{name}_probability"] = (
                ("threshold", "lead_time", "y", "x"), exceedance_probability(da.values, thresholds),
                {**base, "units": "1", "long_name": f"probability of {name} >= threshold",
                 "threshold_units": units})
        if len(quantiles):
            data_vars[f"{name}_quantile"] = (("quantile", "lead_time", "y", "x"),
                                             ensemble_quantiles(da.values, quantiles),
                                             {**base, "long_name": f"ensemble quantiles of {long_name}"})
    if len(thresholds):
        coords["threshold"] = ("threshold", np.asarray(list(thresholds), dtype=np.float64),
                               {"long_name": "exceedance threshold (units of the variable)"})
    if len(quantiles):
        coords["quantile"] = ("quantile", np.asarray(list(quantiles), dtype=np.float64), {"units": "1"})
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(Conventions="CF-1.10", title="def_ray ensemble forecast",
                    source="def_ray conditional diffusion model (DDPM)", targets=list(targets),
                    init_time=str(np.datetime64(init_time, "s")), step_seconds=int(step_seconds))
    ds.attrs.update({k: _netcdf_attr(v) for k, v in (attrs or {}).items() if v is not None})
    return ds


def forecast_attrs(fm: ForecastModel, norm: Normalisation, *, members: int, lead_hours: int, sampler: str,
                   steps: int | None, seed: int, member_batch_size: int, spread_scale: float, eta: float = 0.0,
                   store_url: str = "") -> dict[str, Any]:
    """The attributes that let anyone regenerate a member (see ``regenerate_member``)."""
    from def_ray.models.diffusion.samplers import resolve_steps

    return {"checkpoint": fm.path, "sampler": sampler, "steps": resolve_steps(sampler, steps, fm.timesteps),
            "seed": int(seed), "members": int(members), "lead_hours": int(lead_hours),
            "member_batch_size": int(member_batch_size),
            "spread_scale": float(spread_scale), "eta": float(eta), "store": store_url,
            "n_past": fm.config.data.n_past, "dt_steps": fm.config.data.dt_steps,
            "variables": fm.variables, "normalisation": norm.to_json(), "normalisation_source": norm.source,
            "seeding": "member k draws its noise from def_ray.models.diffusion.samplers.member_generator(seed, k); "
                       "lead L > 1 uses lead_seed(seed, L - 1)",
            "model_config": json.dumps(fm.config.dump(), sort_keys=True)}


def regenerate_member(ds: xr.Dataset, member: int, *, store: ZarrStore | None = None,
                      storage_options: Mapping[str, Any] | None = None, fm: ForecastModel | None = None
                      ) -> np.ndarray:
    """Member `member` of a written forecast, sampled again from its attributes: (lead, n_targets, y, x)."""
    a = ds.attrs
    if not 0 <= member < int(a["members"]):
        raise ForecastError(f"member {member} not in 0..{int(a['members']) - 1}", field="member")
    fm = fm or load_forecast_model(a["checkpoint"], storage_options)
    store = store or ZarrStore(a["store"], storage_options)
    stats = json.loads(a["normalisation"])
    norm = Normalisation({v: s["mean"] for v, s in stats.items()}, {v: s["std"] for v, s in stats.items()},
                         a["normalisation_source"])
    out = forecast(fm, fm.config, store, np.datetime64(a["init_time"]), 1, int(a["lead_hours"]), a["sampler"],
                   int(a["steps"]),
                   int(a["seed"]), int(a["member_batch_size"]), float(a["spread_scale"]), member_offset=member,
                   normalisation=norm, eta=float(a["eta"]))
    return out[0]

