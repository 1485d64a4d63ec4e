"""Tiny model configs and seeded synthetic scenes shared by the model tests."""

from __future__ import annotations

import torch

from def_ray.config import ModelConfig


def tiny_cfg(**overrides) -> ModelConfig:
    """The smallest UNet that still has every part: 2 levels, attention at the coarse one."""
    base = dict(base_dims=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[1], groups=4,
                attention_heads=2, timesteps=20)
    return ModelConfig(**{**base, **overrides})


def blob_windows(n: int, n_past: int = 4, n_vars: int = 2, size: int = 16, seed: int = 0):
    """Windows of moving Gaussian blobs: cond (n, n_past * n_vars, size, size), target (n, 1, size, size).

    Variable 0 is a blob drifting one pixel per step in a random direction (the target: its next position);
    variable 1 is a smooth, fixed background field.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    start = torch.rand(n, 2, generator=g) * (size / 2) + size / 4
    vel = torch.randint(-1, 2, (n, 2), generator=g).float()
    frames = []
    for k in range(n_past + 1):
        cy, cx = (start[:, 0] + k * vel[:, 0])[:, None, None], (start[:, 1] + k * vel[:, 1])[:, None, None]
        frames.append(3 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0) - 1)
    background = torch.sin(yy / 3)[None].expand(n, -1, -1)
    cond = torch.stack([torch.stack([frames[k], background], 1)[:, :n_vars] for k in range(n_past)], 1)
    return cond.reshape(n, n_past * n_vars, size, size), frames[n_past][:, None]

