"""The sampler's spread settings chosen on the validation split, stored in the checkpoint as its defaults.

After training, each candidate (spread_scale x guidance, config train.spread_scales / train.guidance_scales) draws
an ensemble for the same validation windows with the forecast sampler; the one chosen is the candidate whose
spread/skill is closest to 1 among those whose CRPS is within `crps_tolerance` of the best CRPS (calibrated spread
without paying in skill).  Scores are in normalised units, over the validation crops the training loop validates on,
with the forecast's own probability-matching setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from def_ray.config import Config, SamplerConfig
from def_ray.data.layout import ChannelLayout

__all__ = ["Candidate", "choose_sampler"]


@dataclass(frozen=True)
class Candidate:
    spread_scale: float
    guidance: float
    crps: float
    spread_skill: float

    def row(self) -> dict[str, float]:
        return {"spread_scale": self.spread_scale, "guidance": self.guidance, "crps": round(self.crps, 5),
                "spread_skill": round(self.spread_skill, 4)}


def _score(model: Any, layout: ChannelLayout, cond: torch.Tensor, target: np.ndarray, options: SamplerConfig,
           members: int, seed: int, geometry: dict[str, float | None]) -> tuple[float, float]:
    """(mean CRPS, corrected spread/skill) of `members`-member ensembles for every window, drawn by the forecasts'
    own rollout (so probability matching counts), scored on full fields (with a first guess: residual + guess)."""
    from def_ray.models.diffusion.samplers import sampler_kwargs
    from def_ray.models.rollout import rollout
    from def_ray.train.loop import ensemble_scores

    sums = {"crps_sum": 0.0, "var_sum": 0.0, "se_sum": 0.0, "pixels": 0.0}
    kwargs = {**sampler_kwargs(options), "member_batch_size": members, **geometry}
    for i in range(cond.shape[0]):
        ens = rollout(model, cond[i], 1, layout, members, seed=seed + i, **kwargs)[:, 0].float().cpu().numpy()
        truth = target[i]
        if layout.first_guess:
            truth = truth + layout.first_guess_of(cond[i][None])[0].numpy()
        for k, v in ensemble_scores(ens, truth).items():
            sums[k] += v
    spread = math.sqrt(sums["var_sum"] / sums["pixels"])
    rmse = math.sqrt(sums["se_sum"] / sums["pixels"])
    return sums["crps_sum"] / sums["pixels"], math.sqrt((members + 1) / members) * spread / max(rmse, 1e-12)


def choose_sampler(cfg: Config, model: Any, layout: ChannelLayout, windows: dict[str, np.ndarray], *,
                   crps_tolerance: float = 0.02, km_per_pixel: float | None = None,
                   step_minutes: float | None = None) -> tuple[SamplerConfig, list[Candidate]]:
    """The forecast sampler with the chosen spread_scale and guidance, and every candidate's scores
    (`km_per_pixel` and `step_minutes`: the grid's, for the sampler's motion perturbation)."""
    tc = cfg.train
    base = cfg.forecast.sampler
    guidances = tc.guidance_scales if cfg.model.cond_dropout > 0 else [1.0]
    cond = torch.from_numpy(np.ascontiguousarray(windows["cond"], dtype=np.float32))
    target = np.asarray(windows["target"], dtype=np.float32)
    model.eval()
    scored = []
    for g in guidances:
        for s in tc.spread_scales:
            options = base.model_copy(update={"spread_scale": float(s), "guidance": float(g)})
            crps, ss = _score(model, layout, cond, target, options, tc.val_members, tc.seed + 7,
                              {"km_per_pixel": km_per_pixel, "step_minutes": step_minutes})
            scored.append(Candidate(float(s), float(g), crps, ss))
    best = min(c.crps for c in scored)
    near = [c for c in scored if c.crps <= best * (1 + crps_tolerance)]
    pick = min(near, key=lambda c: (abs(math.log(c.spread_skill)), c.crps))
    return base.model_copy(update={"spread_scale": pick.spread_scale, "guidance": pick.guidance}), scored
