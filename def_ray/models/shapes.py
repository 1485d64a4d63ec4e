"""Checks and look-ups shared by both model kinds."""

from __future__ import annotations

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def check_batch(cond: torch.Tensor, target: torch.Tensor | None, cond_channels: int, target_channels: int) -> None:
    """Shape checks shared by both models, with messages naming the tensor and the expected channels."""
    if cond.ndim != 4 or cond.shape[1] != cond_channels:
        raise ValueError(f"cond must be (B, {cond_channels}, H, W), got {tuple(cond.shape)}")
    if target is not None:
        want = (cond.shape[0], target_channels, *cond.shape[-2:])
        if tuple(target.shape) != want:
            raise ValueError(f"target must be {want} to match cond {tuple(cond.shape)}, got {tuple(target.shape)}")
