"""Pieces of the worker loop checked on known answers (no Ray): ensemble scores, LR schedule, loss module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from def_ray.config import ModelConfig
from def_ray.models import build_model
from def_ray.train.loop import LossModule, ensemble_scores, lr_schedule


def test_ensemble_scores_on_known_values():
    obs = np.zeros((1, 2, 2))
    ens = np.stack([np.zeros((1, 2, 2)), 2 * np.ones((1, 2, 2))])  # members {0, 2} at every pixel
    s = ensemble_scores(ens, obs)
    # CRPS = E|X - y| - 0.5 E|X - X'| = 1 - 0.5 * (0 + 2 + 2 + 0) / 4 = 0.5 per pixel
    assert s["crps_sum"] == pytest.approx(0.5 * 4)
    assert s["var_sum"] == pytest.approx(2.0 * 4)  # unbiased variance of {0, 2}
    assert s["se_sum"] == pytest.approx(1.0 * 4)  # (mean - obs)^2 = 1
    assert s["pixels"] == 4
    perfect = ensemble_scores(np.repeat(obs[None], 5, axis=0), obs)
    assert perfect["crps_sum"] == pytest.approx(0) and perfect["se_sum"] == 0


def test_ensemble_crps_matches_the_gaussian_closed_form():
    """A large ensemble from N(0, 1) against y = 0.3: CRPS -> the closed form of scoringrules' crps_normal."""
    import scoringrules as sr

    rng = np.random.default_rng(0)
    ens = rng.normal(size=(4000, 1, 1, 1))
    got = ensemble_scores(ens, np.full((1, 1, 1), 0.3))["crps_sum"]
    # Monte-Carlo error of a 4000-member ensemble estimate is ~1e-2 at most; tolerance 0.02
    assert got == pytest.approx(float(sr.crps_normal(0.3, 0.0, 1.0)), abs=0.02)


def test_lr_warms_up_then_decays_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = lr_schedule(opt, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone cosine decay after warm-up
    assert lrs[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["deterministic", "diffusion"])
def test_loss_module_forwards_to_training_loss(kind):
    cfg = ModelConfig(kind=kind, base_dims=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[],
                      timesteps=10)
    model = build_model(cfg, 4, 1)
    cond, target = torch.randn(2, 4, 16, 16), torch.randn(2, 1, 16, 16)
    torch.manual_seed(1)
    a = LossModule(model)(cond, target)
    torch.manual_seed(1)
    b = model.training_loss(cond, target)
    assert a.ndim == 0 and torch.equal(a, b)
    a.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ema_warms_up_then_uses_the_configured_decay():
    from torch.optim.swa_utils import AveragedModel

    from def_ray.train.loop import ema_avg_fn

    p = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        p.weight.fill_(0.0)
    ema = AveragedModel(p, multi_avg_fn=ema_avg_fn(0.9))
    ema.update_parameters(p)  # first call copies the weights (n = 0)
    expect = 0.0
    for n in range(1, 100):  # (1 + n) / (10 + n) reaches the 0.9 cap at n = 80
        with torch.no_grad():
            p.weight.fill_(1.0)
        ema.update_parameters(p)
        d = min(0.9, (1 + n) / (10 + n))  # decay after n averaged updates
        expect = d * expect + (1 - d) * 1.0
        assert ema.module.weight.detach().item() == pytest.approx(expect, rel=1e-6)
