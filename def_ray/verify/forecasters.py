"""Every method to verify as one kind of function: `(init_index, box) -> (members, lead_steps, y, x)` in physical
units, on the whole grid (box None) or on the tile box = (y0, y1, x0, x1).

The past frames come from the same store, through the same reads, for every method; on a tile, every method sees
only the tile (its own motion estimate included), as it would when forecasting that tile alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from def_ray.config import DataConfig, SamplerConfig
from def_ray.data.zarr_store import ZarrStore
from def_ray.verify import baselines

Box = tuple[int, int, int, int]
CaseForecaster = Callable[[int, "Box | None"], np.ndarray]


def _past(store: ZarrStore, variable: str, init_index: int, n_past: int, dt_steps: int,
          box: Box | None) -> np.ndarray:
    idx = [init_index - k * dt_steps for k in range(n_past - 1, -1, -1)]
    if box is None:
        return store.read(variable, idx)
    return store.read(variable, idx, slice(box[0], box[1]), slice(box[2], box[3]))


def persistence_forecaster(store: ZarrStore, variable: str, lead_steps: int,
                           dt_steps: int = 1) -> CaseForecaster:
    def run(init_index: int, box: Box | None = None) -> np.ndarray:
        return baselines.persistence(_past(store, variable, init_index, 1, dt_steps, box), lead_steps)[None]

    return run


def extrapolation_forecaster(store: ZarrStore, variable: str, lead_steps: int, n_past: int, dt_steps: int = 1,
                             scale: baselines.Scale = "dbz", threshold: float = 10.0) -> CaseForecaster:
    def run(init_index: int, box: Box | None = None) -> np.ndarray:
        past = _past(store, variable, init_index, n_past, dt_steps, box)
        return baselines.extrapolation(past, lead_steps, scale=scale, threshold=threshold)[None]

    return run


def steps_forecaster(store: ZarrStore, variable: str, lead_steps: int, n_past: int, members: int, dt_steps: int = 1,
                     seed: int = 0, scale: baselines.Scale = "dbz", threshold: float = 10.0,
                     km_per_pixel: float = 3.0, timestep_minutes: float = 60.0) -> CaseForecaster:
    def run(init_index: int, box: Box | None = None) -> np.ndarray:
        past = _past(store, variable, init_index, max(n_past, 3), dt_steps, box)
        return baselines.steps_ensemble(past, lead_steps, members, seed=seed + init_index, scale=scale,
                                        threshold=threshold, km_per_pixel=km_per_pixel,
                                        timestep_minutes=timestep_minutes)

    return run


def model_forecaster(model_uri: str, store: ZarrStore, variable: str, lead_steps: int, members: int,
                     sampler: SamplerConfig, seed: int = 0, storage_options: dict | None = None,
                     data: DataConfig | None = None) -> CaseForecaster:
    """A trained checkpoint through the one forecaster (members=1 for the deterministic UNet), with the sampler
    options every other caller gets for the same config (``Forecaster.sampler_options``).

    Case i draws its members from seed + i, so cases are independent and each is reproducible: the batch job run
    with that seed at that init time gives the same members.
    """
    from def_ray.forecast.forecaster import Forecaster

    fc = Forecaster.load(model_uri, storage_options)
    if data is not None:
        fc.check_config(data)
    if variable not in fc.targets:
        raise ValueError(f"{model_uri} predicts {fc.targets}, not {variable!r}")
    k = fc.targets.index(variable)
    norm = fc.normaliser(store)
    options = fc.sampler_options(sampler)
    n = 1 if fc.kind == "deterministic" else members
    times = store.all_times()

    def run(init_index: int, box: Box | None = None) -> np.ndarray:
        cond = fc.conditioning(store, times[init_index], norm, box)
        ens = fc.sample(cond, n, lead_steps, options, seed=seed + init_index, normaliser=norm)
        return ens[:, :, k]

    return run
