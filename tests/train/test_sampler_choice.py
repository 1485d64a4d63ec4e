"""The spread settings chosen on validation: a known under-dispersive ensemble gets the spread that calibrates it,
and of two candidates with the same skill the one whose probabilities are reliable wins."""

import math

import numpy as np
import torch
from scipy.stats import norm

from def_ray.config import config_from_dict
from def_ray.data.layout import ChannelLayout
from def_ray.data.normalise import Normaliser
from def_ray.train.sampler_choice import choose_sampler

IDENTITY = Normaliser({"x": 0.0}, {"x": 1.0})  # model units are physical units


class HalfSpreadModel:
    """Members ~ N(0, (0.5 * spread_scale)^2) per point, the truth ~ N(0, 1): spread_scale 2 is calibrated."""

    kind = "diffusion"
    target_channels = 1

    def eval(self):
        return self

    def sample(self, cond, members, *, seed, spread_scale=1.0, **kwargs):
        g = torch.Generator().manual_seed(seed)
        return 0.5 * spread_scale * torch.randn((members, 1, *cond.shape[-2:]), generator=g)


def test_the_candidate_that_calibrates_the_spread_is_chosen():
    cfg = config_from_dict({"model": {"cond_dropout": 0.0},
                            "train": {"spread_scales": [1.0, 1.5, 2.0, 3.0], "guidance_scales": [1.0, 2.0],
                                      "val_members": 16}})
    rng = np.random.default_rng(0)
    windows = {"cond": np.zeros((6, 2, 24, 24), np.float32), "target": rng.standard_normal((6, 1, 24, 24))}
    options, table = choose_sampler(cfg, HalfSpreadModel(), ChannelLayout.of(2, ["x"], ["x"]), windows, IDENTITY)
    assert options.spread_scale == 2.0 and options.guidance == 1.0  # guidance not tried: no condition dropout
    by_scale = {c.spread_scale: c for c in table}
    assert len(table) == 4 and abs(by_scale[2.0].spread_skill - 1) < 0.05 and by_scale[1.0].spread_skill < 0.6
    assert by_scale[2.0].crps < by_scale[1.0].crps and by_scale[2.0].crps < by_scale[3.0].crps
    # the forecast sampler's other settings are kept
    assert options.name == cfg.forecast.sampler.name and options.steps == cfg.forecast.sampler.steps


class BiasedWideModel:
    """spread_scale 1: members ~ N(0, 0.9^2), a little narrow but with the truth's event frequencies;
    spread_scale 2: members ~ N(1, 2), spread/skill 1 (the bias is paid for by the width) but P(x >= 1) = 0.5 where
    the truth's is 0.16."""

    kind = "diffusion"
    target_channels = 1

    def eval(self):
        return self

    def sample(self, cond, members, *, seed, spread_scale=1.0, **kwargs):
        z = torch.randn((members, 1, *cond.shape[-2:]), generator=torch.Generator().manual_seed(seed))
        return 0.9 * z if spread_scale == 1.0 else 1.0 + math.sqrt(2.0) * z


def test_of_two_equally_skilful_candidates_the_reliable_one_is_chosen():
    """Truth ~ N(0, 1) in model units; events x >= 2 in physical units = x >= 1 in model units (std 2)."""
    m = 16
    cfg = config_from_dict({"model": {"cond_dropout": 0.0}, "forecast": {"thresholds": [2.0]},
                            "train": {"spread_scales": [1.0, 2.0], "val_members": m}})
    rng = np.random.default_rng(1)
    windows = {"cond": np.zeros((8, 2, 64, 64), np.float32), "target": rng.standard_normal((8, 1, 64, 64))}
    stats = Normaliser({"x": 0.0}, {"x": 2.0})
    layout = ChannelLayout.of(2, ["x"], ["x"])
    options, table = choose_sampler(cfg, BiasedWideModel(), layout, windows, stats, crps_tolerance=1.0)
    narrow, wide = table
    assert abs(wide.spread_skill - 1) < 0.05 < abs(narrow.spread_skill - 1)  # spread/skill alone would pick "wide"
    assert options.spread_scale == 1.0
    # the narrow members are independent of the truth: reliability = E[(k/M - o)^2] / o(1 - o), k ~ Bin(M, q)
    q, o = norm.sf(1 / 0.9), norm.sf(1.0)
    expected = (q * (1 - q) / m + (q - o) ** 2) / (o * (1 - o))
    assert abs(narrow.reliability - expected) < 0.01 and wide.reliability > 0.5
    assert table[0].row()["reliability"] == round(narrow.reliability, 4)
