"""ConvectionDDPM: the faithful conditional DDPM of the seed.

epsilon-prediction on the cosine schedule with T steps; loss = MSE(eps_hat, eps) at timesteps drawn uniformly
from 0..T-1, nothing weather-specific. The network sees the noisy target channels concatenated with the
conditioning (past frames, then static fields).

Output parametrisation (``model_cfg.eps_output``). The cosine schedule clips its last beta at 0.999, so
alpha_bar(T-1) is about 2e-7 and the first sampling step multiplies any error of eps_hat by about 30 (ancestral)
or more (fast samplers' longer first jump); a small network with a slightly shrunk eps_hat there sends every
member to values of 100s of standard deviations. Measured on the known-answer problem of
tests/models/diffusion/test_samplers.py after 400-800 training steps: with "direct", every member of all three
samplers ended at 100s-1000s of SIG; with "preconditioned", means within 0.4 SIG and spreads within 5 %.
"preconditioned" (default) writes the prediction as
    eps_hat = sqrt(1 - ab_t) * x_t - sqrt(ab_t) * F(x_t, cond, t)
which is the exact noise predictor for zero-mean unit-variance data when F = 0 (our fields are normalised) and
damps the network's error by sqrt(ab_t) where ab_t -> 0 (F is then, up to sign, the "v" of v-prediction). It is
still noise prediction with the plain loss MSE(eps_hat, eps), and the samplers consume eps_hat unchanged. "direct"
(eps_hat = F) is the textbook form, kept for comparison.

Condition dropout and guidance (DEF, Millard et al. 2025): with ``model_cfg.cond_dropout`` = p, training zeroes
the whole conditioning of a sample with probability p, so the network also learns the unconditional noise
prediction; sampling with guidance scale w uses eps_u + w (eps_c - eps_u) (samplers.sample_ensemble), which sets the
size of the perturbations.

Loss weighting (``model_cfg.loss_weighting``). With the preconditioned output, eps_hat - eps = -sqrt(ab_t) (F - F*)
and the denoised estimate is x0_hat = sqrt(ab_t) x_t + sqrt(1 - ab_t) F, so at high noise F *is* the x0 estimate
that places and sizes the cells, yet the plain loss ("eps") weights its error by ab_t -> 0 there. "v" divides the
per-timestep loss by ab_t: uniform weight on F at every t, the v-prediction objective (Salimans & Ho 2022).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from def_ray.models.shapes import check_batch, device_of
from def_ray.models.diffusion.samplers import sample_ensemble
from def_ray.models.diffusion.schedule import training_scheduler
from def_ray.models.unet import unet_from_config


class ConvectionDDPM(nn.Module):
    kind = "diffusion"

    def __init__(self, model_cfg, cond_channels: int, target_channels: int):
        super().__init__()
        self.cond_channels, self.target_channels = cond_channels, target_channels
        self.timesteps = model_cfg.timesteps
        self.eps_output = model_cfg.eps_output
        self.loss_weighting = model_cfg.loss_weighting
        self.cond_dropout = float(getattr(model_cfg, "cond_dropout", 0.0))
        self.net = unet_from_config(model_cfg, target_channels + cond_channels, target_channels, time_embedding=True)
        alphas_cumprod = training_scheduler(self.timesteps).alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)  # rebuilt from T, not saved

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise for noisy targets x_t at timesteps t (one value or one per sample)."""
        out = self.net(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t)
        if self.eps_output == "direct":
            return out
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        ab = self.alphas_cumprod.to(x_t.device)[t].reshape(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x_t.float() - ab.sqrt() * out.float()

    def training_loss(self, cond: torch.Tensor, target: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE(eps_hat, eps), weighted per timestep by ``loss_weighting``; t and eps come from ``generator`` (drawn
        on its device, then moved) when given."""
        check_batch(cond, target, self.cond_channels, self.target_channels)
        device = target.device
        gen_device = generator.device if generator is not None else device
        b = target.shape[0]
        t = torch.randint(0, self.timesteps, (b,), generator=generator, device=gen_device).to(device)
        eps = torch.randn(target.shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)
        if self.training and self.cond_dropout > 0:  # DEF: learn the unconditional model too (guidance)
            keep = torch.rand(b, generator=generator, device=gen_device).to(device) >= self.cond_dropout
            cond = cond * keep[:, None, None, None].to(cond.dtype)
        ab = self.alphas_cumprod.to(device)[t][:, None, None, None]
        x_t = ab.sqrt() * target.float() + (1 - ab).sqrt() * eps
        err = (self(x_t, t, cond).float() - eps) ** 2
        if self.loss_weighting == "v":
            err = err / ab  # = (F - F*)^2 for the preconditioned output
        return err.mean()

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, members: int, sampler: str = "dpmpp", steps: int | None = None,
               seed: int = 0, member_batch_size: int | Literal["auto"] = 10, spread_scale: float = 1.0,
               member_offset: int = 0, eta: float = 0.0, guidance: float = 1.0, tile: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """An ensemble (members, C_t, H, W); see ``samplers.sample_ensemble`` for seeds, steps, spread_scale and
        tiling.

        ``cond``: (C_cond, H, W) or (1, C_cond, H, W) for all members, or (members, C_cond, H, W), one per member.
        Runs in eval mode (the module's mode is restored).
        """
        c = cond[None] if cond.ndim == 3 else cond
        check_batch(c, None, self.cond_channels, self.target_channels)
        if guidance != 1.0 and self.cond_dropout == 0:
            raise ValueError(f"guidance={guidance} needs a model trained with model.cond_dropout > 0 (it has no "
                             "unconditional model to guide against)")
        was_training = self.training
        self.eval()
        try:
            return sample_ensemble(self, self.timesteps, c.to(device_of(self)), members, self.target_channels,
                                   sampler=sampler, steps=steps, seed=seed, member_batch_size=member_batch_size,
                                   spread_scale=spread_scale, member_offset=member_offset, eta=eta,
                                   guidance=guidance, tile=tile, tile_overlap=tile_overlap)
        finally:
            self.train(was_training)
