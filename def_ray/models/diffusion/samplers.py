"""Ensemble sampling: a pure function of (denoiser, schedule, condition, members, sampler, steps, seed).

Reproducibility: member k (global index ``member_offset + k``) owns a CPU ``torch.Generator`` seeded from
(seed, k) and draws *all* its noise from it, in a fixed order (initial noise, then one draw per stochastic step).
Noise is drawn on the CPU and then moved, so a member's noise is the same on any device and for any member batch
size or split of members across workers. The network's output for one member must not depend on the batch
either: sampling runs inside ``unet.batch_invariant`` (on the CPU: batch-independent kernels; see unet.py), and
tests/models/diffusion/test_samplers.py checks that members are bit-identical for member batch sizes 1, 7 and
50. This costs some speed on the CPU (benchmarks/bench_sampling.py).
On CUDA, cuDNN also chooses kernels by shape: a member's noise is still the same, but its values can differ in
the last bits between member batch sizes (not checked: no GPU in CI).

Spread control (``spread_scale`` = s, default 1 = the faithful sampler): the initial noise is x_T = s * z_T and
every stochastic update becomes x_prev = mean(x_t) + s * sigma_t * z_t ("ddpm", and "ddim" with eta > 0).
Deterministic solvers ("dpmpp", "ddim" with eta = 0) have no per-step noise, so for them only x_T is scaled.
s > 1 widens the ensemble, s < 1 narrows it; calibrate s on validation data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from def_ray.models.diffusion.schedule import SAMPLERS, sampling_scheduler
from def_ray.models.unet import batch_invariant

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t (b, C_t, H, W), timestep (0-d long tensor), cond (b, C_cond, H, W)) -> predicted noise (b, C_t, H, W)."""

DEFAULT_FAST_STEPS = 20


def _seed_int(*keys: int) -> int:
    for k in keys:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise ValueError(f"seeds and member indices must be non-negative integers, got {keys}")
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def member_generator(seed: int, member: int) -> torch.Generator:
    """The CPU generator of global member ``member`` of a forecast seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(_seed_int(seed, member))


def lead_seed(seed: int, lead: int) -> int:
    """Seed of lead step ``lead`` of a rollout: lead 0 uses ``seed`` itself, later leads independent streams."""
    return seed if lead == 0 else _seed_int(seed, lead, 0x1EAD)


def resolve_steps(sampler: str, steps: int | None, timesteps: int) -> int:
    """None -> all T steps for "ddpm", DEFAULT_FAST_STEPS for the fast samplers; checks 1 <= steps <= T."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if steps is None:
        steps = timesteps if sampler == "ddpm" else min(DEFAULT_FAST_STEPS, timesteps)
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampler steps={steps} must be in 1..{timesteps} (the model's diffusion timesteps)")
    return steps


def sampler_kwargs(sampler_cfg: Any) -> dict[str, Any]:
    """Keyword arguments for ``rollout`` from a ``SamplerConfig`` (all but ``probability_matching`` are
    ``ConvectionDDPM.sample``'s)."""
    return dict(sampler=sampler_cfg.name, steps=sampler_cfg.steps, member_batch_size=sampler_cfg.member_batch_size,
                spread_scale=sampler_cfg.spread_scale, eta=sampler_cfg.eta, guidance=sampler_cfg.guidance,
                probability_matching=sampler_cfg.probability_matching)


def _noise(gens: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(device)


@torch.no_grad()
def sample_ensemble(denoiser: Denoiser, timesteps: int, cond: torch.Tensor, members: int, target_channels: int, *,
                    sampler: str = "dpmpp", steps: int | None = None, seed: int = 0, member_batch_size: int = 10,
                    spread_scale: float = 1.0, member_offset: int = 0, eta: float = 0.0,
                    guidance: float = 1.0) -> torch.Tensor:
    """Draw ``members`` samples of the target given ``cond``; returns (members, C_t, H, W) float32.

    ``cond`` is (C_cond, H, W) or (1, C_cond, H, W) shared by all members, or (members, C_cond, H, W) with one
    condition per member (autoregressive rollout). Members go through the network ``member_batch_size`` at a time.
    ``eta`` is DDIM's stochasticity (0 = deterministic DDIM; ignored by "ddpm", which is eta = 1, and "dpmpp").
    ``guidance`` w != 1 evaluates the denoiser also without conditioning (zeros) in the same pass and uses
    eps_u + w (eps_c - eps_u); w = 1 is the plain conditional denoiser (no extra pass).
    """
    if cond.ndim == 3:
        cond = cond[None]
    if cond.ndim != 4 or cond.shape[0] not in (1, members):
        raise ValueError(f"cond must be (C, H, W), (1, C, H, W) or ({members}, C, H, W); got {tuple(cond.shape)}")
    if members < 1 or member_batch_size < 1:
        raise ValueError(f"members={members} and member_batch_size={member_batch_size} must be >= 1")
    if not spread_scale > 0:
        raise ValueError(f"spread_scale must be > 0, got {spread_scale}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if not guidance >= 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    steps = resolve_steps(sampler, steps, timesteps)
    if guidance != 1.0:
        denoiser = _guided(denoiser, guidance)
    cond = cond.float()
    device = cond.device
    shape = (target_channels, cond.shape[-2], cond.shape[-1])
    out = torch.empty((members, *shape), dtype=torch.float32, device=device)
    with batch_invariant(device):
        for start in range(0, members, member_batch_size):
            stop = min(start + member_batch_size, members)
            gens = [member_generator(seed, member_offset + k) for k in range(start, stop)]
            c = cond[start:stop] if cond.shape[0] == members > 1 else cond.expand(stop - start, -1, -1, -1)
            out[start:stop] = _sample_batch(denoiser, timesteps, c, gens, shape, sampler, steps, spread_scale, eta)
    return out


def _guided(denoiser: Denoiser, w: float) -> Denoiser:
    """Classifier-free guidance: the conditional and the unconditional (zero conditioning) prediction in one pass."""

    def guided(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), t, torch.cat([c, torch.zeros_like(c)])).float()
        eps_c, eps_u = both.chunk(2)
        return eps_u + w * (eps_c - eps_u)

    return guided


def _sample_batch(denoiser: Denoiser, timesteps: int, c: torch.Tensor, gens: list[torch.Generator],
                  shape: tuple[int, ...], sampler: str, steps: int, spread_scale: float, eta: float) -> torch.Tensor:
    device = c.device
    step_eta = 1.0 if sampler == "ddpm" else eta
    stochastic = sampler != "dpmpp" and step_eta > 0
    scheduler = sampling_scheduler(sampler, timesteps)  # fresh: DPM-Solver++ keeps the previous outputs
    scheduler.set_timesteps(steps, device=device)
    x = spread_scale * _noise(gens, shape, device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = denoiser(scheduler.scale_model_input(x, t), t.to(device=device, dtype=torch.long), c).float()
        if sampler == "dpmpp":
            x = scheduler.step(eps, t, x).prev_sample
        elif stochastic:
            z = spread_scale * _noise(gens, shape, device)  # drawn also at the last step: a fixed draw order
            x = scheduler.step(eps, t, x, eta=step_eta, variance_noise=z).prev_sample
        else:
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x
