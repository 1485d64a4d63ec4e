"""Tiled sampling (samplers.py, "Tiled sampling"): the network runs on overlapping tiles blended at every
denoising step, the noise and the solver state stay whole-frame.

What is checked, and the tolerance stated in samplers.py:
- the blend weights are a partition of unity (they sum to 1 at every pixel), zero over the outer quarter of each
  overlap, and the tiles cover the frame;
- a tile that covers the grid is the untiled sampler bit for bit, and tiling off is the untiled code path;
- the receptive-field argument: a purely convolutional denoiser whose receptive radius is within a quarter of the
  overlap gives the untiled result up to float rounding (and does not with a smaller overlap);
- the tiny UNet (GroupNorm and attention see the tile, not the frame): the RMS difference of tiled and untiled
  members is below TOLERANCE x the ensemble spread, and there is no seam: the difference field's gradient across
  the tile boundaries stays within SEAM_LIMIT x its gradient inside the tiles, where hard-cut tiles (overlap 0)
  exceed it;
- members stay bit-identical across member batch sizes; every network call sees a tile, never the frame (memory
  bounded by the tile); the SamplerConfig keys reach the sampler through rollout (the one forecast path).
"""

import pytest
import torch
from torch import nn

from def_ray.config import SamplerConfig
from def_ray.data.layout import ChannelLayout
from def_ray.models.diffusion.ddpm_convection import ConvectionDDPM
from def_ray.models.diffusion.samplers import (axis_weights, check_tiling, sample_ensemble, sampler_kwargs,
                                               tile_starts, tiled_denoiser)
from def_ray.models.rollout import rollout
from tests.models.helpers import blob_windows, tiny_cfg

TOLERANCE = 0.2  # RMS(tiled - untiled) / ensemble spread; measured 0.07-0.13 (two initialisations), hard cut 0.21
SEAM_LIMIT = 2.0  # measured 1.3-1.6 with the blend; hard-cut tiles 3-12
SIZE, TILE, OVERLAP, MEMBERS, STEPS = 64, 32, 16, 6, 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ConvectionDDPM(tiny_cfg(), cond_channels=8, target_channels=1).eval()


@pytest.fixture(scope="module")
def cond():
    return blob_windows(1, size=SIZE, seed=1)[0]


@pytest.fixture(scope="module")
def untiled(model, cond):
    return _sample(model, cond)


def _sample(model, cond, members=MEMBERS, member_batch_size=MEMBERS, **tiling):
    with torch.no_grad():
        return sample_ensemble(model, model.timesteps, cond, members, 1, sampler="dpmpp", steps=STEPS, seed=3,
                               member_batch_size=member_batch_size, **tiling)


@pytest.mark.parametrize("length,tile,overlap", [(64, 32, 16), (64, 32, 0), (100, 32, 8), (96, 48, 16),
                                                 (40, 64, 16), (70, 24, 12), (1059, 256, 64), (1799, 256, 64)])
