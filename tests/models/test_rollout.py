import pytest
import torch

from def_ray.data.layout import ChannelLayout
from def_ray.models import build_model
from def_ray.models.diffusion.samplers import lead_seed
from def_ray.models.rollout import rollout
from tests.models.helpers import tiny_cfg

N_PAST, N_VARS, N_STATIC, H, W = 2, 3, 1, 9, 10
TARGET_IDX = [2, 0]  # the model's two target channels are frame variables 2 and 0
LAYOUT = ChannelLayout.of(N_PAST, ["a", "b", "c"], ["c", "a"], ["latitude"])


def _cond():
    return torch.randn(1, N_PAST * N_VARS + N_STATIC, H, W, generator=torch.Generator().manual_seed(0))


def _advance(cond, new):
    """Expected conditioning of the next lead step, written out by hand for these sizes."""
    cond = cond.expand(new.shape[0], -1, -1, -1)
    newest = cond[:, N_VARS:2 * N_VARS].clone()
    newest[:, 2], newest[:, 0] = new[:, 0], new[:, 1]
    return torch.cat([cond[:, N_VARS:2 * N_VARS], newest, cond[:, -N_STATIC:]], dim=1)


def test_diffusion_rollout_feeds_each_member_its_own_step():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(timesteps=10), N_PAST * N_VARS + N_STATIC, 2).eval()
    kw = dict(sampler="dpmpp", steps=2, member_batch_size=2)
    out = rollout(model, _cond(), 3, LAYOUT, members=3, seed=5, **kw)
    assert out.shape == (3, 3, 2, H, W)
    # lead 0 is model.sample; later leads sample from the advanced conditioning with the lead's seed
    lead0 = model.sample(_cond(), 3, seed=5, **kw)
    assert torch.equal(out[:, 0], lead0)
    cond1 = _advance(_cond(), lead0)
    assert torch.equal(out[:, 1], model.sample(cond1, 3, seed=lead_seed(5, 1), **kw))
    cond2 = _advance(cond1, out[:, 1])
    assert torch.equal(out[:, 2], model.sample(cond2, 3, seed=lead_seed(5, 2), **kw))
    assert not torch.equal(out[0, 1], out[1, 1])


def test_deterministic_rollout_is_one_member():
    model = build_model(tiny_cfg(kind="deterministic"), N_PAST * N_VARS + N_STATIC, 2)
    out = rollout(model, _cond()[0], 2, LAYOUT, sampler="dpmpp", seed=3)
    assert out.shape == (1, 2, 2, H, W)
    lead0 = model.predict(_cond())
    torch.testing.assert_close(out[:, 1], model.predict(_advance(_cond(), lead0)))
    with pytest.raises(ValueError, match="1 member"):
        rollout(model, _cond(), 2, LAYOUT, members=4)


def test_rollout_refuses_inconsistent_channels():
    model = build_model(tiny_cfg(kind="deterministic"), N_PAST * N_VARS + N_STATIC, 2)
    with pytest.raises(ValueError, match="n_past"):
        rollout(model, _cond(), 2, ChannelLayout.of(N_PAST, ["a", "b", "c"], ["c", "a"]))  # static not declared
    with pytest.raises(ValueError, match="targets"):
        rollout(model, _cond(), 2, ChannelLayout.of(N_PAST, ["a", "b", "c"], ["c"], ["latitude"]))
    with pytest.raises(ValueError, match="targets"):
        ChannelLayout.of(N_PAST, ["a", "b", "c"], ["c", "d"], ["latitude"])
    with pytest.raises(ValueError, match="lead_steps"):
        rollout(model, _cond(), 0, LAYOUT)


