"""The sampler's spread settings chosen on the validation split, stored in the checkpoint as its defaults.

After training, each candidate (spread_scale x guidance, config train.spread_scales / train.guidance_scales) draws
an ensemble for the same validation windows with the forecast sampler; among the candidates whose CRPS is within
`crps_tolerance` of the best CRPS (skill first), the one chosen is the best calibrated: the smallest
|log spread/skill| + reliability, where reliability is the Brier score's reliability term relative to the event's
variance o (1 - o) (the share of a climatological forecast's Brier score lost to miscalibration), averaged over the
forecast thresholds.  Both parts are 0 for a calibrated ensemble and about 0.1 for one 10 % too narrow or one whose
probabilities lose a tenth of climatology's Brier score, so neither needs a weight.  CRPS and spread/skill are in
normalised units (the training loss's); the events are the forecast thresholds in the first target's physical units,
as verification scores them.  All over the validation crops the training loop validates on, with the forecast's own
probability matching and motion perturbation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from def_ray.config import Config, SamplerConfig
from def_ray.data.layout import ChannelLayout
from def_ray.data.normalise import Normaliser

__all__ = ["Candidate", "choose_sampler"]


@dataclass(frozen=True)
class Candidate:
    spread_scale: float
    guidance: float
    crps: float
    spread_skill: float
    reliability: float  # mean over the thresholds with events of the reliability term / o (1 - o); NaN if none

    @property
    def miscalibration(self) -> float:
        """|log spread/skill| + reliability (reliability counts 0 where no threshold had an event)."""
        return abs(math.log(self.spread_skill)) + (0.0 if math.isnan(self.reliability) else self.reliability)

    def row(self) -> dict[str, float | None]:
        return {"spread_scale": self.spread_scale, "guidance": self.guidance, "crps": round(self.crps, 5),
                "spread_skill": round(self.spread_skill, 4),
                "reliability": None if math.isnan(self.reliability) else round(self.reliability, 4)}


def _count_events(ens: np.ndarray, truth: np.ndarray, thresholds: list[float], counts: np.ndarray) -> None:
    """Add one window to `counts` (threshold, level k = 0..M members exceeding, [points, events]); ens (M, H, W)
    and truth (H, W) in physical units."""
    m = ens.shape[0]
    for i, thr in enumerate(thresholds):
        k = (ens >= thr).sum(axis=0).ravel()
        counts[i, :, 0] += np.bincount(k, minlength=m + 1)
        counts[i, :, 1] += np.bincount(k, weights=(truth >= thr).ravel(), minlength=m + 1)


def _relative_reliability(counts: np.ndarray) -> float:
    """Mean over thresholds with events and non-events of the Brier reliability term sum_k n_k (k/M - o_k)^2 / N
    (one bin per ensemble probability k/M, as verification's reliability diagrams) divided by o (1 - o)."""
    values = []
    p = np.arange(counts.shape[1]) / (counts.shape[1] - 1)
    for n, events in counts.transpose(0, 2, 1):  # per threshold: points and events per level
        base = events.sum() / n.sum()
        if 0 < base < 1:
            freq = np.divide(events, n, out=np.zeros_like(events), where=n > 0)
            values.append(float(np.sum(n * (p - freq) ** 2) / n.sum()) / (base * (1 - base)))
    return float(np.mean(values)) if values else float("nan")


def _score(model: Any, layout: ChannelLayout, cond: torch.Tensor, target: np.ndarray, options: SamplerConfig,
           members: int, seed: int, geometry: dict[str, float | None], normaliser: Normaliser,
           thresholds: list[float]) -> tuple[float, float, float]:
    """(mean CRPS, corrected spread/skill, relative reliability) of `members`-member ensembles for every window,
    drawn by the forecasts' own rollout (so probability matching counts), scored on full fields (with a first
    guess: residual + guess); the reliability on the first target in physical units."""
    from def_ray.models.diffusion.samplers import sampler_kwargs
    from def_ray.models.rollout import rollout
    from def_ray.train.loop import ensemble_scores

    sums = {"crps_sum": 0.0, "var_sum": 0.0, "se_sum": 0.0, "pixels": 0.0}
    counts = np.zeros((len(thresholds), members + 1, 2))
    first = layout.targets[:1]
    kwargs = {**sampler_kwargs(options), "member_batch_size": members, **geometry}
    for i in range(cond.shape[0]):
        ens = rollout(model, cond[i], 1, layout, members, seed=seed + i, **kwargs)[:, 0].float().cpu().numpy()
        truth = target[i]
        if layout.first_guess:
            truth = truth + layout.first_guess_of(cond[i][None])[0].numpy()
        for k, v in ensemble_scores(ens, truth).items():
            sums[k] += v
        _count_events(normaliser.denormalise(ens[:, :1], first)[:, 0], normaliser.denormalise(truth[:1], first)[0],
                      thresholds, counts)
    spread = math.sqrt(sums["var_sum"] / sums["pixels"])
    rmse = math.sqrt(sums["se_sum"] / sums["pixels"])
    return (sums["crps_sum"] / sums["pixels"], math.sqrt((members + 1) / members) * spread / max(rmse, 1e-12),
            _relative_reliability(counts))


def choose_sampler(cfg: Config, model: Any, layout: ChannelLayout, windows: dict[str, np.ndarray],
                   normaliser: Normaliser, *, crps_tolerance: float = 0.02, km_per_pixel: float | None = None,
                   step_minutes: float | None = None) -> tuple[SamplerConfig, list[Candidate]]:
    """The forecast sampler with the chosen spread_scale and guidance, and every candidate's scores
    (`normaliser`: the training statistics, for the thresholds' physical units; `km_per_pixel` and `step_minutes`:
    the grid's, for the sampler's motion perturbation)."""
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
            scores = _score(model, layout, cond, target, options, tc.val_members, tc.seed + 7,
                            {"km_per_pixel": km_per_pixel, "step_minutes": step_minutes}, normaliser,
                            list(cfg.forecast.thresholds))
            scored.append(Candidate(float(s), float(g), *scores))
    best = min(c.crps for c in scored)
    near = [c for c in scored if c.crps <= best * (1 + crps_tolerance)]
    pick = min(near, key=lambda c: (c.miscalibration, c.crps))
    return base.model_copy(update={"spread_scale": pick.spread_scale, "guidance": pick.guidance}), scored
