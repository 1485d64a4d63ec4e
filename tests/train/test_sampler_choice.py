"""The spread settings chosen on validation: a known under-dispersive ensemble gets the spread that calibrates it."""

import numpy as np
import torch

from def_ray.config import config_from_dict
from def_ray.data.layout import ChannelLayout
from def_ray.train.sampler_choice import choose_sampler


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
    options, table = choose_sampler(cfg, HalfSpreadModel(), ChannelLayout.of(2, ["x"], ["x"]), windows)
    assert options.spread_scale == 2.0 and options.guidance == 1.0  # guidance not tried: no condition dropout
    by_scale = {c.spread_scale: c for c in table}
    assert len(table) == 4 and abs(by_scale[2.0].spread_skill - 1) < 0.05 and by_scale[1.0].spread_skill < 0.6
    assert by_scale[2.0].crps < by_scale[1.0].crps and by_scale[2.0].crps < by_scale[3.0].crps
    # the forecast sampler's other settings are kept
    assert options.name == cfg.forecast.sampler.name and options.steps == cfg.forecast.sampler.steps
