"""The one place a forecast is made: checkpoint -> conditioning -> members, for every caller.

``Forecaster`` loads a checkpoint once and turns (conditioning frames from a store at an init time, or raw frames)
into members in physical units.  The batch job's actors, the Serve replicas, verification and the recipes all call
it; none of them normalises, lays out channels or sets up a sampler itself.  What it needs to know about the model
comes from the checkpoint's description (def_ray.models.description): the training split's statistics, the
variables and their order, n_past and the time step, static fields and their scaling, sampler defaults.

A forecast initialised at time t0 conditions on the ``n_past`` frames ending at t0 (t0 included), spaced by the
model step; lead k (k >= 1) is valid at t0 + k * model step, and leads beyond the first are autoregressive
(``def_ray.models.rollout``).  Member k of a forecast with seed s is a function of (checkpoint, conditioning,
sampler options, s, k) only, so disjoint member ranges sampled anywhere (``member_offset``) give the same ensemble
as one call for all members.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from def_ray.config import Config, DataConfig, SamplerConfig, config_from_dict
from def_ray.data.normalise import Normaliser, static_fields, static_scaling
from def_ray.data.zarr_store import StoreError, ZarrStore
from def_ray.models.description import ModelDescription

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) of a store's grid

__all__ = ["Box", "ForecastError", "Forecaster", "load_for_config", "resolve_checkpoint", "lead_steps_for", "check_init_time",
           "latest_init_time"]


class ForecastError(ValueError):
    """A forecast that cannot be made as asked; ``field`` names the input at fault (used by the HTTP app)."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


def resolve_checkpoint(uri: str, tracking_uri: str | None = None) -> str:
    """A local path or fsspec URL for `uri`.  MLflow URIs are downloaded first (def_ray.models.registry):
    models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest, runs:/RUN_ID/model, mlflow-artifacts:/...,
    from the tracking server `tracking_uri`, else $MLFLOW_TRACKING_URI, else training's local ./mlruns store.
    A model, version, alias or artifact that does not exist is a one-line ForecastError naming the URI."""
    from def_ray.models.registry import RegistryError, is_mlflow_uri, resolve_mlflow_uri

    if not is_mlflow_uri(uri):
        return uri
    try:
        return resolve_mlflow_uri(uri, tracking_uri)
    except RegistryError as err:
        raise ForecastError(str(err), field="model") from None


def load_for_config(uri: str, cfg: Config, what: str = "--model") -> Forecaster:
    """The checkpoint's description (a light Forecaster, no network) checked against `cfg` before any work: a folder,
    an unreadable file or a config that contradicts the checkpoint is a ForecastError naming `what`."""
    import os

    from def_ray.data.ray_dataset import resolve_storage_options
    from def_ray.models.registry import is_mlflow_uri

    source = uri
    if is_mlflow_uri(uri):
        if cfg.tracking.tracking_uri:
            # the config names the tracking server: this process's later loads of `uri` (and the processes of a
            # Ray started after this check: the batch job's actors, Serve replicas) resolve it there too
            os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking.tracking_uri
        source = resolve_checkpoint(uri, cfg.tracking.tracking_uri)
    local = uri.removeprefix("file://")
    if "://" not in local and os.path.isdir(local):
        raise ForecastError(f"{what} {uri} is a folder; expected a checkpoint file (.pt)", field="model")
    try:
        fc = Forecaster.load(source, resolve_storage_options(source, cfg.train.storage.to_fsspec()), light=True)
    except OSError as err:
        raise ForecastError(f"{what} {uri} cannot be read: {err.strerror or err}", field="model") from None
    fc.path = uri
    fc.check_config(cfg.data)
    return fc


# -- init times and leads -------------------------------------------------------------------------------------------


def lead_steps_for(lead_hours: int, step_seconds: int) -> int:
    if isinstance(lead_hours, bool) or not isinstance(lead_hours, (int, np.integer)) or lead_hours < 1:
        raise ForecastError(f"lead_hours={lead_hours!r} must be a whole number of hours >= 1", field="lead_hours")
    if (lead_hours * 3600) % step_seconds:
        raise ForecastError(f"lead_hours={lead_hours} is not a whole number of model steps of {step_seconds} s "
                            f"({step_seconds / 3600:g} h)", field="lead_hours")
    return lead_hours * 3600 // step_seconds


def _history(n_past: int, dt_steps: int) -> np.ndarray:
    """Store indices of the conditioning frames relative to the init index: -(n_past-1)*dt, ..., 0."""
    return np.arange(-(n_past - 1), 1) * dt_steps


