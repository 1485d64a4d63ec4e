"""Motion from past frames and semi-Lagrangian advection: the extrapolation first guess of the residual model.

The motion is pysteps' Lucas-Kanade optical flow, in grid points per time step: channel 0 along x (columns),
channel 1 along y (rows), the convention of pysteps (its extrapolation moves a field forward along it).  Rain is
dB-transformed before the flow is estimated (as pysteps is meant to be driven), reflectivity (dBZ) is used as it is.
``advect`` moves a field one step forward along the motion by backward (semi-Lagrangian) bilinear sampling in
torch, so training windows, forecasts and every lead of a rollout (members batched, on any device) use the same
code.  ``dihedral`` rotates and flips a window and turns the motion vectors with it (data augmentation).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Literal

import numpy as np

from def_ray.data.lexicon import lookup

__all__ = ["Scale", "quiet_pysteps", "to_log_scale", "from_log_scale", "optical_flow", "estimate_motion", "advect",
           "dihedral"]

Scale = Literal["dbz", "rainrate"]


def quiet_pysteps():
    """pysteps prints progress tables; keep job logs readable."""
    return contextlib.redirect_stdout(io.StringIO())


def to_log_scale(past: np.ndarray, scale: Scale, threshold: float) -> tuple[np.ndarray, float, float]:
    """(field on a log scale with NaN filled, the no-rain value, the threshold on that scale)."""
    with quiet_pysteps():  # its first import prints where its configuration file is
        from pysteps.utils import transformation

    field = np.asarray(past, dtype="float64")
    if scale == "rainrate":
        field, meta = transformation.dB_transform(np.nan_to_num(field, nan=0.0), threshold=threshold, zerovalue=None)
        return field, float(meta["zerovalue"]), float(meta["threshold"])
    floor = float(np.nanmin(field)) if np.isfinite(field).any() else 0.0
    return np.nan_to_num(field, nan=floor), floor, threshold


def from_log_scale(field: np.ndarray, scale: Scale, threshold: float) -> np.ndarray:
    with quiet_pysteps():  # its first import prints where its configuration file is
        from pysteps.utils import transformation

    field = np.asarray(field, dtype="float64")
    if scale == "rainrate":
        field, _ = transformation.dB_transform(field, metadata={"transform": "dB", "threshold": threshold,
                                                                "zerovalue": np.nanmin(field)}, inverse=True)
    return field.astype("float32")


def optical_flow(past: np.ndarray, scale: Scale = "dbz", threshold: float = 10.0) -> np.ndarray:
    """Lucas-Kanade motion field (2, y, x) float32 in grid points per step, from at least two past frames."""
    import warnings

    with quiet_pysteps():
        from pysteps import motion

    field, _, _ = to_log_scale(past, scale, threshold)
    with quiet_pysteps(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Singular matrix during outlier detection")
        flow = motion.get_method("LK")(field, interp_kwargs={"nchunks": 1})  # see estimate_motion: call-order free
    return np.nan_to_num(np.asarray(flow, dtype=np.float32))


def estimate_motion(past: np.ndarray, variable: str, stride: int = 8) -> np.ndarray:
    """The first guess's motion (2, y, x) from the past frames (n, y, x) of `variable` in physical units, oldest
    first: pysteps' Lucas-Kanade vectors, declustered as pysteps does, interpolated (inverse distance, as pysteps)
    on every `stride`-th point only and bilinearly in between.  The motion field is smooth, and the interpolation
    onto every point was 2/3 of the cost of a training window."""
    import warnings

    from scipy.ndimage import map_coordinates

    with quiet_pysteps():
        from pysteps import motion
        from pysteps.utils.cleansing import decluster
        from pysteps.utils.interpolate import idwinterp2d

    scale, threshold = ("rainrate", 0.1) if lookup(variable).precipitation else ("dbz", 10.0)
    field, _, _ = to_log_scale(past, scale, threshold)
    h, w = field.shape[-2:]
    with quiet_pysteps(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Singular matrix during outlier detection")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        xy, uv = motion.get_method("LK")(field, dense=False)
        if xy.shape[0]:
            xy, uv = decluster(xy, uv, 20, 1)
    if xy.shape[0] == 0:
        return np.zeros((2, h, w), np.float32)
    ys, xs = (np.unique(np.r_[np.arange(0, n, stride), n - 1]) for n in (h, w))
    # nchunks=1 always: pysteps' interpolator wrapper keeps its chunk count between calls (4, then 2, then 1: the
    # first call of a process splits the grid and scales distances per chunk), so without it the first window a
    # process reads got another motion than every later one
    coarse = idwinterp2d(xy, uv, xs, ys, nchunks=1)  # (2, len(ys), len(xs))
    rows = np.interp(np.arange(h), ys, np.arange(ys.size))
    cols = np.interp(np.arange(w), xs, np.arange(xs.size))
    grid = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([map_coordinates(c, grid, order=1) for c in coarse]).astype(np.float32)


def motion_perturbation(motion: np.ndarray, seed: int, lead_minutes: float, km_per_pixel: float,
                        step_minutes: float) -> np.ndarray:
    """(2, H, W) perturbation, in grid points per step, of `motion` (u, v; 2, H, W) at `lead_minutes`.

    pysteps' Bowler-Pierce-Seed (2006) perturbations with their published parameters, as STEPS uses them: one
    Laplace-distributed draw along and one across the local motion per `seed` (one member), scaled by a standard
    deviation in km/h that grows with lead time.
    """
    from pysteps.noise.motion import generate_bps, initialize_bps

    state = np.random.RandomState(int(seed) & (2**32 - 1))
    perturbator = initialize_bps(np.asarray(motion, dtype=np.float64), 1.0 / km_per_pixel, step_minutes,
                                 randstate=state)
    return np.asarray(generate_bps(perturbator, lead_minutes), dtype=np.float32)


def advect(field, motion, steps: int = 1):
    """`field` (B, C, H, W) moved `steps` time steps forward along `motion` (B, 2, H, W) [torch tensors].

    Backward sampling: out(y, x) = in(y - v, x - u), bilinear, edges continued from the border.
    """
    import torch
    import torch.nn.functional as F

    b, _, h, w = field.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=field.device),
                            torch.arange(w, dtype=torch.float32, device=field.device), indexing="ij")
    m = motion.to(torch.float32)
    gx = 2 * (xs - m[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys - m[:, 1]) / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)
    out = field.to(torch.float32)
    for _ in range(steps):
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(field.dtype)


def dihedral(arr: np.ndarray, k: int, flip: bool, vectors: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """One of the 8 rotations/flips of the last two axes of `arr` (..., C, H, W) or (C, H, W): flip along x if
    `flip`, then rotate by k quarter turns (np.rot90 over (y, x)).  `vectors` = the channel indices (u, v) of each
    motion or wind field, whose components turn with the grid so that the motion still points where things move.
    """
    out = np.flip(arr, axis=-1) if flip else arr
    out = np.rot90(out, k % 4, axes=(-2, -1))
    out = np.ascontiguousarray(out)
    for iu, iv in vectors:
        u, v = out[..., iu, :, :].copy(), out[..., iv, :, :].copy()
        if flip:
            u = -u
        for _ in range(k % 4):  # a quarter turn of the grid (y, x) -> (x', y') maps (u, v) to (v, -u)
            u, v = v, -u
        out[..., iu, :, :], out[..., iv, :, :] = u, v
    return out
