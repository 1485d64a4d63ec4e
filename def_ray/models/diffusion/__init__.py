"""Conditional diffusion: schedule (cosine, diffusers schedulers), the model, and the ensemble samplers."""

from def_ray.models.diffusion.ddpm_convection import ConvectionDDPM
from def_ray.models.diffusion.samplers import (lead_seed, member_generator, sample_ensemble, sampler_kwargs)
from def_ray.models.diffusion.schedule import (SAMPLERS, cosine_alpha_bar, cosine_betas, sampling_scheduler,
                                               training_scheduler)

__all__ = ["ConvectionDDPM", "SAMPLERS", "cosine_alpha_bar", "cosine_betas", "lead_seed", "member_generator",
           "sample_ensemble", "sampler_kwargs", "sampling_scheduler", "training_scheduler"]