def _usable_range(store: ZarrStore, n_past: int, dt_steps: int) -> str:
    committed = store.committed_times()
    if committed.size == 0:
        return f"the store {store.url} has no committed time steps"
    return (f"committed times of {store.url} run {committed[0]} .. {committed[-1]} ({committed.size} steps); "
            f"an init time needs n_past={n_past} committed frames {dt_steps * store.dt_seconds} s apart ending at it")


def check_init_time(store: ZarrStore, n_past: int, dt_steps: int, init_time: Any) -> int:
    """Store index of `init_time`, checked: on the axis and with its n_past conditioning frames committed."""
    try:
        t = np.datetime64(init_time, "s")
    except (TypeError, ValueError):
        raise ForecastError(f"init_time {init_time!r} is not a time", field="init_time") from None
    try:
        i = store.index_of(t)
    except StoreError as err:
        raise ForecastError(f"init_time {t}: {err}; {_usable_range(store, n_past, dt_steps)}",
                            field="init_time") from None
    idx = i + _history(n_past, dt_steps)
    committed = store.committed_mask()
    if not (idx.min() >= 0 and idx.max() < committed.size and bool(committed[idx].all())):
        raise ForecastError(f"init_time {t} is outside the store or lacks its conditioning frames: "
                            f"{_usable_range(store, n_past, dt_steps)}", field="init_time")
    return int(i)


def latest_init_time(store: ZarrStore, n_past: int, dt_steps: int) -> np.datetime64:
    """The last committed time that has all its conditioning frames."""
    committed = store.committed_mask()
    for i in np.flatnonzero(committed)[::-1]:
        idx = i + _history(n_past, dt_steps)
        if idx.min() >= 0 and committed[idx].all():
            return store.all_times()[i]
    raise ForecastError(f"no usable init time: {_usable_range(store, n_past, dt_steps)}", field="init_time")


# -- the forecaster -------------------------------------------------------------------------------------------------


