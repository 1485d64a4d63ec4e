"""The in-process forecast: conditioning from the store, member reproducibility, units, and its errors."""

import numpy as np
import pytest

from def_ray.forecast.ensemble import (ForecastError, Normalisation, conditioning_from_frames, conditioning_from_store,
                                       forecast, latest_init_time, load_forecast_model, normalisation_for)
from def_ray.forecast.tiny import tiny_checkpoint, tiny_config, tiny_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    store = tiny_store(root / "s.zarr", hours=8)
    cfg = tiny_config(store.url)
    fm = load_forecast_model(tiny_checkpoint(root / "m.pt", cfg))
    return store, cfg, fm, root


def _fc(fm, store, init, members=4, lead_hours=1, **kw):
    args = dict(sampler="dpmpp", steps=2, seed=5, member_batch_size=4, spread_scale=1.0)
    args.update(kw)
    return forecast(fm, fm.config, store, init, members, lead_hours, **args)


def test_members_reproducible_across_offsets_and_batch_sizes(tiny):
    store, _, fm, _ = tiny
    init = store.committed_times()[-1]
    full = _fc(fm, store, init, members=6, lead_hours=2)
    assert full.shape == (6, 2, 1, 16, 16) and full.dtype == np.float32
    # a later range on its own, in batches of one, is the same members bit for bit
    part = _fc(fm, store, init, members=2, lead_hours=2, member_offset=3, member_batch_size=1)
    np.testing.assert_array_equal(part, full[3:5])
    # members differ from each other and another seed gives another ensemble
    assert not np.array_equal(full[0], full[1])
    assert not np.array_equal(_fc(fm, store, init, members=2, seed=6), full[:2, :1])


def test_output_is_the_network_sample_in_physical_units(tiny):
    # second path: the rollout called directly on the normalised conditioning, then x * std + mean by hand
    import torch

    from def_ray.models.rollout import rollout

    store, _, fm, _ = tiny
    init = store.committed_times()[-1]
    norm = normalisation_for(fm, store)
    assert norm.source.startswith("store statistics")
    cond = conditioning_from_store(fm, store, init, norm)
    raw = rollout(fm.model, torch.from_numpy(cond)[None], 1, len(fm.variables), fm.target_idx, 2, sampler="dpmpp",
                  steps=2, seed=5, member_batch_size=4).numpy()
    expect = np.maximum(raw * np.float32(norm.std["refc"]) + np.float32(norm.mean["refc"]), -10.0)
    np.testing.assert_allclose(_fc(fm, store, init, members=2), expect, rtol=1e-6)
    assert norm.std["refc"] > 2  # so the check above can tell normalised from physical units


def test_outputs_are_clipped_to_the_physical_floor_only():
    norm = Normalisation({"refc": 0.0, "qpe_01h": 1.0, "t2m": 290.0}, {"refc": 10.0, "qpe_01h": 2.0, "t2m": 5.0}, "test")
    x = np.array([[[-3.0, 0.5]], [[-3.0, 0.5]], [[-3.0, 0.5]]], dtype=np.float32)  # (vars, H=1, W=2), normalised
    out = norm.denormalise(x, ["refc", "qpe_01h", "t2m"])
    # below the floor -> the floor (refc -30 -> -10 dBZ, rain -5 -> 0 mm); above it, x * std + mean exactly
    np.testing.assert_array_equal(out, np.array([[[-10.0, 5.0]], [[0.0, 2.0]], [[275.0, 292.5]]], dtype=np.float32))


def test_checkpoint_normalisation_is_preferred(tiny, tmp_path):
    store, cfg, _, _ = tiny
    stats = {v: {"mean": 1.0, "std": 2.0} for v in cfg.data.variables}
    fm = load_forecast_model(tiny_checkpoint(tmp_path / "n.pt", cfg, normalisation=stats))
    norm = normalisation_for(fm, store)
    assert norm.source == "checkpoint" and norm.mean["refc"] == 1.0 and norm.std["cape"] == 2.0


def test_inline_frames_give_the_store_conditioning(tiny):
    store, _, fm, _ = tiny
    init = store.committed_times()[-1]
    norm = normalisation_for(fm, store)
    i = store.index_of(init)
    frames = store.read_frames(fm.variables, [i - 1, i])
    np.testing.assert_array_equal(conditioning_from_frames(fm, frames, norm, store),
                                  conditioning_from_store(fm, store, init, norm))
    with pytest.raises(ForecastError, match=r"conditioning shape \(1, 3, 16, 16\) must be \(n_past=2"):
        conditioning_from_frames(fm, frames[:1], norm, store)


def test_init_time_errors_name_the_time_and_the_range(tiny):
    store, _, fm, _ = tiny
    first, last = store.committed_times()[[0, -1]]
    # n_past = 2: the first committed time has no frame before it
    with pytest.raises(ForecastError, match=f"init_time {first}.*committed times of .* run {first} .. {last}"):
        _fc(fm, store, first)
    with pytest.raises(ForecastError, match="init_time 2024-06-02T10:00:00 is outside the store"):
        _fc(fm, store, np.datetime64("2024-06-02T10:00"))
    with pytest.raises(ForecastError, match="not on the store's 3600 s axis"):
        _fc(fm, store, np.datetime64("2024-06-01T15:30"))
    assert latest_init_time(store, fm.config) == last


def test_lead_hours_must_be_whole_model_steps(tiny, tmp_path):
    store, _, _, _ = tiny
    cfg2 = tiny_config(store.url, data={"dt_steps": 2})
    fm2 = load_forecast_model(tiny_checkpoint(tmp_path / "dt2.pt", cfg2))
    with pytest.raises(ForecastError, match="lead_hours=3 is not a whole number of model steps of 7200 s") as e:
        _fc(fm2, store, store.committed_times()[-1], lead_hours=3)
    assert e.value.field == "lead_hours"
    assert _fc(fm2, store, store.committed_times()[-1], members=1, lead_hours=4).shape[1] == 2


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ForecastError, match="nope.pt"):
        load_forecast_model(str(tmp_path / "nope.pt"))


def test_deterministic_checkpoint_gives_one_member(tiny, tmp_path):
    store, _, _, _ = tiny
    cfg = tiny_config(store.url, model={"kind": "deterministic"})
    fm = load_forecast_model(tiny_checkpoint(tmp_path / "det.pt", cfg))
    init = store.committed_times()[-1]
    one = _fc(fm, store, init, members=1, lead_hours=2)
    assert one.shape == (1, 2, 1, 16, 16) and np.isfinite(one).all()
    np.testing.assert_array_equal(one, _fc(fm, store, init, members=1, lead_hours=2, seed=99))  # no randomness
    with pytest.raises(ForecastError, match="deterministic model: one member, not 3"):
        _fc(fm, store, init, members=3)
