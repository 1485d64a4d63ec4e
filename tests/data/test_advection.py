"""Motion and advection: a known moving blob is found, moved the right way, and still moves the right way after
any of the 8 rotations/flips."""

import numpy as np
import pytest
import torch

from def_ray.data.advection import advect, dihedral, estimate_motion

H = W = 64


def _blob(cy: float, cx: float, amp: float = 20.0, r: float = 5.0) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return (amp * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))).astype(np.float32)


def _centroid(f: np.ndarray) -> tuple[float, float]:
    y, x = np.mgrid[0:f.shape[0], 0:f.shape[1]]
    w = np.clip(f, 0, None)
    return float((w * y).sum() / w.sum()), float((w * x).sum() / w.sum())


def test_advect_moves_a_blob_along_the_motion():
    u, v = 3.0, -2.0  # 3 points a step along x, -2 along y
    motion = torch.tensor([u, v]).reshape(1, 2, 1, 1).expand(1, 2, H, W)
    out = advect(torch.from_numpy(_blob(30, 20))[None, None], motion, steps=2)[0, 0].numpy()
    cy, cx = _centroid(out)
    assert cy == pytest.approx(30 + 2 * v, abs=0.05) and cx == pytest.approx(20 + 2 * u, abs=0.05)


def test_motion_of_a_translating_rain_blob_is_recovered():
    frames = np.stack([_blob(20 + 2 * t, 15 + 3 * t) for t in range(4)])  # mm: v = +2, u = +3 per step
    motion = estimate_motion(frames, "qpe_01h")
    assert motion.shape == (2, H, W) and motion.dtype == np.float32
    near = _blob(26, 24) > 5  # where the rain is now
    assert motion[0][near].mean() == pytest.approx(3.0, abs=0.5)
    assert motion[1][near].mean() == pytest.approx(2.0, abs=0.5)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_rotated_window_moves_its_blob_the_right_way(k, flip):
    field = _blob(24, 18)
    motion = np.stack([np.full((H, W), 4.0, np.float32), np.full((H, W), 1.0, np.float32)])
    window = np.concatenate([field[None], motion])  # channels: field, u, v
    moved = advect(torch.from_numpy(field)[None, None], torch.from_numpy(motion)[None])[0].numpy()
    turned = dihedral(window, k, flip, vectors=[(1, 2)])
    moved_turned = advect(torch.from_numpy(turned[:1])[None], torch.from_numpy(turned[1:])[None])[0].numpy()
    # advecting the turned window = turning the advected window: the motion turned with the grid
    np.testing.assert_allclose(moved_turned, dihedral(moved, k, flip), atol=1e-4)
    if (k, flip) != (0, False):
        assert not np.allclose(turned[0], field)


def test_motion_perturbations_have_the_published_spread_along_and_across_the_motion():
    """Bowler-Pierce-Seed: the standard deviation (km/h) along the motion is 10.88 t^0.23 - 7.68 and across it
    5.76 t^0.31 - 2.72 at lead t minutes, zero-mean. With 4,000 draws of a unit-variance Laplace the sample standard
    deviation is within about 2% (1 sigma) of the truth: 8% is 4 sigma."""
    from def_ray.data.advection import motion_perturbation

    motion = np.zeros((2, 6, 7))
    motion[0] = 3.0  # due +x: along = u, across = v
    km, step, lead = 4.0, 60.0, 120.0
    draws = np.stack([motion_perturbation(motion, s, lead, km, step)[:, 3, 3] for s in range(4000)])
    to_km_h = km * 60.0 / step
    along, across = draws[:, 0] * to_km_h, draws[:, 1] * to_km_h
    assert along.std() == pytest.approx(10.88 * lead ** 0.23 - 7.68, rel=0.08)
    assert across.std() == pytest.approx(5.76 * lead ** 0.31 - 2.72, rel=0.08)
    assert abs(along.mean()) < 4 * along.std() / np.sqrt(4000)
    assert abs(np.corrcoef(along, across)[0, 1]) < 0.07  # independent draws
    one = motion_perturbation(motion, 7, lead, km, step)
    assert np.allclose(one, one[:, :1, :1])  # one vector per member over a uniform motion
    assert np.array_equal(one, motion_perturbation(motion, 7, lead, km, step))  # a seed is a member