class Forecaster:
    """A checkpoint loaded once; ``light`` forecasters (drivers, the Serve ingress) hold no network."""

    def __init__(self, description: ModelDescription, config: Config, *, model: Any = None, path: str = "",
                 sha256: str = ""):
        self.description, self.config, self.model, self.path, self.sha256 = description, config, model, path, sha256
        self.layout = description.layout

    @classmethod
    def load(cls, uri: str, storage_options: Mapping[str, Any] | None = None, *, device: str = "cpu",
             light: bool = False) -> Forecaster:
        """Load a checkpoint (local path, s3:// URL or MLflow URI); ``light`` reads its description only."""
        from def_ray.models.checkpoint import CheckpointError, read_checkpoint

        local = resolve_checkpoint(str(uri))
        try:
            ckpt = read_checkpoint(local, device, dict(storage_options or {}) or None, build=not light)
        except CheckpointError as err:
            raise ForecastError(str(err), field="model") from None
        cfg = config_from_dict(ckpt.config, f"checkpoint {uri}")
        if ckpt.description is not None:
            description = ModelDescription.from_dict(ckpt.description)
        else:
            description = ModelDescription.from_config(cfg)
        if description.normalisation is None:
            warnings.warn(f"checkpoint {uri} carries no training statistics (written before checkpoints described "
                          "themselves): its forecasts normalise with the statistics of the store they read, over "
                          "all its committed steps, and change as that store grows; re-export it from its "
                          "training run to fix them", UserWarning, stacklevel=2)
        return cls(description, cfg, model=ckpt.model, path=str(uri), sha256=ckpt.sha256)

    # -- what the model is ---------------------------------------------------------------------------------------
    @property
    def variables(self) -> list[str]:
        return list(self.description.variables)

    @property
    def targets(self) -> list[str]:
        return list(self.description.targets)

    @property
    def kind(self) -> str:
        return self.description.kind

    @property
    def timesteps(self) -> int:
        return int(self.description.timesteps)

    @property
    def n_past(self) -> int:
        return self.description.n_past

    @property
    def dt_steps(self) -> int:
        return self.description.dt_steps

    def check_config(self, data: DataConfig) -> None:
        """Refuse a config whose data section explicitly says otherwise than the checkpoint (unset keys are fine:
        the checkpoint is what the model is)."""
        d = self.description
        model = {"variables": list(d.variables), "target_variables": list(d.targets), "n_past": d.n_past,
                 "dt_steps": d.dt_steps, "static_fields": list(d.static_fields)}
        for key in sorted(data.model_fields_set & model.keys()):
            given = getattr(data, key)
            if (list(given) if isinstance(given, (list, tuple)) else given) != model[key]:
                raise ForecastError(f"data.{key}={given} in the config, but checkpoint {self.path} was trained with "
                                    f"{key}={model[key]}: drop the key or use the matching checkpoint", field=key)

    def normaliser(self, store: ZarrStore | None = None) -> Normaliser:
        """The checkpoint's training statistics; for old checkpoints without them, the store's (said in `source`)."""
        own = self.description.normaliser
        if own is not None:
            return own
        if store is None:
            raise ForecastError(f"checkpoint {self.path} has no normalisation statistics and no store is configured "
                                "to take them from (data.store)", field="model")
        stats = store.stats()
        missing = [v for v in self.variables if v not in stats]
        if missing:
            raise ForecastError(f"store {store.url} lacks the model's variables {missing}", field="init_time")
        return Normaliser({v: stats[v].mean for v in self.variables}, {v: stats[v].std for v in self.variables},
                          f"store statistics of {store.url} (the checkpoint carries none)")

    def step_seconds(self, store: ZarrStore | None = None) -> int:
        """Seconds between the model's frames: recorded at training, else dt_steps x the store's step (1 h)."""
        if self.description.step_seconds:
            return int(self.description.step_seconds)
        return int(self.dt_steps) * int(store.dt_seconds if store is not None else 3600)

    def lead_steps(self, lead_hours: int, store: ZarrStore | None = None) -> int:
        return lead_steps_for(lead_hours, self.step_seconds(store))

    def sampler_options(self, configured: SamplerConfig | None = None, **overrides: Any) -> SamplerConfig:
        """The checkpoint's sampler defaults, then the keys a config sets explicitly, then non-None `overrides`."""
        values = self.description.sampler_defaults().model_dump()
        if configured is not None:
            values.update(configured.model_dump(include=configured.model_fields_set))
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return SamplerConfig.model_validate(values)
        except ValueError as err:
            raise ForecastError(f"sampler options {values}: {err}", field="sampler") from None

    # -- conditioning ---------------------------------------------------------------------------------------------
    def init_time(self, store: ZarrStore, init_time: Any = None) -> np.datetime64:
        """`init_time` checked against the store, or the store's latest usable one when None."""
        if init_time is None:
            return latest_init_time(store, self.n_past, self.dt_steps)
        return store.all_times()[check_init_time(store, self.n_past, self.dt_steps, init_time)]

    def conditioning(self, store: ZarrStore, init_time: Any, normaliser: Normaliser | None = None,
                     box: Box | None = None) -> np.ndarray:
        """Normalised conditioning (C_cond, H, W) of the forecast initialised at `init_time`, on the store's grid
        or on `box` = (y0, y1, x0, x1) of it (a tile)."""
        missing = [v for v in self.variables if v not in store.variables]
        if missing:
            raise ForecastError(f"store {store.url} lacks the model's variables {missing}", field="init_time")
        i = check_init_time(store, self.n_past, self.dt_steps, init_time)
        y, x = (slice(box[0], box[1]), slice(box[2], box[3])) if box is not None else (slice(None), slice(None))
        frames = store.read_frames(self.variables, (i + _history(self.n_past, self.dt_steps)).tolist(), y, x)
        return self.conditioning_from_frames(frames, store, normaliser, box)

    def conditioning_from_frames(self, frames: np.ndarray, store: ZarrStore | None = None,
                                 normaliser: Normaliser | None = None, box: Box | None = None) -> np.ndarray:
        """(n_past, n_vars, H, W) physical frames, oldest first -> normalised conditioning (C_cond, H, W); with a
        first guess, its motion comes from these frames (as in training, from the frames of the window read)."""
        frames = np.asarray(frames, dtype=np.float32)
        want = (self.n_past, len(self.variables))
        if frames.ndim != 4 or frames.shape[:2] != want:
            raise ForecastError(f"conditioning shape {tuple(frames.shape)} must be (n_past={want[0]}, "
                                f"n_vars={want[1]} [{', '.join(self.variables)}], y, x)", field="conditioning")
        factor = 2 ** (len(self.config.model.channel_mults) - 1) * self.config.model.patch
        if frames.shape[2] % factor or frames.shape[3] % factor:
            raise ForecastError(f"conditioning grid {frames.shape[2:]} must be a multiple of {factor} in y and x "
                                "(the network's downsampling)", field="conditioning")
        norm = normaliser or self.normaliser(store)
        past = norm.normalise(frames, self.variables)
        guide = self.layout.guide(frames, past) if self.layout.first_guess else None
        return self.layout.assemble(past, self._static(store, frames.shape[2:], box), guide)

    def _static(self, store: ZarrStore | None, shape: tuple[int, ...], box: Box | None) -> np.ndarray | None:
        names = list(self.description.static_fields)
        if not names:
            return None
        grid = None if store is None else (store.shape[1:] if box is None else (box[1] - box[0], box[3] - box[2]))
        if grid is None or tuple(grid) != tuple(shape):
            raise ForecastError(f"the model uses static fields {names}, which come from the store grid {grid}; the "
                                f"conditioning grid {tuple(shape)} must be that grid", field="conditioning")
        lat, lon = store.latlon()
        if box is not None:
            lat, lon = lat[box[0]:box[1], box[2]:box[3]], lon[box[0]:box[1], box[2]:box[3]]
        scaling = self.description.static_scaling or static_scaling(lat, lon, names)
        return static_fields(lat, lon, names, scaling)

    # -- members --------------------------------------------------------------------------------------------------
    def sample(self, cond: np.ndarray, members: int, lead_steps: int, options: SamplerConfig, *, seed: int,
               member_offset: int = 0, normaliser: Normaliser | None = None) -> np.ndarray:
        """Members member_offset .. member_offset + members - 1, physical units, (members, lead, n_targets, H, W)."""
        import torch

        from def_ray.models.diffusion.samplers import sampler_kwargs
        from def_ray.models.rollout import rollout

        if self.model is None:
            raise ForecastError(f"the forecaster of {self.path} was loaded without its network (light)")
        if members < 1:
            raise ForecastError(f"members={members} must be >= 1", field="members")
        norm = normaliser or self.normaliser()
        device = next(self.model.parameters()).device
        c = torch.from_numpy(np.array(cond, dtype=np.float32, order="C"))[None].to(device)  # a copy: Ray's are read-only
        if self.kind == "deterministic":
            if members != 1 or member_offset != 0:
                raise ForecastError(f"checkpoint {self.path} holds the deterministic model: one member, not "
                                    f"{members}", field="members")
            out = rollout(self.model, c, lead_steps, self.layout, 1)
        else:
            out = rollout(self.model, c, lead_steps, self.layout, members, seed=seed, member_offset=member_offset,
                          km_per_pixel=self.description.km_per_pixel, step_minutes=self.step_seconds() / 60,
                          **sampler_kwargs(options))
        return norm.denormalise(out.detach().float().cpu().numpy(), self.targets)

    def forecast(self, store: ZarrStore, init_time: Any, members: int, lead_hours: int, options: SamplerConfig, *,
                 seed: int, member_offset: int = 0, normaliser: Normaliser | None = None,
                 box: Box | None = None) -> np.ndarray:
        """Ensemble (members, lead, n_targets, y, x) in physical units, in this process."""
        norm = normaliser or self.normaliser(store)
        lead_steps = self.lead_steps(lead_hours, store)
        cond = self.conditioning(store, init_time, norm, box)
        return self.sample(cond, members, lead_steps, options, seed=seed, member_offset=member_offset,
                           normaliser=norm)

    def provenance(self, options: SamplerConfig, *, seed: int, members: int, lead_hours: int,
                   normaliser: Normaliser, store_url: str = "") -> dict[str, Any]:
        """A forecast's attributes: which model made it, and everything needed to regenerate a member."""
        from def_ray.models.diffusion.samplers import resolve_steps

        prov = self.description.provenance
        return {"checkpoint": self.path, "checkpoint_sha256": self.sha256,
                "model_run_id": prov.get("mlflow_run_id") or "", "model_code_version": prov.get("code_version", ""),
                "model_data_period": prov.get("data_period") or "",
                "sampler": options.name, "steps": resolve_steps(options.name, options.steps, self.timesteps),
                "seed": int(seed), "members": int(members), "lead_hours": int(lead_hours),
                "member_batch_size": options.member_batch_size, "spread_scale": float(options.spread_scale),
                "eta": float(options.eta), "guidance": float(options.guidance),
                "sampler_options": options.model_dump_json(),  # all of them (matching, tiling ...): regeneration reads it
                "store": store_url, "n_past": self.n_past, "dt_steps": self.dt_steps,
                "variables": self.variables, "normalisation": normaliser.to_json(),
                "normalisation_source": normaliser.source,
                "seeding": "member k draws its noise from def_ray.models.diffusion.samplers.member_generator(seed, "
                           "k); lead L > 1 uses lead_seed(seed, L - 1)",
                "model_config": json.dumps(self.config.dump(), sort_keys=True)}