def test_weights_sum_to_one_everywhere_and_ignore_the_tile_edges(length, tile, overlap):
    parts = axis_weights(length, tile, overlap)
    total = torch.zeros(length, dtype=torch.float64)
    for span, w in parts:
        assert span.stop - span.start == min(tile, length) and (w >= 0).all()
        total[span] += w.double()
        if overlap and span.start > 0:  # an interior edge: its outer quarter of the overlap is not used
            assert (w[: overlap // 4] == 0).all()
        if overlap and span.stop < length:
            assert (w[len(w) - overlap // 4:] == 0).all()
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64), rtol=0, atol=1e-6)
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length and starts == sorted(set(starts))


def test_tiling_is_checked():
    check_tiling(32, 16, 2)
    for tile, overlap, factor in [(33, 16, 2), (32, 15, 2), (32, 17, 1), (0, 0, 1), (32, -2, 1)]:
        with pytest.raises(ValueError):
            check_tiling(tile, overlap, factor)
    with pytest.raises(ValueError, match="tile_overlap=40 must be at most tile/2"):
        SamplerConfig(tile=64, tile_overlap=40)
    assert SamplerConfig().tile is None  # off by default


def test_a_tile_that_covers_the_grid_is_the_untiled_sampler_bit_for_bit(model, cond, untiled):
    assert torch.equal(_sample(model, cond, tile=SIZE, tile_overlap=OVERLAP), untiled)
    assert torch.equal(_sample(model, cond, tile=None), untiled)
    # the blending wrapper itself with one tile: weights 1, the network's output unchanged
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    c = cond.expand(2, -1, -1, -1)
    t = torch.tensor(7)
    with torch.no_grad():
        assert torch.equal(tiled_denoiser(model, (SIZE, SIZE), 2 * SIZE, 16)(x, t, c).float(), model(x, t, c).float())


class _ConvDenoiser(nn.Module):
    """Convolutions only (one stride-2 level: downsampling factor 2), receptive radius about 6 pixels."""

    levels, patch = 2, 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.down = nn.Conv2d(9, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c2, self.c3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x, t, c):
        h = torch.tanh(self.down(torch.tanh(self.c1(torch.cat([x, c], 1)))))
        h = nn.functional.interpolate(torch.tanh(self.c2(h)), scale_factor=2, mode="nearest")
        return self.c3(h) + 0.01 * t.float()


def test_a_convolutional_denoiser_is_exact_when_the_overlap_exceeds_its_receptive_field(cond):
    net = _ConvDenoiser().eval()
    x = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    c = cond.expand(3, -1, -1, -1)
    t = torch.tensor(5)
    with torch.no_grad():
        whole = net(x, t, c)
        # overlap 32: each tile drops 8 pixels at its interior edges, more than the receptive radius
        torch.testing.assert_close(tiled_denoiser(net, (SIZE, SIZE), 40, 32)(x, t, c), whole, rtol=0, atol=1e-5)
        # overlap 8 keeps pixels 2 from a tile edge, inside the receptive field of the zero padding there
        assert (tiled_denoiser(net, (SIZE, SIZE), 40, 8)(x, t, c) - whole).abs().max() > 1e-3


def _seam_ratios(diff, tile, overlap):
    """Per axis: the largest mean |gradient| of `diff` across a pixel pair in a blend zone (hard cut: at a tile
    edge), over the median mean |gradient| of the pairs well inside the tiles."""
    starts = tile_starts(SIZE, tile, overlap)
    zone = set()
    for s in starts[1:]:
        previous_end = max(p + tile for p in starts if p < s)
        zone |= set(range(s, previous_end + 1)) if overlap else {s}
    inside = [j for j in range(1, SIZE) if min(abs(j - z) for z in zone) > 4]
    ratios = []
    for f in (diff, diff.transpose(-1, -2)):
        g = (f[..., 1:] - f[..., :-1]).abs().mean(dim=(0, 1, 2))  # g[j - 1]: the pair (j - 1, j)
        ratios.append(float(g[[z - 1 for z in zone]].max() / g[[j - 1 for j in inside]].median()))
    return ratios


def test_tiles_match_the_untiled_sampler_within_the_tolerance_without_seams(model, cond, untiled):
    tiled = _sample(model, cond, tile=TILE, tile_overlap=OVERLAP)
    spread = untiled.std(0).pow(2).mean().sqrt()
    rms = (tiled - untiled).pow(2).mean().sqrt()
    assert 0 < rms < TOLERANCE * spread, (float(rms), float(spread))
    assert max(_seam_ratios(tiled - untiled, TILE, OVERLAP)) < SEAM_LIMIT
    # the statistic sees seams: hard-cut tiles (overlap 0) have them
    hard = _sample(model, cond, tile=TILE, tile_overlap=0)
    assert max(_seam_ratios(hard - untiled, TILE, 0)) > 1.25 * SEAM_LIMIT


def test_tiled_members_do_not_depend_on_the_member_batch_size(model, cond):
    ref = _sample(model, cond, members=3, member_batch_size=1, tile=TILE, tile_overlap=OVERLAP)
    assert torch.equal(_sample(model, cond, members=3, member_batch_size=2, tile=TILE, tile_overlap=OVERLAP), ref)
    assert torch.equal(_sample(model, cond, members=3, member_batch_size=3, tile=TILE, tile_overlap=OVERLAP), ref)


def test_config_keys_reach_the_sampler_and_the_network_only_sees_tiles(model, cond):
    shapes = []
    hook = model.net.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape[-2:])))
    layout = ChannelLayout(variables=("refc", "t2m"), targets=("refc",), n_past=4)
    options = SamplerConfig(name="dpmpp", steps=2, member_batch_size=2, tile=TILE, tile_overlap=OVERLAP)
    try:
        out = rollout(model, cond, 1, layout, 2, seed=3, **sampler_kwargs(options))[:, 0]
    finally:
        hook.remove()
    assert set(shapes) == {(TILE, TILE)} and len(shapes) == 2 * len(tile_starts(SIZE, TILE, OVERLAP)) ** 2
    with torch.no_grad():
        direct = sample_ensemble(model, model.timesteps, cond, 2, 1, sampler="dpmpp", steps=2, seed=3,
                                 member_batch_size=2, tile=TILE, tile_overlap=OVERLAP)
    assert torch.equal(out, direct)
    # tiling off through the same path: the untiled sampler
    plain = rollout(model, cond, 1, layout, 2, seed=3, **sampler_kwargs(options.model_copy(update={"tile": None})))
    with torch.no_grad():
        assert torch.equal(plain[:, 0], sample_ensemble(model, model.timesteps, cond, 2, 1, sampler="dpmpp",
                                                        steps=2, seed=3, member_batch_size=2))
