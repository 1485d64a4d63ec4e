"""Autoregressive multi-step forecasts.

Each lead step samples every member from its own conditioning; the member's generated step then replaces the
oldest frame of *its* conditioning (``ChannelLayout.advance``).  With a first guess the network gives the residual
over it, and the step is first guess + residual. Only the target variables are generated: every other channel of the new frame
is carried forward from the newest known frame (persistence), and static fields stay unchanged. Lead step l uses
the seed ``lead_seed(seed, l)`` (lead 0: ``seed`` itself), so a one-step rollout equals ``model.sample``.

With ``probability_matching`` every generated frame (each member, target and lead on its own) takes the values of the
newest observed frame rank by rank: the network decides where the rain is, the observation how much of each amount
(the 'cdf' probability matching of pysteps' STEPS).  It is a per-member map, so members stay independent of how they
are batched or split across actors.

With ``motion_perturbation`` (a diffusion model with a first guess) every generated frame of member k is moved along
its own perturbation of the init time's motion before matching: the velocity perturbations STEPS draws (pysteps
``initialize_bps``, seeded by ``perturbation_seed(seed, k)``), so members also disagree on where the rain goes, more
so at longer leads.  ``km_per_pixel`` and ``step_minutes`` (the forecaster takes them from the checkpoint) convert
the perturbations' km/h into grid points per step.

With ``tile`` (and ``tile_overlap``) the diffusion model's network runs on overlapping tiles blended at every
denoising step (``def_ray.models.diffusion.samplers``, "Tiled sampling"); the members are whole frames, so
probability matching, the first guess and the next step's conditioning see the whole frame, as without tiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from def_ray.data.advection import advect, motion_perturbation
from def_ray.data.layout import ChannelLayout
from def_ray.models.diffusion.samplers import lead_seed, perturbation_seed


def match_distribution(fields: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``fields`` (m, C, H, W) with the values of ``reference`` (C, H, W) channel by channel, in each field's rank
    order (ties broken by position, so the map is deterministic)."""
    m, c, h, w = fields.shape
    order = torch.sort(fields.reshape(m, c, h * w), dim=-1, stable=True).indices
    values = torch.sort(reference.reshape(1, c, h * w).to(fields), dim=-1).values.expand(m, -1, -1)
    return torch.empty_like(order, dtype=fields.dtype).scatter_(-1, order, values).reshape(m, c, h, w)


def _member_shifts(layout: ChannelLayout, cond: torch.Tensor, members: int, scale: float, km_per_pixel: float | None,
                   step_minutes: float | None, seed: int, member_offset: int) -> Callable[[int], torch.Tensor] | None:
    """lead -> (members, 2, H, W) motion perturbations (grid points per step), or None when `scale` is 0."""
    if not scale:
        return None
    if not layout.first_guess:
        raise ValueError("motion_perturbation needs a model with a first guess (model.residual: extrapolation): "
                         "the motion it perturbs is in that model's conditioning")
    if not km_per_pixel or not step_minutes:
        raise ValueError(f"motion_perturbation needs km_per_pixel and step_minutes, got {km_per_pixel} and "
                         f"{step_minutes}")
    motion = layout.motion_of(cond)[0].float().cpu().numpy()
    seeds = [perturbation_seed(seed, member_offset + k) for k in range(members)]

    def at(lead: int) -> torch.Tensor:
        minutes = (lead + 1) * step_minutes
        return scale * torch.from_numpy(np.stack([motion_perturbation(motion, s, minutes, km_per_pixel, step_minutes)
                                                  for s in seeds]))
    return at


@torch.no_grad()
def rollout(model: Any, cond: torch.Tensor, lead_steps: int, layout: ChannelLayout, members: int = 1, *,
            probability_matching: bool = False, motion_perturbation: float = 0.0,
            km_per_pixel: float | None = None, step_minutes: float | None = None,
            **sample_kwargs: Any) -> torch.Tensor:
    """(members, lead_steps, C_t, H, W) from cond (C_cond, H, W) or (1, C_cond, H, W) laid out as `layout` says.

    A deterministic model gives one member (members must be 1); it ignores ``sample_kwargs`` and
    ``motion_perturbation``, so callers can pass the same sampler options to either kind. ``tile`` /
    ``tile_overlap`` in ``sample_kwargs`` tile the diffusion network's evaluations (None: untiled).
    """
    if cond.ndim == 3:
        cond = cond[None]
    if cond.ndim != 4 or cond.shape[0] != 1:
        raise ValueError(f"rollout cond must be (C, H, W) or (1, C, H, W), got {tuple(cond.shape)}")
    layout.check(cond.shape[1])
    if layout.target_channels != model.target_channels:
        raise ValueError(f"the layout's targets {list(layout.targets)} are not the model's {model.target_channels} "
                         "target channels")
    if lead_steps < 1:
        raise ValueError(f"lead_steps must be >= 1, got {lead_steps}")
    if model.kind == "deterministic":
        if members != 1:
            raise ValueError(f"the deterministic model gives 1 member, got members={members}")
        step = lambda c, lead: model.predict(c)[:, None]  # noqa: E731
    else:
        seed = sample_kwargs.pop("seed", 0)
        step = lambda c, lead: model.sample(c, members, seed=lead_seed(seed, lead), **sample_kwargs)  # noqa: E731
    observed = layout.newest_targets(cond)[0]
    shift = None if model.kind == "deterministic" else _member_shifts(
        layout, cond, members, motion_perturbation, km_per_pixel, step_minutes, seed,
        sample_kwargs.get("member_offset", 0))
    out = []
    for lead in range(lead_steps):
        new = step(cond, lead).reshape(members, model.target_channels, *cond.shape[-2:])
        if layout.first_guess:  # the network gives the residual over the first guess
            new = new + layout.first_guess_of(cond).to(new.device, new.dtype)
        if shift is not None:
            new = advect(new, shift(lead).to(new.device))
        if probability_matching:
            new = match_distribution(new, observed)
        out.append(new)
        if lead + 1 < lead_steps:
            cond = layout.advance(cond.to(new.device).expand(members, -1, -1, -1), new)
    return torch.stack(out, dim=1)
