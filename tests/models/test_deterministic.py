import pytest
import torch

from def_ray.models import DeterministicForecaster, build_model
from tests.models.helpers import blob_windows, tiny_cfg


def test_build_model_gives_each_kind():
    det = build_model(tiny_cfg(kind="deterministic"), 8, 1)
    dif = build_model(tiny_cfg(kind="diffusion"), 8, 1)
    assert isinstance(det, DeterministicForecaster) and det.kind == "deterministic"
    assert dif.kind == "diffusion"
    with pytest.raises(ValueError, match="cond_channels=0"):
        build_model(tiny_cfg(), 0, 1)


def test_predict_shape_on_odd_grid_and_mode_restored():
    model = build_model(tiny_cfg(kind="deterministic"), 8, 2)
    model.train()
    out = model.predict(torch.randn(8, 13, 11))
    assert out.shape == (1, 2, 13, 11) and not out.requires_grad
    assert model.training


def test_shape_errors_name_the_tensor():
    model = build_model(tiny_cfg(kind="deterministic"), 8, 1)
    with pytest.raises(ValueError, match=r"cond must be \(B, 8, H, W\)"):
        model.predict(torch.randn(1, 7, 8, 8))
    with pytest.raises(ValueError, match="target must be"):
        model.training_loss(torch.randn(2, 8, 8, 8), torch.randn(2, 1, 8, 9))


def test_mse_loss_falls_on_moving_blobs():
    torch.manual_seed(0)
    cond, target = blob_windows(16, size=16, seed=1)
    model = build_model(tiny_cfg(kind="deterministic"), cond.shape[1], 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model.training_loss(cond, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the same batch every step: an optimiser that works must at least halve the loss in 60 Adam steps
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
