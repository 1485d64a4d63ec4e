"""Autoregressive multi-step forecasts.

Each lead step samples every member from its own conditioning; the member's generated step then replaces the
oldest frame of *its* conditioning. Only the target variables are generated: every other channel of the new frame
is carried forward from the newest known frame (persistence), and static fields stay unchanged. Lead step l uses
the seed ``lead_seed(seed, l)`` (lead 0: ``seed`` itself), so a one-step rollout equals ``model.sample``.
"""

from __future__ import annotations

from typing import Any

import torch

from def_ray.models.diffusion.samplers import lead_seed


@torch.no_grad()
def rollout(model: Any, cond: torch.Tensor, lead_steps: int, n_vars: int, target_idx: list[int], members: int = 1,
            *, n_static: int = 0, **sample_kwargs: Any) -> torch.Tensor:
    """(members, lead_steps, C_t, H, W) from cond (C_cond, H, W) or (1, C_cond, H, W).

    ``cond`` channels: n_past frames of ``n_vars`` variables, oldest first, then ``n_static`` static fields.
    ``target_idx``: the position within a frame of each target channel, in the model's target order.
    A deterministic model gives one member (members must be 1); it ignores ``sample_kwargs``, so callers can pass
    the same sampler options to either kind.
    """
    if cond.ndim == 3:
        cond = cond[None]
    if cond.ndim != 4 or cond.shape[0] != 1:
        raise ValueError(f"rollout cond must be (C, H, W) or (1, C, H, W), got {tuple(cond.shape)}")
    frames_ch = cond.shape[1] - n_static
    if n_vars < 1 or n_static < 0 or frames_ch < n_vars or frames_ch % n_vars:
        raise ValueError(f"cond has {cond.shape[1]} channels: not n_past * n_vars ({n_vars}) + n_static ({n_static})")
    if len(target_idx) != model.target_channels or not all(0 <= i < n_vars for i in target_idx):
        raise ValueError(f"target_idx {target_idx} must name {model.target_channels} channels in 0..{n_vars - 1}")
    if lead_steps < 1:
        raise ValueError(f"lead_steps must be >= 1, got {lead_steps}")
    n_past = frames_ch // n_vars
    if model.kind == "deterministic":
        if members != 1:
            raise ValueError(f"the deterministic model gives 1 member, got members={members}")
        step = lambda c, lead: model.predict(c)[:, None]  # noqa: E731
    else:
        seed = sample_kwargs.pop("seed", 0)
        step = lambda c, lead: model.sample(c, members, seed=lead_seed(seed, lead), **sample_kwargs)  # noqa: E731
    out = []
    for lead in range(lead_steps):
        new = step(cond, lead).reshape(members, model.target_channels, *cond.shape[-2:])
        out.append(new)
        if lead + 1 < lead_steps:
            cond = _advance(cond.to(new.device).expand(members, -1, -1, -1), new, n_past, n_vars, target_idx)
    return torch.stack(out, dim=1)


def _advance(cond: torch.Tensor, new: torch.Tensor, n_past: int, n_vars: int, target_idx: list[int]) -> torch.Tensor:
    """Drop the oldest frame, append the newest known frame with its target channels replaced by ``new``."""
    m, _, h, w = cond.shape
    frames = cond[:, : n_past * n_vars].reshape(m, n_past, n_vars, h, w)
    latest = frames[:, -1].clone()
    latest[:, target_idx] = new.to(latest.dtype)
    frames = torch.cat([frames[:, 1:], latest[:, None]], dim=1).reshape(m, n_past * n_vars, h, w)
    return torch.cat([frames, cond[:, n_past * n_vars:]], dim=1)
