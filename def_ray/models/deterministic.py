"""The seed's deterministic baseline: the UNet without noise or timestep, predicting the next step with MSE.

It regresses to the conditional mean (the blurred storm) and stays as the reference diffusion runs are scored
against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from def_ray.models.unet import unet_from_config


class DeterministicForecaster(nn.Module):
    kind = "deterministic"

    def __init__(self, model_cfg, cond_channels: int, target_channels: int):
        super().__init__()
        self.cond_channels, self.target_channels = cond_channels, target_channels
        self.net = unet_from_config(model_cfg, cond_channels, target_channels, time_embedding=False)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)

    def training_loss(self, cond: torch.Tensor, target: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE of the direct prediction (``generator`` is accepted for a common interface; nothing is random)."""
        _check(cond, target, self.cond_channels, self.target_channels)
        return F.mse_loss(self(cond).float(), target.float())

    @torch.no_grad()
    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, C_cond, H, W) or (C_cond, H, W) -> (B, C_t, H, W), in eval mode (the module's mode is restored)."""
        if cond.ndim == 3:
            cond = cond[None]
        _check(cond, None, self.cond_channels, self.target_channels)
        was_training = self.training
        self.eval()
        try:
            return self(cond.to(_device(self))).float()
        finally:
            self.train(was_training)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _check(cond: torch.Tensor, target: torch.Tensor | None, cond_channels: int, target_channels: int) -> None:
    """Shape checks shared by both models, with messages naming the tensor and the expected channels."""
    if cond.ndim != 4 or cond.shape[1] != cond_channels:
        raise ValueError(f"cond must be (B, {cond_channels}, H, W), got {tuple(cond.shape)}")
    if target is not None:
        want = (cond.shape[0], target_channels, *cond.shape[-2:])
        if tuple(target.shape) != want:
            raise ValueError(f"target must be {want} to match cond {tuple(cond.shape)}, got {tuple(target.shape)}")
