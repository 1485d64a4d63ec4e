"""Which windows exist, and which split each belongs to (pure numpy, no I/O).

A window starting at store index ``s`` reads the frames ``s, s + dt, ..., s + (n_past - 1) * dt`` as the condition
and ``s + n_past * dt`` as the target, so it spans ``n_past * dt + 1`` store indices.  It is valid only if every
one of its frames is committed.

Splits are by time: train (oldest) | gap | validation | gap | test (newest).  The fractions are fractions of the
committed steps; each gap of ``gap`` store indices is taken from the end of the split before it and belongs to no
window, so a window of one split never shares a time with, nor (for gap >= 1) touches, a window of another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WindowError", "Splits", "frame_offsets", "valid_starts", "split_windows", "window_times"]


class WindowError(ValueError):
    """The store cannot provide the windows a config asks for; the message says why and with which numbers."""


def frame_offsets(n_past: int, dt_steps: int) -> np.ndarray:
    """Offsets from the window start of the n_past condition frames followed by the target frame."""
    if n_past < 1 or dt_steps < 1:
        raise WindowError(f"n_past={n_past} and dt_steps={dt_steps} must both be >= 1")
    return np.arange(n_past + 1, dtype=np.int64) * dt_steps


def valid_starts(committed: np.ndarray, n_past: int, dt_steps: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Start indices of windows lying in [lo, hi) whose frames are all committed, ascending."""
    committed = np.asarray(committed, dtype=bool)
    hi = committed.size if hi is None else min(hi, committed.size)
    offsets = frame_offsets(n_past, dt_steps)
    last_start = hi - 1 - int(offsets[-1])
    if last_start < lo:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(max(lo, 0), last_start + 1, dtype=np.int64)
    ok = np.all(committed[starts[:, None] + offsets[None, :]], axis=1)
    return starts[ok]


def window_times(starts: np.ndarray, n_past: int, dt_steps: int) -> np.ndarray:
    """Sorted unique store indices read by the given windows (condition and target frames)."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size == 0:
        return starts
    return np.unique((starts[:, None] + frame_offsets(n_past, dt_steps)[None, :]).ravel())


@dataclass(frozen=True)
class Splits:
    """Window start indices of each split and the [lo, hi) store-index range each split may use."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ranges: dict[str, tuple[int, int]]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r} (train, val, test)")
        return getattr(self, name)


def split_windows(committed: np.ndarray, n_past: int, dt_steps: int, val_fraction: float, test_fraction: float,
                  gap: int) -> Splits:
    """Time-ordered train / val / test windows separated by `gap` store indices.

    Raises WindowError when a split with a non-zero fraction (and always train) would have no window.
    """
    committed = np.asarray(committed, dtype=bool)
    if gap < 0:
        raise WindowError(f"gap={gap} must be >= 0")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise WindowError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each in [0, 1), sum < 1")
    idx = np.flatnonzero(committed)
    n = idx.size
    span = n_past * dt_steps + 1
    if n == 0:
        raise WindowError("the store has no committed time steps")
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    end = int(idx[-1]) + 1
    test_lo = int(idx[n - n_test]) if n_test else end
    val_lo = int(idx[n - n_test - n_val]) if n_val and n - n_test - n_val >= 0 else test_lo
    ranges = {
        "train": (0, (val_lo if n_val else test_lo if n_test else end) - (gap if (n_val or n_test) else 0)),
        "val": (val_lo, test_lo - (gap if n_test else 0)) if n_val else (val_lo, val_lo),
        "test": (test_lo, end),
    }
    out = {k: valid_starts(committed, n_past, dt_steps, lo, hi) for k, (lo, hi) in ranges.items()}
    for name, frac in (("train", 1.0), ("val", val_fraction), ("test", test_fraction)):
        if frac > 0 and out[name].size == 0:
            lo, hi = ranges[name]
            raise WindowError(
                f"split {name!r} has no complete window: it may use store indices [{lo}, {hi}) of {committed.size} "
                f"({n} committed), a window spans {span} indices (n_past={n_past}, dt_steps={dt_steps}) and splits "
                f"are separated by gap={gap}; ingest more steps or lower data.val_fraction/test_fraction/gap_steps")
    return Splits(train=out["train"], val=out["val"], test=out["test"], ranges=ranges)
