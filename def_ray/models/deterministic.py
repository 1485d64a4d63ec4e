"""The seed's deterministic baseline: the UNet without noise or timestep, predicting the next step with MSE.

It regresses to the conditional mean (the blurred storm) and stays as the reference diffusion runs are scored
against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from def_ray.models.shapes import check_batch, device_of
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
        check_batch(cond, target, self.cond_channels, self.target_channels)
        return F.mse_loss(self(cond).float(), target.float())

    @torch.no_grad()
    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, C_cond, H, W) or (C_cond, H, W) -> (B, C_t, H, W), in eval mode (the module's mode is restored)."""
        if cond.ndim == 3:
            cond = cond[None]
        check_batch(cond, None, self.cond_channels, self.target_channels)
        was_training = self.training
        self.eval()
        try:
            return self(cond.to(device_of(self))).float()
        finally:
            self.train(was_training)

