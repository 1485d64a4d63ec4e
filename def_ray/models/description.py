"""What a trained model is, as its checkpoint tells every forecast: the one place a forecast learns its inputs.

Variables and targets in order, n_past and the time step, static fields and their scaling, the training split's
normalisation, the grid it was trained on, sampler defaults and provenance.  Written by the trainer at export
(``ModelDescription.of_training``), read back by ``def_ray.forecast.forecaster.Forecaster``; nothing a forecast needs is
re-derived from a store or a caller's config.  Checkpoints written before descriptions existed are described
from their config, without statistics (``ModelDescription.from_config``); the forecaster then says where it takes
them from.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from def_ray.config import Config, SamplerConfig
from def_ray.data.layout import ChannelLayout
from def_ray.data.normalise import Normaliser

if TYPE_CHECKING:
    from def_ray.data.ray_dataset import WindowData

__all__ = ["ModelDescription", "code_version"]

VERSION = 1


@dataclass(frozen=True)
class ModelDescription:
    kind: str
    variables: tuple[str, ...]
    targets: tuple[str, ...]
    n_past: int
    dt_steps: int
    timesteps: int
    static_fields: tuple[str, ...] = ()
    first_guess: str = "none"  # "extrapolation": residual over the advected newest frame (ChannelLayout)
    step_seconds: int | None = None  # seconds between frames; None (old checkpoints) = dt_steps x the store's step
    normalisation: dict[str, dict[str, float]] | None = None  # training split; None = not recorded
    static_scaling: dict[str, dict[str, float]] | None = None  # mean/std of each static field on the training grid
    grid: dict[str, Any] = field(default_factory=dict)  # shape [ny, nx], projection attrs, lat/lon box
    sampler: dict[str, Any] = field(default_factory=dict)  # SamplerConfig defaults, and how they were chosen
    provenance: dict[str, Any] = field(default_factory=dict)  # mlflow_run_id, data_period, code_version, store

    @property
    def layout(self) -> ChannelLayout:
        return ChannelLayout.of(self.n_past, self.variables, self.targets, self.static_fields,
                                first_guess=self.first_guess == "extrapolation")

    @property
    def normaliser(self) -> Normaliser | None:
        if self.normalisation is None:
            return None
        return Normaliser.from_dict(self.normalisation, "checkpoint (training split)").subset(self.variables)

    @property
    def km_per_pixel(self) -> float | None:
        """Grid spacing recorded at training; for older regular lat/lon checkpoints estimated from the grid's box and
        shape; else None (unknown)."""
        g = self.grid or {}
        if g.get("km_per_pixel"):
            return float(g["km_per_pixel"])
        box, shape = g.get("latlon_box"), g.get("shape")
        if not box or not shape or (g.get("projection") or {}).get("grid_mapping_name") != "latitude_longitude":
            return None
        dy = (box[1] - box[0]) / max(shape[0] - 1, 1) * 111.19
        dx = (box[3] - box[2]) / max(shape[1] - 1, 1) * 111.19 * np.cos(np.radians((box[0] + box[1]) / 2))
        return float(np.sqrt(dy * dx))

    def sampler_defaults(self) -> SamplerConfig:
        keys = SamplerConfig.model_fields
        return SamplerConfig.model_validate({k: v for k, v in self.sampler.items() if k in keys})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("variables", "targets", "static_fields"):
            out[k] = list(out[k])
        return {"version": VERSION, **out}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelDescription:
        names = cls.__dataclass_fields__.keys()
        d = {k: raw[k] for k in names if k in raw}
        for k in ("variables", "targets", "static_fields"):
            d[k] = tuple(d.get(k) or ())
        return cls(**d)

    @classmethod
    def from_config(cls, cfg: Config, **known: Any) -> ModelDescription:
        """A description from a config (an old checkpoint's, or a tiny test model's); `known` fills the rest."""
        d = cfg.data
        base = dict(kind=cfg.model.kind, variables=tuple(d.variables), targets=tuple(d.target_variables),
                    n_past=d.n_past, dt_steps=d.dt_steps, timesteps=cfg.model.timesteps,
                    static_fields=tuple(d.static_fields), first_guess=cfg.model.residual,
                    sampler={**cfg.forecast.sampler.model_dump(mode="json"), "chosen_by": "training config"})
        return cls(**{**base, **known})


    @classmethod
    def of_training(cls, cfg: Config, wd: WindowData, mlflow_run_id: str | None = None) -> ModelDescription:
        """The description of a model trained on the windows `wd` with `cfg`: the training split's statistics,
        the time step, the grid, sampler defaults and provenance."""
        from def_ray.data.grid import grid_spacing_km
        from def_ray.data.windows import window_times
        from def_ray.data.zarr_store import ZarrStore, to_datetime64

        spec = wd.spec
        store = ZarrStore(spec.url, spec.storage_options)
        lat, lon = store.latlon()
        train_t = to_datetime64(spec.times[window_times(wd.splits.train, spec.n_past, spec.dt_steps)])
        grid = {"shape": list(spec.shape), "projection": dict(store.projection),
                "latlon_box": [float(np.nanmin(lat)), float(np.nanmax(lat)), float(np.nanmin(lon)),
                               float(np.nanmax(lon))], "km_per_pixel": grid_spacing_km(lat, lon)}
        return cls.from_config(
            cfg, step_seconds=int(spec.dt_steps * store.dt_seconds), normalisation=spec.normaliser.to_dict(),
            static_scaling=dict(wd.static_scaling) or None, grid=grid,
            provenance={"mlflow_run_id": mlflow_run_id, "store": spec.url, "code_version": code_version(),
                        "data_period": f"{train_t.min()} .. {train_t.max()}", "run_name": cfg.train.run_name})

def code_version() -> str:
    """The package version and, in a git checkout, the commit (with +dirty when the tree has changes)."""
    from def_ray import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
