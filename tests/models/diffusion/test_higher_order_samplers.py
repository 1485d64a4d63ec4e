"""The higher-order solvers ("dpmpp3m", "unipc", "heun2"; issue 19 item 2): the plumbing every sampler keeps
(member bit-identity, spread_scale, guidance, tiling, network passes) and the bar of the chosen default on the
known-answer problem of test_samplers.py (x = A c + B + SIG z): a tiny trained model reaches the CRPS of the
previous default (DPM-Solver++ 2M, 20 steps) within 2 % with at most half its network passes."""

import math

import numpy as np
import pytest
import scoringrules as sr
import torch

from def_ray.config import SamplerConfig
from def_ray.models import build_model
from def_ray.models.diffusion.samplers import (HIGHER_ORDER_SAMPLERS, SAMPLER_NAMES, network_passes, resolve_steps,
                                               sample_ensemble)
from tests.models.diffusion.test_samplers import A, B, SIG, _cond, gaussian_oracle
from def_ray.testing import train_known_answer
from tests.models.helpers import tiny_cfg

NEW = list(HIGHER_ORDER_SAMPLERS)
PREVIOUS_DEFAULT = ("dpmpp", 20)  # SamplerConfig's default before issue 19


@pytest.fixture(scope="module")
def random_ddpm():
    torch.manual_seed(0)
    return build_model(tiny_cfg(timesteps=10), 8, 2).eval()


def test_every_name_is_offered_and_counted():
    assert set(NEW) <= set(SAMPLER_NAMES)
    for name in SAMPLER_NAMES:
        SamplerConfig(name=name)  # the config accepts every sampler the code has
        assert resolve_steps(name, 4, 10) == 4
    cfg = SamplerConfig()
    assert network_passes(cfg.name, cfg.steps) <= network_passes(*PREVIOUS_DEFAULT) // 2
    with pytest.raises(ValueError, match="unknown sampler"):
        resolve_steps("euler", 4, 10)


@pytest.mark.parametrize("sampler", ["dpmpp", *NEW])
def test_network_passes_are_counted_right(sampler):
    calls = []
    oracle = gaussian_oracle(50)

    def counting(x, t, c):
        calls.append(int(t))
        return oracle(x, t, c)

    for steps in (4, 7):
        calls.clear()
        sample_ensemble(counting, 50, _cond(), 3, 1, sampler=sampler, steps=steps, seed=0, member_batch_size=3)
        assert len(calls) == network_passes(sampler, steps)
        assert all(0 <= t < 50 for t in calls) and calls[0] == 49


@pytest.mark.parametrize("sampler", NEW)
def test_members_are_bit_identical_whatever_the_member_batch_size(random_ddpm, sampler):
    cond = torch.randn(8, 12, 10, generator=torch.Generator().manual_seed(1))
    runs = {bs: random_ddpm.sample(cond, 20, sampler=sampler, steps=4, seed=11, member_batch_size=bs)
            for bs in (1, 7, 20)}
    assert torch.equal(runs[1], runs[20]) and torch.equal(runs[7], runs[20])
    split = torch.cat([random_ddpm.sample(cond, 8, sampler=sampler, steps=4, seed=11, member_batch_size=3),
                       random_ddpm.sample(cond, 12, sampler=sampler, steps=4, seed=11, member_batch_size=12,
                                          member_offset=8)])
    assert torch.equal(split, runs[20])
    assert not torch.equal(runs[20][0], runs[20][1])
    # deterministic solvers: eta is ignored
    assert torch.equal(random_ddpm.sample(cond, 3, sampler=sampler, steps=4, seed=11, eta=0.7), runs[20][:3])


@pytest.mark.parametrize("sampler", NEW)
def test_spread_scale_scales_x_T_of_the_deterministic_solvers(sampler):
    """Affine denoiser, no per-step noise: every member is (noise-free path) + s * (linear map of x_T)."""
    T, c = 50, _cond()
    base = sample_ensemble(gaussian_oracle(T), T, c, 64, 1, sampler=sampler, steps=6, seed=5, member_batch_size=64)
    for s in (0.5, 2.0):
        scaled = sample_ensemble(gaussian_oracle(T), T, c, 64, 1, sampler=sampler, steps=6, seed=5,
                                 member_batch_size=64, spread_scale=s)
        ratio = scaled.std(0) / base.std(0)
        torch.testing.assert_close(ratio, torch.full_like(ratio, s), rtol=1e-3, atol=0)
        # scaled - s * base = (1 - s) * (the noise-free path): the same for every member; Heun starts at
        # sigma_max = 4058 (x_T in sigma space), where float32 rounding alone is ~1e-3 of a unit
        assert (scaled - s * base).std(0).max() < (1e-2 if sampler == "heun2" else 1e-3)


