"""The channel layout of the network's conditioning, written once for training windows, forecasts and rollouts.

Conditioning channels: the ``n_past`` frames oldest first, each frame holding every variable in model order, then
the static fields.  Targets: the target variables, in model order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ChannelLayout"]


@dataclass(frozen=True)
class ChannelLayout:
    n_past: int
    variables: tuple[str, ...]
    targets: tuple[str, ...]
    static: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = [v for v in self.targets if v not in self.variables]
        if missing or self.n_past < 1:
            raise ValueError(f"layout: targets {missing} not among variables {list(self.variables)}, or "
                             f"n_past={self.n_past} < 1")

    @property
    def frame_channels(self) -> int:
        return self.n_past * len(self.variables)

    @property
    def cond_channels(self) -> int:
        return self.frame_channels + len(self.static)

    @property
    def target_channels(self) -> int:
        return len(self.targets)

    @property
    def target_idx(self) -> list[int]:
        """Position within a frame of each target variable."""
        return [self.variables.index(v) for v in self.targets]

    def assemble(self, frames: np.ndarray, static: np.ndarray | None = None) -> np.ndarray:
        """Normalised frames (n_past, n_vars, H, W) [+ static (n_static, H, W)] -> conditioning (C, H, W)."""
        frames = np.asarray(frames, dtype=np.float32)
        want = (self.n_past, len(self.variables))
        if frames.ndim != 4 or frames.shape[:2] != want:
            raise ValueError(f"frames {tuple(frames.shape)} are not (n_past={want[0]}, n_vars={want[1]}, y, x)")
        cond = frames.reshape(-1, *frames.shape[2:])
        if self.static:
            if static is None or static.shape[0] != len(self.static):
                raise ValueError(f"the layout has static fields {list(self.static)}; got "
                                 f"{None if static is None else static.shape[0]} static channels")
            cond = np.concatenate([cond, np.asarray(static, dtype=np.float32)], axis=0)
        return np.ascontiguousarray(cond, dtype=np.float32)

    def check(self, channels: int) -> None:
        if channels != self.cond_channels:
            raise ValueError(f"cond has {channels} channels: not n_past ({self.n_past}) * n_vars "
                             f"({len(self.variables)}) + n_static ({len(self.static)}) = {self.cond_channels}")

    def advance(self, cond: Any, new: Any) -> Any:
        """The next autoregressive step's conditioning (torch, (m, C, H, W)): drop the oldest frame and append the
        newest known frame with its target channels replaced by ``new`` (m, n_targets, H, W); the other variables
        persist and the static fields stay."""
        import torch

        m, _, h, w = cond.shape
        frames = cond[:, : self.frame_channels].reshape(m, self.n_past, len(self.variables), h, w)
        latest = frames[:, -1].clone()
        latest[:, self.target_idx] = new.to(latest.dtype)
        frames = torch.cat([frames[:, 1:], latest[:, None]], dim=1).reshape(m, self.frame_channels, h, w)
        return torch.cat([frames, cond[:, self.frame_channels:]], dim=1)

    @classmethod
    def of(cls, n_past: int, variables: Sequence[str], targets: Sequence[str],
           static: Sequence[str] = ()) -> ChannelLayout:
        return cls(int(n_past), tuple(variables), tuple(targets), tuple(static))
