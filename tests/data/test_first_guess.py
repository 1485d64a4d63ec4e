"""The extrapolation first guess and the residual target: the same in training windows and forecasts, consistent
under augmentation, and rain-classed crops that stay inside radar coverage."""

import numpy as np
import pytest
import torch

from def_ray.data.advection import advect
from def_ray.data.ray_dataset import WindowReader, _augment, plan_rain_crops, prepare_windows
from def_ray.data.zarr_store import ZarrStore
from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store


@pytest.fixture(scope="module")
def residual_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fg")
    store = tiny_store(root / "s.zarr", size=32)
    cfg = tiny_config(store.url, model={"residual": "extrapolation"})
    return store, cfg, tiny_checkpoint(root / "m.pt", cfg)


def test_training_window_and_forecast_share_the_first_guess(residual_setup):
    from def_ray.forecast.forecaster import Forecaster

    store, cfg, ckpt = residual_setup
    wd = prepare_windows(cfg.data, first_guess=True)
    layout = wd.spec.layout
    assert layout.first_guess and layout.cond_channels == 2 * 3 + 1 + 2
    start = int(wd.splits.test[0])
    window = WindowReader(wd.spec).read([start])
    init = ZarrStore(store.url).all_times()[start + 1]  # n_past = 2: the window's last past frame
    fc = Forecaster.load(ckpt)
    cond = fc.conditioning(store, init)
    np.testing.assert_array_equal(window["cond"][0], cond)  # frames, first guess, motion: to the bit
    # the target is the residual over the first guess: adding it back gives the normalised truth
    truth = fc.normaliser().normalise_variable(store.read("refc", start + 2), "refc")
    np.testing.assert_allclose(window["target"][0, 0] + cond[6], truth, atol=1e-6)
    # the first guess is the newest frame moved along the motion held in the conditioning
    moved = advect(torch.from_numpy(cond[None, 3:4]), torch.from_numpy(cond[None, 7:9] * layout.motion_scale))
    np.testing.assert_allclose(moved[0, 0].numpy(), cond[6], atol=1e-6)
    assert np.abs(cond[7:9]).max() > 0  # the scenes move: the motion is not all zero


def test_rollout_adds_the_residual_to_the_first_guess(residual_setup):
    from def_ray.forecast.forecaster import Forecaster
    from def_ray.models.rollout import rollout

    store, cfg, ckpt = residual_setup
    fc = Forecaster.load(ckpt)
    cond = torch.from_numpy(fc.conditioning(store, ZarrStore(store.url).committed_times()[-1]))
    kw = dict(sampler="dpmpp", steps=2, member_batch_size=3)
    out = rollout(fc.model, cond, 2, fc.layout, 3, seed=1, **kw)
    residual = fc.model.sample(cond[None], 3, seed=1, **kw)
    torch.testing.assert_close(out[:, 0], residual + cond[6:7][None], rtol=0, atol=1e-6)


def test_augmented_windows_keep_first_guess_and_motion_consistent(residual_setup):
    store, cfg, _ = residual_setup
    wd = prepare_windows(cfg.data, first_guess=True)
    layout = wd.spec.layout
    batch = WindowReader(wd.spec).read(wd.splits.train[:6])  # full 32 x 32 frames: square
    turned = _augment(batch, layout, np.random.default_rng(3))
    assert not np.array_equal(turned["cond"], batch["cond"])
    for c in (batch["cond"], turned["cond"]):
        # in every orientation the first guess is still the newest frame moved along the motion channels
        moved = advect(torch.from_numpy(c[:, 3:4]), torch.from_numpy(c[:, 7:9] * layout.motion_scale)).numpy()
        np.testing.assert_allclose(moved[:, 0], c[:, 6], atol=1e-4)
    # and the target (the residual) turned with its window
    np.testing.assert_allclose(np.sort(turned["target"].ravel()), np.sort(batch["target"].ravel()))


def test_rain_crops_are_drawn_evenly_over_classes_and_inside_coverage(tmp_path):
    from def_ray.data.ingest import ingest_dataset
    from def_ray.data.ray_dataset import CLASS_EDGES
    import xarray as xr

    ny = nx = 128
    rng = np.random.default_rng(0)
    frames = np.zeros((12, ny, nx), np.float32)
    frames[:, 90:100, 90:100] = 5.0  # one heavy cell
    frames[:, 5:60, 5:60] = rng.uniform(0, 1.2, (12, 55, 55))  # drizzle with a few >= 1 mm points
    frames[:, :, :8] = np.nan  # outside radar coverage
    lat, lon = np.meshgrid(np.linspace(30, 32, ny), np.linspace(-90, -88, nx), indexing="ij")
    times = np.datetime64("2016-09-20T00:00") + np.arange(12) * np.timedelta64(1, "h")
    ds = xr.Dataset({"qpe_01h": (("time", "y", "x"), frames)}, coords={
        "time": times, "latitude": (("y", "x"), lat), "longitude": (("y", "x"), lon)})
    url = ingest_dataset(ds, str(tmp_path / "q.zarr"), tile=32, progress=False).store
    cfg = tiny_config(url, data={"variables": ["qpe_01h"], "target_variables": ["qpe_01h"]})
    wd = prepare_windows(cfg.data)
    plan = plan_rain_crops(wd.spec, wd.splits.train, 16)
    counts = plan.class_counts()
    share = counts[-1] / counts.sum()
    assert counts.size == len(CLASS_EDGES) + 1 and 0 < share < 0.05  # heavy crops are rare among candidates ...
    start = int(wd.splits.train[0])
    draws = [plan.draw(start, rng) for _ in range(2000)]
    heavy = np.mean([(frames[0, y:y + 16, x:x + 16] >= 1).mean() >= CLASS_EDGES[-1] for y, x in draws])
    # ... but drawn far more often than uniform cropping would (each class equally often; the shift of up to half a
    # stride moves some draws of a small cell's class out of it)
    assert heavy > 4 * share
    assert min(x for _, x in draws) >= 8 - plan.stride // 2  # never (more than the jitter) outside coverage


def test_the_motion_of_a_process_first_call_is_that_of_every_later_call():
    """pysteps' interpolator wrapper keeps its chunking between calls; the first window a (Ray) process reads must
    still get the motion every later read of the same frames gets."""
    import subprocess
    import sys

    code = (
        "import numpy as np; from scipy.ndimage import gaussian_filter; "
        "from def_ray.data.advection import estimate_motion; "
        "rng = np.random.default_rng(0); "
        "x = np.stack([gaussian_filter(f, 3) for f in np.abs(rng.normal(0, 1, (2, 32, 32)))]) * 200; "
        "a, b = estimate_motion(x, 'refc'), estimate_motion(x, 'refc'); "
        "assert np.abs(a).max() > 0.5, 'no motion found: the case tests nothing'; "
        "print(float(np.abs(a - b).max()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out.strip().splitlines()[-1]) == 0.0