@pytest.mark.parametrize("sampler", NEW)
def test_guidance_is_the_guided_denoiser(sampler):
    T, c, w = 50, _cond(), 1.7
    oracle = gaussian_oracle(T)

    def by_hand(x, t, cond):
        u = oracle(x, t, torch.zeros_like(cond))
        return u + w * (oracle(x, t, cond) - u)

    kw = dict(sampler=sampler, steps=5, seed=2, member_batch_size=4)
    guided = sample_ensemble(oracle, T, c, 4, 1, guidance=w, **kw)
    torch.testing.assert_close(guided, sample_ensemble(by_hand, T, c, 4, 1, **kw), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(guided, sample_ensemble(oracle, T, c, 4, 1, **kw), atol=1e-3)


@pytest.mark.parametrize("sampler", NEW)
def test_tiling_works_with_every_solver(random_ddpm, sampler):
    cond = torch.randn(1, 8, 12, 12, generator=torch.Generator().manual_seed(3))
    kw = dict(sampler=sampler, steps=3, seed=4)
    plain = sample_ensemble(random_ddpm, 10, cond, 4, 2, member_batch_size=4, **kw)
    # a tile that covers the grid is the untiled sampler, bit for bit
    assert torch.equal(plain, sample_ensemble(random_ddpm, 10, cond, 4, 2, member_batch_size=4, tile=12, **kw))
    tiled = {bs: sample_ensemble(random_ddpm, 10, cond, 4, 2, member_batch_size=bs, tile=8, tile_overlap=4, **kw)
             for bs in (1, 4)}
    assert torch.equal(tiled[1], tiled[4]) and torch.isfinite(tiled[4]).all()
    assert not torch.equal(tiled[4], plain)  # really tiled (GroupNorm and attention see the tile)


# -- the bar on a tiny trained model -------------------------------------------------------------------------------

T_BAR, SIZE, TRAIN_STEPS, MEMBERS, CASES = 200, 8, 300, 24, 6


def _fair_crps(ens: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    return sr.crps_ensemble(truth[0].double().numpy(), ens[:, 0].double().numpy(), m_axis=0,
                            estimator="fair").ravel()


@pytest.fixture(scope="module")
def trained_tiny():
    """test_samplers.py's tiny ConvectionDDPM on the known-answer law, trained briefly (T = 200 as the shipped
    configs; ~5-10 s on one core). One torch thread here: a module fixture runs before conftest's per-test
    one, and 2 OpenMP threads on a busy 2-core machine made this 15x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(tiny_cfg(base_dims=16, channel_mults=[1], attention_levels=[], groups=8, timesteps=T_BAR),
                        1, 1)
    train_known_answer(model, TRAIN_STEPS, batch=32, size=SIZE)
    torch.set_num_threads(threads)
    return model


def _crps_ratio(model, sampler, steps):
    """(CRPS of (sampler, steps) / CRPS of the previous default, its standard error) over CASES x SIZE^2 pixels.

    Every sampler's member k starts from the same x_T and is scored against the same truths, so the ratio's error
    comes from the paired per-pixel differences: se = std(d) / sqrt(n) / mean(ref)."""
    g = torch.Generator().manual_seed(1234)
    conds = torch.randn(CASES, 1, SIZE, SIZE, generator=g)
    truths = A * conds + B + SIG * torch.randn(conds.shape, generator=g)
    ref, new = [], []
    for k in range(CASES):
        kw = dict(seed=k, member_batch_size=MEMBERS)
        ref.append(_fair_crps(model.sample(conds[k], MEMBERS, sampler=PREVIOUS_DEFAULT[0],
                                           steps=PREVIOUS_DEFAULT[1], **kw), truths[k]))
        new.append(_fair_crps(model.sample(conds[k], MEMBERS, sampler=sampler, steps=steps, **kw), truths[k]))
    ref, new = np.concatenate(ref), np.concatenate(new)
    return new.mean() / ref.mean(), (new - ref).std(ddof=1) / math.sqrt(ref.size) / ref.mean()


def test_the_default_reaches_the_previous_defaults_crps_with_half_the_passes(trained_tiny):
    """The bar (issue 19): CRPS(default) / CRPS(dpmpp, 20 steps) <= 1.02 at <= 10 network passes.

    Tolerance: 6 cases x 64 pixels = 384 paired CRPS values of 24 members each; the ratio's standard error from
    the paired differences is 0.0008-0.0014 (measured over three trainings), asserted < 0.005, so the bar 1.02 is
    at least 4 standard errors above 1 and the check tells a sampler that meets it from one that misses it: the
    default measured 0.996-1.000, DPM-Solver++ with 3 steps 1.09-1.13 (+-0.012), which must fail it by more than
    2 of its standard errors."""
    cfg = SamplerConfig()
    assert network_passes(cfg.name, cfg.steps) <= network_passes(*PREVIOUS_DEFAULT) // 2
    ratio, se = _crps_ratio(trained_tiny, cfg.name, cfg.steps)
    assert se < 0.005, se
    assert ratio <= 1.02, (cfg.name, cfg.steps, ratio, se)
    # the same check fails a sampler that is too coarse
    coarse, coarse_se = _crps_ratio(trained_tiny, "dpmpp", 3)
    assert coarse > 1.02 + 2 * coarse_se, (coarse, coarse_se)
