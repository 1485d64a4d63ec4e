"""Forecast models: the deterministic UNet baseline and the conditional DDPM, built from a ``ModelConfig``."""

from __future__ import annotations

from typing import Union

from def_ray.models.deterministic import DeterministicForecaster
from def_ray.models.diffusion.ddpm_convection import ConvectionDDPM

ForecastModel = Union[DeterministicForecaster, ConvectionDDPM]


def build_model(model_cfg, cond_channels: int, target_channels: int) -> ForecastModel:
    """The model named by ``model_cfg.kind`` for (B, cond_channels, H, W) -> (B, target_channels, H, W)."""
    if cond_channels < 1 or target_channels < 1:
        raise ValueError(f"cond_channels={cond_channels} and target_channels={target_channels} must be >= 1")
    if model_cfg.kind == "deterministic":
        return DeterministicForecaster(model_cfg, cond_channels, target_channels)
    if model_cfg.kind == "diffusion":
        return ConvectionDDPM(model_cfg, cond_channels, target_channels)
    raise ValueError(f"unknown model kind {model_cfg.kind!r}")


__all__ = ["ConvectionDDPM", "DeterministicForecaster", "ForecastModel", "build_model"]
