"""Every method to verify as one kind of function: `init_index -> (members, lead_steps, y, x)` in physical units.

The past frames come from the same store, through the same reads, for every method.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from def_ray.config import SamplerConfig
from def_ray.data.zarr_store import ZarrStore
from def_ray.verify import baselines

Forecaster = Callable[[int], np.ndarray]


def _past(store: ZarrStore, variable: str, init_index: int, n_past: int, dt_steps: int) -> np.ndarray:
    idx = [init_index - k * dt_steps for k in range(n_past - 1, -1, -1)]
    return store.read(variable, idx)


def persistence_forecaster(store: ZarrStore, variable: str, lead_steps: int, dt_steps: int = 1) -> Forecaster:
    def run(init_index: int) -> np.ndarray:
        return baselines.persistence(_past(store, variable, init_index, 1, dt_steps), lead_steps)[None]

    return run


def extrapolation_forecaster(store: ZarrStore, variable: str, lead_steps: int, n_past: int, dt_steps: int = 1,
                             scale: baselines.Scale = "dbz", threshold: float = 10.0) -> Forecaster:
    def run(init_index: int) -> np.ndarray:
        past = _past(store, variable, init_index, n_past, dt_steps)
        return baselines.extrapolation(past, lead_steps, scale=scale, threshold=threshold)[None]

    return run


def steps_forecaster(store: ZarrStore, variable: str, lead_steps: int, n_past: int, members: int, dt_steps: int = 1,
                     seed: int = 0, scale: baselines.Scale = "dbz", threshold: float = 10.0,
                     km_per_pixel: float = 3.0, timestep_minutes: float = 60.0) -> Forecaster:
    def run(init_index: int) -> np.ndarray:
        past = _past(store, variable, init_index, max(n_past, 3), dt_steps)
        return baselines.steps_ensemble(past, lead_steps, members, seed=seed + init_index, scale=scale,
                                        threshold=threshold, km_per_pixel=km_per_pixel,
                                        timestep_minutes=timestep_minutes)

    return run


def model_forecaster(model_path: str, store: ZarrStore, variable: str, lead_steps: int, members: int,
                     sampler: SamplerConfig, seed: int = 0, storage_options: dict | None = None) -> Forecaster:
    """A trained checkpoint through the forecast workflow's own sampling (members=1 for the deterministic UNet).

    Case i draws its members from seed + i, so cases are independent and each is reproducible.
    """
    from def_ray.forecast.ensemble import (conditioning_from_store, load_forecast_model, normalisation_for,
                                           sample_members)

    fm = load_forecast_model(model_path, storage_options)
    if variable not in fm.targets:
        raise ValueError(f"{model_path} predicts {fm.targets}, not {variable!r}")
    k = fm.targets.index(variable)
    norm = normalisation_for(fm, store)
    n = 1 if fm.model.kind == "deterministic" else members
    times = store.all_times()

    def run(init_index: int) -> np.ndarray:
        cond = conditioning_from_store(fm, store, times[init_index], norm)
        ens = sample_members(fm, cond, n, lead_steps, norm, sampler=sampler.name, steps=sampler.steps,
                             seed=seed + init_index, member_batch_size=sampler.member_batch_size,
                             spread_scale=sampler.spread_scale)
        return ens[:, :, k]

    return run
