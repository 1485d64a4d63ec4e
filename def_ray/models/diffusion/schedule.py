"""The cosine noise schedule (Nichol & Dhariwal 2021) and the diffusers schedulers built on it.

The training scheduler is diffusers' ``DDPMScheduler(beta_schedule="squaredcos_cap_v2")``; every sampling
scheduler is built from *its* betas (``trained_betas``), so training and all samplers share one schedule.
``cosine_alpha_bar`` / ``cosine_betas`` are the closed form, kept to test diffusers against.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SamplerName = Literal["ddpm", "ddim", "dpmpp"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp")
COSINE_S = 0.008  # Nichol & Dhariwal's offset: keeps beta_1 from being vanishingly small
MAX_BETA = 0.999  # their clip, avoids the singularity at t = T


def cosine_alpha_bar(t_frac: np.ndarray | float, s: float = COSINE_S) -> np.ndarray:
    """alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2) / cos^2((s/(1 + s)) pi/2), with t_frac = t/T in [0, 1]."""
    f = lambda u: np.cos((np.asarray(u, dtype=np.float64) + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t_frac) / f(0.0)


def cosine_betas(timesteps: int, s: float = COSINE_S, max_beta: float = MAX_BETA) -> np.ndarray:
    """beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), max_beta) for t = 0..T-1 (float64)."""
    if timesteps < 2:
        raise ValueError(f"diffusion timesteps must be >= 2, got {timesteps}")
    i = np.arange(timesteps, dtype=np.float64)
    ratio = cosine_alpha_bar((i + 1) / timesteps, s) / cosine_alpha_bar(i / timesteps, s)
    return np.minimum(1.0 - ratio, max_beta)


def training_scheduler(timesteps: int) -> DDPMScheduler:
    """The faithful DDPM: cosine betas, epsilon prediction, no clipping (fields are normalised, not in [-1, 1])."""
    if timesteps < 2:
        raise ValueError(f"diffusion timesteps must be >= 2, got {timesteps}")
    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=False)


def sampling_scheduler(name: str, timesteps: int) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """A fresh (stateful) scheduler for one batch of members, on the training betas.

    "ddpm" is ancestral DDPM written as DDIM with eta = 1 over every timestep: with eta = 1 and consecutive
    timesteps DDIM's variance is DDPM's posterior variance ("fixed_small") and its mean the posterior mean, and
    DDIMScheduler takes the step noise as an argument (``variance_noise``) so each member draws it from its own
    generator and the spread can be scaled. tests/models/diffusion/test_schedule.py checks it step by step against
    ``DDPMScheduler.step``. Fewer steps with "ddpm" give strided ancestral sampling.
    """
    betas = training_scheduler(timesteps).betas.numpy()
    common = dict(num_train_timesteps=timesteps, trained_betas=betas, prediction_type="epsilon")
    if name in ("ddpm", "ddim"):
        # trailing spacing starts at t = T-1 whatever the step count; with steps = T it is every timestep
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "dpmpp":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           lower_order_final=True)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
