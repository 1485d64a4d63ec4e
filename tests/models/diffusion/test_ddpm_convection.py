import pytest
import torch

from def_ray.models import build_model
from tests.models.helpers import blob_windows, tiny_cfg


def test_training_loss_is_reproducible_from_the_generator():
    model = build_model(tiny_cfg(), 8, 1)
    cond, target = blob_windows(4, size=12)
    a = model.training_loss(cond, target, generator=torch.Generator().manual_seed(3))
    b = model.training_loss(cond, target, generator=torch.Generator().manual_seed(3))
    c = model.training_loss(cond, target, generator=torch.Generator().manual_seed(4))
    assert a.ndim == 0 and torch.equal(a, b) and not torch.equal(a, c)


def test_noise_prediction_loss_falls_on_moving_blobs():
    torch.manual_seed(0)
    cond, target = blob_windows(16, size=16, seed=2)
    model = build_model(tiny_cfg(timesteps=50), cond.shape[1], 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        loss = model.training_loss(cond, target, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the loss is noisy (random t and eps each step), so compare means of 20 steps: the first 20 include the
    # untrained start; a network that learns nothing keeps them equal within ~10 %, a working one drops by >30 %
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20


@pytest.mark.parametrize("eps_output", ["preconditioned", "direct"])
def test_sample_shapes_on_an_odd_grid_and_mode_restored(eps_output):
    model = build_model(tiny_cfg(timesteps=10, eps_output=eps_output), 8, 2)
    model.train()
    out = model.sample(torch.randn(1, 8, 13, 9), 3, sampler="dpmpp", steps=2, member_batch_size=2)
    assert out.shape == (3, 2, 13, 9) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.training


def test_preconditioned_output_is_the_unit_variance_denoiser_at_zero_network():
    """eps_hat = sqrt(1 - ab) x_t - sqrt(ab) F: with F = 0 it is E[eps | x_t] for N(0, 1) data."""
    model = build_model(tiny_cfg(timesteps=10), 8, 1)
    torch.nn.init.zeros_(model.net.out[-1].weight)
    torch.nn.init.zeros_(model.net.out[-1].bias)
    x = torch.randn(2, 1, 8, 8)
    ab = model.alphas_cumprod[torch.tensor([0, 9])].reshape(2, 1, 1, 1)
    torch.testing.assert_close(model(x, torch.tensor([0, 9]), torch.randn(2, 8, 8, 8)), (1 - ab).sqrt() * x)


def test_training_step_under_bf16_autocast():
    model = build_model(tiny_cfg(), 8, 1)
    cond, target = blob_windows(2, size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_loss(cond, target, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("weighting", ["eps", "v"])
def test_loss_weighting_known_value_at_zero_network(weighting):
    """With F = 0, eps_hat - eps = -sqrt(ab) v (v = sqrt(ab) eps - sqrt(1 - ab) x0): the plain loss is mean(ab v^2),
    the 'v' weighting divides by ab and gives mean(v^2)."""
    model = build_model(tiny_cfg(timesteps=20, loss_weighting=weighting), 8, 1)
    torch.nn.init.zeros_(model.net.out[-1].weight)
    torch.nn.init.zeros_(model.net.out[-1].bias)
    cond, target = blob_windows(4, size=8)
    loss = model.training_loss(cond, target, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws as training_loss: t, then eps
    t = torch.randint(0, 20, (4,), generator=g)
    eps = torch.randn(target.shape, generator=g)
    ab = model.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * target
    expected = (v**2).mean() if weighting == "v" else (ab * v**2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_v_weighting_needs_the_preconditioned_output():
    with pytest.raises(ValueError, match="loss_weighting 'v' needs eps_output 'preconditioned'"):
        tiny_cfg(eps_output="direct", loss_weighting="v")


def test_condition_dropout_trains_the_unconditional_model_on_dropped_samples():
    cond, target = blob_windows(4, size=12)
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(), 8, 1).train()
    torch.manual_seed(0)
    dropping = build_model(tiny_cfg(cond_dropout=0.999), 8, 1).train()  # same weights, conditioning ~always dropped
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    # t and eps are drawn before the drop, so a dropped batch scores exactly the unconditional loss
    torch.testing.assert_close(dropping.training_loss(cond, target, gen()),
                               plain.training_loss(torch.zeros_like(cond), target, gen()), rtol=0, atol=0)
    assert not torch.equal(plain.training_loss(cond, target, gen()), plain.training_loss(0 * cond, target, gen()))
    # evaluation (validation losses) never drops
    dropping.eval()
    torch.testing.assert_close(dropping.training_loss(cond, target, gen()), plain.eval().training_loss(
        cond, target, gen()), rtol=0, atol=0)


def test_guidance_scale_zero_is_unconditional_one_is_conditional_and_between_is_linear():
    torch.manual_seed(1)
    model = build_model(tiny_cfg(cond_dropout=0.1), 8, 1).eval()
    cond, _ = blob_windows(1, size=12)
    kw = dict(sampler="ddim", steps=1, seed=3, member_batch_size=2)
    one = model.sample(cond[0], 2, guidance=1.0, **kw)
    assert torch.equal(one, model.sample(cond[0], 2, **kw))  # w = 1: the plain conditional sampler
    zero = model.sample(cond[0], 2, guidance=0.0, **kw)
    torch.testing.assert_close(zero, model.sample(torch.zeros_like(cond[0]), 2, **kw), rtol=0, atol=1e-6)
    # one deterministic DDIM step is affine in eps: the w = 2 sample extrapolates the w = 0 -> w = 1 change
    two = model.sample(cond[0], 2, guidance=2.0, **kw)
    torch.testing.assert_close(two, one + (one - zero), rtol=0, atol=1e-4)
    assert not torch.allclose(one, zero)
    with pytest.raises(ValueError, match="cond_dropout"):
        build_model(tiny_cfg(), 8, 1).sample(cond[0], 2, guidance=1.5, **kw)
