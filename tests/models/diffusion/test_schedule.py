import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from def_ray.models.diffusion.schedule import (cosine_alpha_bar, cosine_betas, sampling_scheduler,
                                               training_scheduler)


@pytest.mark.parametrize("T", [20, 200, 1000])
def test_cosine_betas_match_closed_form_and_diffusers(T):
    betas = cosine_betas(T)
    # closed form by hand: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2) / cos^2((s/(1 + s)) pi/2)
    s = 0.008
    ab = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(T)
    np.testing.assert_allclose(betas, np.minimum(1 - ab((t + 1) / T) / ab(t / T), 0.999), rtol=1e-12)
    assert cosine_alpha_bar(0.0) == pytest.approx(1.0)
    assert betas[-1] == 0.999 and (betas > 0).all() and (np.diff(betas) > 0).all()
    # diffusers' squaredcos_cap_v2 (float32) is the same schedule
    np.testing.assert_allclose(training_scheduler(T).betas.numpy(), betas, rtol=1e-5, atol=1e-7)
    # before the clip, alphas_cumprod is the closed form alpha_bar((t+1)/T)
    acp = training_scheduler(T).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(acp[:-1], ab((t[:-1] + 1) / T), rtol=2e-5, atol=1e-7)


def test_training_scheduler_is_the_faithful_ddpm():
    sch = training_scheduler(200)
    assert isinstance(sch, DDPMScheduler)
    assert sch.config.prediction_type == "epsilon" and not sch.config.clip_sample
    with pytest.raises(ValueError, match=">= 2"):
        training_scheduler(1)


@pytest.mark.parametrize("name,cls", [("ddpm", DDIMScheduler), ("ddim", DDIMScheduler),
                                      ("dpmpp", DPMSolverMultistepScheduler)])
def test_sampling_schedulers_share_the_training_betas(name, cls):
    sch = sampling_scheduler(name, 50)
    assert isinstance(sch, cls)
    torch.testing.assert_close(sch.alphas_cumprod, training_scheduler(50).alphas_cumprod)
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling_scheduler("euler", 50)


def test_ddpm_sampler_steps_exactly_like_diffusers_ddpm_scheduler():
    """Our "ddpm" (DDIM with eta = 1 over every timestep) equals DDPMScheduler.step given the same noise."""
    T = 30
    ref = training_scheduler(T)
    ref.set_timesteps(T)
    ours = sampling_scheduler("ddpm", T)
    ours.set_timesteps(T)
    assert ours.timesteps.tolist() == ref.timesteps.tolist() == list(range(T - 1, -1, -1))
    g = torch.Generator().manual_seed(0)
    for t in ref.timesteps:
        x, eps = torch.randn(3, 1, 6, 6, generator=g), torch.randn(3, 1, 6, 6, generator=g)
        state = g.get_state()
        want = ref.step(eps, t, x, generator=g).prev_sample
        g_same = torch.Generator().set_state(state)
        noise = torch.randn(3, 1, 6, 6, generator=g_same)  # what DDPMScheduler drew for this step
        got = ours.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
        # float32 rounding of two algebraically equal formulas; x0_hat at t = T-1 is amplified by 1/sqrt(2e-7)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
