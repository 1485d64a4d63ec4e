"""The channel layout of the network's conditioning, written once for training windows, forecasts and rollouts.

Conditioning channels: the ``n_past`` frames oldest first, each frame holding every variable in model order; with a
first guess, then the extrapolation first guess of each target (normalised) and the motion (u, v divided by
``motion_scale``); then the static fields.  Targets: the target variables in model order, or with a first guess
their residual over it (the network learns what extrapolation misses; ``full = first guess + residual``).

The first guess is the newest normalised frame of the targets moved one step along the Lucas-Kanade motion of the
first target's past frames (def_ray.data.advection).  A rollout keeps the motion of the init time and moves each
member's own newest frame along it for the next lead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ChannelLayout", "WIND_PAIRS"]

WIND_PAIRS = (("u10", "v10"),)  # variables that are the two components of one vector field


@dataclass(frozen=True)
class ChannelLayout:
    n_past: int
    variables: tuple[str, ...]
    targets: tuple[str, ...]
    static: tuple[str, ...] = ()
    first_guess: bool = False
    motion_scale: float = 10.0  # grid points per step that map to 1 in the conditioning

    def __post_init__(self) -> None:
        missing = [v for v in self.targets if v not in self.variables]
        if missing or self.n_past < 1:
            raise ValueError(f"layout: targets {missing} not among variables {list(self.variables)}, or "
                             f"n_past={self.n_past} < 1")

    @property
    def frame_channels(self) -> int:
        return self.n_past * len(self.variables)

    @property
    def guide_channels(self) -> int:
        return len(self.targets) + 2 if self.first_guess else 0

    @property
    def cond_channels(self) -> int:
        return self.frame_channels + self.guide_channels + len(self.static)

    @property
    def target_channels(self) -> int:
        return len(self.targets)

    @property
    def target_idx(self) -> list[int]:
        """Position within a frame of each target variable."""
        return [self.variables.index(v) for v in self.targets]

    @property
    def vector_channels(self) -> list[tuple[int, int]]:
        """(u, v) channel pairs of the conditioning: wind components of every frame, and the motion."""
        pairs = [(t * len(self.variables) + self.variables.index(u), t * len(self.variables) + self.variables.index(v))
                 for u, v in WIND_PAIRS if u in self.variables and v in self.variables for t in range(self.n_past)]
        if self.first_guess:
            m = self.frame_channels + len(self.targets)
            pairs.append((m, m + 1))
        return pairs

    @property
    def target_vector_channels(self) -> list[tuple[int, int]]:
        """(u, v) channel pairs among the targets."""
        return [(self.targets.index(u), self.targets.index(v)) for u, v in WIND_PAIRS
                if u in self.targets and v in self.targets]

    # -- building the conditioning -------------------------------------------------------------------------------
    def guide(self, past_physical: np.ndarray, past_normalised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first guess (n_targets, H, W) normalised, motion (2, H, W) in grid points per step) from the past frames
        (n_past, n_vars, H, W), physical and normalised."""
        import torch

        from def_ray.data.advection import advect, estimate_motion

        k0 = self.target_idx[0]
        motion = estimate_motion(np.asarray(past_physical)[:, k0], self.targets[0])
        newest = torch.from_numpy(np.ascontiguousarray(past_normalised[-1, self.target_idx], dtype=np.float32))
        fg = advect(newest[None], torch.from_numpy(motion)[None])[0].numpy()
        return fg, motion

    def assemble(self, frames: np.ndarray, static: np.ndarray | None = None,
                 guide: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Normalised frames (n_past, n_vars, H, W) [+ guide (first guess, motion)] [+ static (n_static, H, W)]
        -> conditioning (C, H, W)."""
        frames = np.asarray(frames, dtype=np.float32)
        want = (self.n_past, len(self.variables))
        if frames.ndim != 4 or frames.shape[:2] != want:
            raise ValueError(f"frames {tuple(frames.shape)} are not (n_past={want[0]}, n_vars={want[1]}, y, x)")
        parts = [frames.reshape(-1, *frames.shape[2:])]
        if self.first_guess:
            if guide is None:
                raise ValueError("the layout has a first guess: pass guide=(first guess, motion)")
            fg, motion = guide
            parts += [np.asarray(fg, np.float32), np.asarray(motion, np.float32) / np.float32(self.motion_scale)]
        if self.static:
            if static is None or static.shape[0] != len(self.static):
                raise ValueError(f"the layout has static fields {list(self.static)}; got "
                                 f"{None if static is None else static.shape[0]} static channels")
            parts.append(np.asarray(static, dtype=np.float32))
        return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)

    def check(self, channels: int) -> None:
        if channels != self.cond_channels:
            raise ValueError(f"cond has {channels} channels: not n_past ({self.n_past}) * n_vars "
                             f"({len(self.variables)}) + first guess ({self.guide_channels}) + n_static "
                             f"({len(self.static)}) = {self.cond_channels}")

    # -- reading it back (torch, (m, C, H, W)) --------------------------------------------------------------------
    def newest_targets(self, cond: Any) -> Any:
        """The target channels of the newest past frame, (m, n_targets, H, W)."""
        start = self.frame_channels - len(self.variables)
        return cond[:, [start + k for k in self.target_idx]]

    def first_guess_of(self, cond: Any) -> Any:
        return cond[:, self.frame_channels:self.frame_channels + len(self.targets)]

    def motion_of(self, cond: Any) -> Any:
        m = self.frame_channels + len(self.targets)
        return cond[:, m:m + 2] * self.motion_scale

    def advance(self, cond: Any, new: Any) -> Any:
        """The next autoregressive step's conditioning: drop the oldest frame and append the newest known frame
        with its target channels replaced by ``new`` (m, n_targets, H, W; full fields, not residuals); the other
        variables persist, the first guess becomes ``new`` moved along the init time's motion, static fields stay."""
        import torch

        from def_ray.data.advection import advect

        m, _, h, w = cond.shape
        frames = cond[:, : self.frame_channels].reshape(m, self.n_past, len(self.variables), h, w)
        latest = frames[:, -1].clone()
        latest[:, self.target_idx] = new.to(latest.dtype)
        frames = torch.cat([frames[:, 1:], latest[:, None]], dim=1).reshape(m, self.frame_channels, h, w)
        rest = cond[:, self.frame_channels:]
        if self.first_guess:
            nt = len(self.targets)
            fg = advect(new.to(cond.dtype), self.motion_of(cond))
            rest = torch.cat([fg, rest[:, nt:]], dim=1)
        return torch.cat([frames, rest], dim=1)

    @classmethod
    def of(cls, n_past: int, variables: Sequence[str], targets: Sequence[str], static: Sequence[str] = (),
           first_guess: bool = False) -> ChannelLayout:
        return cls(int(n_past), tuple(variables), tuple(targets), tuple(static), bool(first_guess))

