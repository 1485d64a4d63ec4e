"""Reference nowcasts every model is scored against on the same windows: persistence and pysteps.

All take the past frames of ONE field in physical units, shape (n_past, y, x), oldest first, and return
(lead_steps, y, x) for deterministic baselines or (members, lead_steps, y, x) for ensembles.

Fields in dBZ (reflectivity) are already logarithmic and go to pysteps as they are; rain rates (mm/h) are
dB-transformed first and back afterwards, which is how STEPS is meant to be driven.
"""

from __future__ import annotations

import numpy as np

from def_ray.data.advection import Scale, from_log_scale, optical_flow, quiet_pysteps, to_log_scale

__all__ = ["Scale", "persistence", "optical_flow", "extrapolation", "steps_ensemble"]


def persistence(past: np.ndarray, lead_steps: int) -> np.ndarray:
    """The last observed frame, repeated for every lead."""
    return np.repeat(past[-1:], lead_steps, axis=0).astype("float32")


def extrapolation(past: np.ndarray, lead_steps: int, scale: Scale = "dbz", threshold: float = 10.0) -> np.ndarray:
    """Semi-Lagrangian advection of the last frame along the optical flow (pysteps)."""
    with quiet_pysteps():  # its first import prints where its configuration file is
        from pysteps import nowcasts

    field, floor, _ = to_log_scale(past, scale, threshold)
    velocity = optical_flow(past, scale, threshold)
    with quiet_pysteps():
        out = nowcasts.get_method("extrapolation")(field[-1], velocity, lead_steps)
    out = np.where(np.isfinite(out), out, floor)
    return from_log_scale(out, scale, threshold)


def steps_ensemble(past: np.ndarray, lead_steps: int, members: int, *, seed: int = 0, scale: Scale = "dbz",
                   threshold: float = 10.0, km_per_pixel: float = 3.0, timestep_minutes: float = 60.0,
                   n_cascade_levels: int | None = None) -> np.ndarray:
    """pysteps STEPS ensemble (members, lead_steps, y, x) from the last three frames and the optical flow.

    The cascade depth follows the domain size (about one level per octave of the smaller side, at most 6), so the
    method works on the small crops used in tests and on full frames alike.
    """
    with quiet_pysteps():
        from pysteps import nowcasts

    if past.shape[0] < 3:
        raise ValueError(f"STEPS needs at least 3 past frames, got {past.shape[0]}")
    field, floor, thr = to_log_scale(past, scale, threshold)
    velocity = optical_flow(past, scale, threshold)
    levels = n_cascade_levels or int(np.clip(np.log2(min(field.shape[1:])) - 1, 2, 6))
    with quiet_pysteps():
        ens = nowcasts.get_method("steps")(
            field[-3:], velocity, lead_steps, n_ens_members=members, n_cascade_levels=levels, precip_thr=thr,
            kmperpixel=km_per_pixel, timestep=timestep_minutes, seed=seed, mask_method="incremental",
            probmatching_method="cdf", num_workers=1)
    ens = np.where(np.isfinite(ens), ens, floor)
    return from_log_scale(ens, scale, threshold)
