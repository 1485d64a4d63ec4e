import pytest
import torch

from def_ray.models.unet import UNet, timestep_embedding


def _unet(levels=2, time_embedding=True, **kw):
    return UNet(3, 2, base_dims=8, channel_mults=[1, 2, 2, 2][:levels], num_res_blocks=1,
                attention_levels=[levels - 1], groups=4, attention_heads=2, time_embedding=time_embedding, **kw)


@pytest.mark.parametrize("levels,h,w", [(2, 17, 23), (3, 9, 12), (3, 5, 5), (4, 2, 3), (2, 16, 16)])
def test_any_grid_size_comes_back_with_its_own_shape(levels, h, w):
    net = _unet(levels)
    out = net(torch.randn(2, 3, h, w), torch.tensor([3, 7]))
    assert out.shape == (2, 2, h, w)
    assert torch.isfinite(out).all()


def test_deterministic_unet_needs_no_timestep_and_time_unet_refuses_none():
    assert _unet(time_embedding=False)(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="pass t"):
        _unet()(torch.randn(1, 3, 8, 8))


def test_one_timestep_is_broadcast_like_a_per_sample_timestep():
    net = _unet().eval()
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        a = net(x, torch.tensor(5))
        b = net(x, torch.full((4,), 5))
    torch.testing.assert_close(a, b)


def test_the_timestep_changes_the_output():
    net = _unet().eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 8, 8)
        assert not torch.allclose(net(x, 0), net(x, 15))


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10_000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1, :4], torch.sin(3 * freqs))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _unet()(torch.randn(3, 8, 8), 1)
    with pytest.raises(ValueError, match="groups=3"):
        UNet(3, 1, base_dims=8, channel_mults=[1], groups=3, attention_levels=[])
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(3, 1, base_dims=8, channel_mults=[1, 2], groups=4, attention_levels=[2])
    with pytest.raises(ValueError, match="one per sample"):
        _unet()(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))


def test_runs_under_bf16_autocast_close_to_fp32():
    net = _unet().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        ref = net(x, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, 4)
    assert torch.isfinite(low).all()
    # bf16 keeps 8 mantissa bits (relative error ~4e-3 per op); a dozen layers stay well inside 0.1
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.1)


def test_patch_works_on_blocks_and_keeps_the_grid():
    from def_ray.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(3, 2, base_dims=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[], groups=4, patch=2)
    x = torch.randn(2, 3, 21, 30)  # not a multiple of patch x 2: padded and cut back
    out = net(x, torch.tensor(3))
    assert out.shape == (2, 2, 21, 30) and torch.isfinite(out).all()
    assert net.inp.in_channels == 12 and net.out[-1].out_channels == 8  # 2 x 2 blocks in, 2 x 2 blocks out
    # a change in one 2 x 2 block's input reaches that block's outputs (space-to-depth is lossless)
    x2 = x.clone()
    x2[:, :, 10, 10] += 1.0
    assert not torch.equal(net(x2, torch.tensor(3))[:, :, 10, 10], out[:, :, 10, 10])