def test_probability_matching_gives_each_member_the_observed_values_in_its_own_rank_order():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(timesteps=10), N_PAST * N_VARS + N_STATIC, 2).eval()
    kw = dict(sampler="dpmpp", steps=2, member_batch_size=2, seed=5)
    plain = rollout(model, _cond(), 2, LAYOUT, members=3, **kw)
    matched = rollout(model, _cond(), 2, LAYOUT, members=3, probability_matching=True, **kw)
    observed = _cond()[0, N_VARS:2 * N_VARS][[2, 0]]  # the newest frame's targets, in target order
    # lead 0: the same member draws, each re-valued with the observed values rank by rank
    for m in range(3):
        for c in range(2):
            got, raw = matched[m, 0, c].flatten(), plain[m, 0, c].flatten()
            assert torch.equal(torch.sort(got).values, torch.sort(observed[c].flatten()).values)
            assert torch.equal(torch.argsort(got, stable=True), torch.argsort(raw, stable=True))
    # later leads too (from the matched conditioning), and the members still differ
    for c in range(2):
        assert torch.equal(torch.sort(matched[1, 1, c].flatten()).values, torch.sort(observed[c].flatten()).values)
    assert not torch.equal(matched[0, 1], matched[1, 1])
    # per-member: the same members however they are batched
    again = rollout(model, _cond(), 2, LAYOUT, members=3, probability_matching=True, **{**kw, "member_batch_size": 1})
    assert torch.equal(matched, again)


FG_LAYOUT = ChannelLayout.of(N_PAST, ["a", "b", "c"], ["c", "a"], ["latitude"], first_guess=True)


def _fg_cond(u: float = 1.5, v: float = -0.5):
    """Conditioning with a first guess and a uniform motion (u, v) grid points per step."""
    cond = torch.randn(1, FG_LAYOUT.cond_channels, H, W, generator=torch.Generator().manual_seed(1))
    m = FG_LAYOUT.frame_channels + 2
    cond[:, m], cond[:, m + 1] = u / FG_LAYOUT.motion_scale, v / FG_LAYOUT.motion_scale
    return cond


def test_motion_perturbation_moves_each_member_along_its_own_draw_before_matching():
    from def_ray.data.advection import advect, motion_perturbation
    from def_ray.models.diffusion.samplers import perturbation_seed

    torch.manual_seed(0)
    model = build_model(tiny_cfg(timesteps=10), FG_LAYOUT.cond_channels, 2).eval()
    kw = dict(sampler="dpmpp", steps=2, member_batch_size=3, seed=5, km_per_pixel=3.0, step_minutes=60.0)
    plain = rollout(model, _fg_cond(), 1, FG_LAYOUT, members=3, **kw)
    moved = rollout(model, _fg_cond(), 2, FG_LAYOUT, members=3, motion_perturbation=1.0, **kw)
    motion = FG_LAYOUT.motion_of(_fg_cond())[0].numpy()
    for k in range(3):  # lead 0: the unperturbed member moved by member k's own perturbation at +60 min
        shift = torch.from_numpy(motion_perturbation(motion, perturbation_seed(5, k), 60.0, 3.0, 60.0))[None]
        torch.testing.assert_close(moved[k, 0], advect(plain[k:k + 1, 0], shift)[0])
        assert shift.abs().max() > 1.0  # about 20 km/h at +1 h: several grid points
    # a member does not depend on which members are drawn with it (its own seed, by global index)
    alone = rollout(model, _fg_cond(), 2, FG_LAYOUT, members=1, motion_perturbation=1.0, member_offset=2, **kw)
    torch.testing.assert_close(alone[0], moved[2])
    with pytest.raises(ValueError, match="km_per_pixel"):
        rollout(model, _fg_cond(), 1, FG_LAYOUT, members=2, motion_perturbation=1.0, seed=5, steps=2)
    with pytest.raises(ValueError, match="first guess"):
        rollout(build_model(tiny_cfg(timesteps=10), N_PAST * N_VARS + N_STATIC, 2).eval(), _cond(), 1, LAYOUT,
                members=2, motion_perturbation=1.0, seed=5, steps=2, km_per_pixel=3.0, step_minutes=60.0)
