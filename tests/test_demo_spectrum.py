"""The demo's diffusion model, trained exactly as `def-ray demo` trains it, draws members whose small scales are those
of the truth: cells, not pixel noise (issue 18).

The measure is the project's own radially averaged power spectrum (def_ray.verify.spectra), pooled over the test
hours of the demo's store: 8 members from the exported checkpoint with the demo's forecast sampler, against the truth
of the same hours, in normalised units (the spectrum ratio of an affine transform of the field is the same in dBZ).

Tolerance: the mean over the upper half of the wavenumbers (k >= 8 of 16 on the 32 x 32 grid: wavelengths of 2-4
grid lengths) of log10(member power / truth power) lies within +-0.5, a factor of about 3.  Why that wide: the test
hours are the afternoon's initiation, and a member that starts a cell where the truth has none (honest uncertainty,
not noise) adds power at every scale; the demo's exported model measured +0.27 (+0.22 and +0.28 in trial runs of
10 and 16 epochs).  Why it still fails on noise: white noise of the members' own variance measures +1.6 on these hours, and the
old demo's barely trained export (35 optimiser steps; the issue's pixel-noise map) measured +1.43: both are far
outside.  The test also checks the bound separates the two, asserting that the white-noise ratio is above 1.0.
The spectrum's shape (each spectrum divided by its power at k >= 1) must match too, within +-0.3 over the same rings
(measured -0.01 after 10 epochs; white noise +2.2): members that have the truth's power at small scales only because
they are too weak overall fail that one.
"""

import numpy as np
import pytest
import torch
import xarray as xr

from def_ray.demo import demo_config
from def_ray.verify import radial_power_spectrum

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MEMBERS = 8
BOUND = 0.5        # |mean log10(member / truth)| over the upper-half rings: a factor of about 3
SHAPE_BOUND = 0.3  # the same for the spectra divided by their power at k >= 1
NOISE_FLOOR = 1.0  # white noise of the members' variance must sit at least this far above the truth


def _spectrum(fields: np.ndarray, dims: tuple[str, ...]) -> np.ndarray:
    return radial_power_spectrum(xr.DataArray(fields, dims=dims)).values


def test_demo_members_keep_the_truths_small_scales(ray_session, tmp_path):
    from def_ray.data.ingest import ingest
    from def_ray.data.ray_dataset import prepare_windows
    from def_ray.data.synthetic import write_synthetic_grib
    from def_ray.models.checkpoint import load_checkpoint
    from def_ray.train.trainer import train

    # the demo's config as the demo runs it (synth, store, model, training, export), without MLflow
    cfg = demo_config(tmp_path / "demo", overrides={"tracking.enabled": False})
    assert cfg.train.export == "last" and cfg.model.kind == "diffusion"
    paths = write_synthetic_grib(cfg.synth)
    ingest([str(p) for p in paths], cfg.data.store, cfg.data.variables, tile=cfg.data.tile)
    result = train(cfg)
    assert int(result.exported_metrics["epoch"]) == cfg.train.epochs - 1  # the final epoch was exported

    wd = prepare_windows(cfg.data)
    windows = wd.windows("test", wd.n_windows("test"))
    model, _, _ = load_checkpoint(result.checkpoint_path)
    s = cfg.forecast.sampler
    cond = torch.from_numpy(windows["cond"])
    members = np.stack([model.sample(cond[i], members=MEMBERS, sampler=s.name, steps=s.steps, seed=i,
                                     member_batch_size=MEMBERS, spread_scale=s.spread_scale).numpy()[:, 0]
                        for i in range(cond.shape[0])])  # (hours, members, y, x)
    truth = windows["target"][:, 0]

    p_truth = _spectrum(truth, ("time", "y", "x"))
    p_members = _spectrum(members, ("time", "member", "y", "x"))
    noise = np.random.default_rng(0).standard_normal(members.shape) * members.std(axis=(-2, -1), keepdims=True)
    p_noise = _spectrum(noise, ("time", "member", "y", "x"))
    k = np.arange(p_truth.size)
    upper = k >= p_truth.size // 2

    def log_ratio(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.mean(np.log10(p[upper] / q[upper])))

    def shape(p: np.ndarray) -> np.ndarray:
        return p / p[1:].sum()

    ratio, shape_ratio, noise_ratio = (log_ratio(p_members, p_truth), log_ratio(shape(p_members), shape(p_truth)),
                                       log_ratio(p_noise, p_truth))
    detail = (f"log10 member/truth power over k >= {p_truth.size // 2}: {ratio:+.2f} (shape {shape_ratio:+.2f}); "
              f"white noise of the members' variance {noise_ratio:+.2f}; per ring "
              f"{np.round(np.log10(p_members / p_truth), 2).tolist()}")
    assert noise_ratio > NOISE_FLOOR, "the truth has too little structure for the test to tell noise apart: " + detail
    assert abs(ratio) < BOUND, "the members' small scales are not the truth's: " + detail
    assert abs(shape_ratio) < SHAPE_BOUND, "the members' spectrum has not the truth's shape: " + detail
