"""The one forecaster: conditioning from the store, member reproducibility, units, the checkpoint's statistics,
and its errors."""

import numpy as np
import pytest

from def_ray.config import SamplerConfig
from def_ray.data.normalise import Normaliser
from def_ray.forecast.forecaster import ForecastError, Forecaster, latest_init_time
from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url)
    fm = Forecaster.load(tiny_checkpoint(root / "m.pt", cfg))
    return store, cfg, fm, root


def _fc(fm, store, init, members=4, lead_hours=1, seed=5, member_offset=0, **kw):
    options = SamplerConfig(**{"name": "dpmpp", "steps": 2, "member_batch_size": 4, "spread_scale": 1.0, **kw})
    return fm.forecast(store, init, members, lead_hours, options, seed=seed, member_offset=member_offset)


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
    norm = fm.normaliser(store)
    assert norm.source.startswith("checkpoint")
    cond = fm.conditioning(store, init, norm)
    raw = rollout(fm.model, torch.from_numpy(cond)[None], 1, fm.layout, 2, sampler="dpmpp", steps=2, seed=5,
                  member_batch_size=4).numpy()
    expect = np.maximum(raw * np.float32(norm.std["refc"]) + np.float32(norm.mean["refc"]), -10.0)
    np.testing.assert_allclose(_fc(fm, store, init, members=2), expect, rtol=1e-6)
    assert norm.std["refc"] > 2  # so the check above can tell normalised from physical units


def test_outputs_are_clipped_to_the_physical_floor_only():
    norm = Normaliser({"refc": 0.0, "qpe_01h": 1.0, "t2m": 290.0}, {"refc": 10.0, "qpe_01h": 2.0, "t2m": 5.0}, "test")
    x = np.array([[[-3.0, 0.5]], [[-3.0, 0.5]], [[-3.0, 0.5]]], dtype=np.float32)  # (vars, H=1, W=2), normalised
    out = norm.denormalise(x, ["refc", "qpe_01h", "t2m"])
    # below the floor -> the floor (refc -30 -> -10 dBZ, rain -5 -> 0 mm); above it, x * std + mean exactly
    np.testing.assert_array_equal(out, np.array([[[-10.0, 5.0]], [[0.0, 2.0]], [[275.0, 292.5]]], dtype=np.float32))


def test_checkpoint_normalisation_is_preferred(tiny, tmp_path):
    store, cfg, _, _ = tiny
    stats = {v: {"mean": 1.0, "std": 2.0} for v in cfg.data.variables}
    fm = Forecaster.load(tiny_checkpoint(tmp_path / "n.pt", cfg, normalisation=stats))
    norm = fm.normaliser(store)
    assert norm.source.startswith("checkpoint") and norm.mean["refc"] == 1.0 and norm.std["cape"] == 2.0


def test_inline_frames_give_the_store_conditioning(tiny):
    store, _, fm, _ = tiny
    init = store.committed_times()[-1]
    norm = fm.normaliser(store)
    i = store.index_of(init)
    frames = store.read_frames(fm.variables, [i - 1, i])
    np.testing.assert_array_equal(fm.conditioning_from_frames(frames, store, norm), fm.conditioning(store, init, norm))
    with pytest.raises(ForecastError, match=r"conditioning shape \(1, 3, 16, 16\) must be \(n_past=2"):
        fm.conditioning_from_frames(frames[:1], store, norm)


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
    assert latest_init_time(store, fm.n_past, fm.dt_steps) == last


def test_lead_hours_must_be_whole_model_steps(tiny, tmp_path):
    store, _, _, _ = tiny
    cfg2 = tiny_config(store.url, data={"dt_steps": 2})
    fm2 = Forecaster.load(tiny_checkpoint(tmp_path / "dt2.pt", cfg2))
    with pytest.raises(ForecastError, match="lead_hours=3 is not a whole number of model steps of 7200 s") as e:
        _fc(fm2, store, store.committed_times()[-1], lead_hours=3)
    assert e.value.field == "lead_hours"
    assert _fc(fm2, store, store.committed_times()[-1], members=1, lead_hours=4).shape[1] == 2


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ForecastError, match="nope.pt"):
        Forecaster.load(str(tmp_path / "nope.pt"))


def test_deterministic_checkpoint_gives_one_member(tiny, tmp_path):
    store, _, _, _ = tiny
    cfg = tiny_config(store.url, model={"kind": "deterministic"})
    fm = Forecaster.load(tiny_checkpoint(tmp_path / "det.pt", cfg))
    init = store.committed_times()[-1]
    one = _fc(fm, store, init, members=1, lead_hours=2)
    assert one.shape == (1, 2, 1, 16, 16) and np.isfinite(one).all()
    np.testing.assert_array_equal(one, _fc(fm, store, init, members=1, lead_hours=2, seed=99))  # no randomness
    with pytest.raises(ForecastError, match="deterministic model: one member, not 3"):
        _fc(fm, store, init, members=3)


def test_checkpoint_describes_the_model_and_its_training_statistics(tiny):
    from def_ray.data.ray_dataset import prepare_windows

    store, cfg, fm, _ = tiny
    d = fm.description
    assert (d.variables, d.targets, d.n_past, d.dt_steps) == (("refc", "t2m", "cape"), ("refc",), 2, 1)
    assert d.step_seconds == 3600 and d.grid["shape"] == [16, 16] and d.grid["projection"] == store.projection
    assert d.provenance["code_version"] and " .. " in d.provenance["data_period"]
    # the statistics are those of the training split, which differ from the whole store's
    train = prepare_windows(cfg.data).spec.normaliser
    assert fm.normaliser(store).mean == pytest.approx(dict(train.mean))
    assert fm.normaliser(store).mean["refc"] != pytest.approx(store.stats()["refc"].mean)
    assert len(fm.sha256) == 64


def test_checkpoint_without_statistics_loads_warns_and_says_where_they_come_from(tiny, tmp_path):
    store, cfg, described, _ = tiny
    with pytest.warns(UserWarning, match="carries no training statistics.*statistics of the store they read"):
        old = Forecaster.load(tiny_checkpoint(tmp_path / "old.pt", cfg, described=False))
    norm = old.normaliser(store)
    assert norm.source.startswith(f"store statistics of {store.url}")
    assert norm.mean["refc"] == pytest.approx(store.stats()["refc"].mean)
    assert old.description.variables == described.description.variables and old.step_seconds(store) == 3600
    with pytest.raises(ForecastError, match="no normalisation statistics and no store"):
        old.normaliser(None)


def test_sampler_options_checkpoint_defaults_then_config_keys_then_overrides(tiny, tmp_path):
    store, _, _, _ = tiny
    cfg = tiny_config(store.url, forecast={"sampler": {"name": "ddim", "steps": 3, "eta": 0.4}})
    fc = Forecaster.load(tiny_checkpoint(tmp_path / "s.pt", cfg), light=True)
    assert fc.model is None  # light: the description only
    # the checkpoint's defaults apply where a config is silent ...
    assert fc.sampler_options(SamplerConfig()).model_dump() == fc.description.sampler_defaults().model_dump()
    assert fc.sampler_options(SamplerConfig()).eta == 0.4
    # ... keys a config sets win, and request overrides win over both (None = not given)
    given = SamplerConfig.model_validate({"steps": 2})
    opts = fc.sampler_options(given, spread_scale=1.5, name=None)
    assert (opts.name, opts.steps, opts.eta, opts.spread_scale) == ("ddim", 2, 0.4, 1.5)
    with pytest.raises(ForecastError, match="without its network"):
        fc.sample(np.zeros((6, 16, 16), np.float32), 1, 1, opts, seed=0)


def test_a_config_that_contradicts_the_checkpoint_is_refused_naming_both(tiny):
    from def_ray.config import DataConfig

    store, _, fm, _ = tiny
    fm.check_config(DataConfig())  # keys a config leaves unset are the checkpoint's
    fm.check_config(DataConfig(variables=["refc", "t2m", "cape"], n_past=2))
    with pytest.raises(ForecastError, match=r"data.target_variables=\['t2m'\] in the config, but checkpoint .* "
                                            r"target_variables=\['refc'\]") as e:
        fm.check_config(DataConfig(variables=["refc", "t2m", "cape"], target_variables=["t2m"]))
    assert e.value.field == "target_variables"
    with pytest.raises(ForecastError, match="data.n_past=4"):
        fm.check_config(DataConfig(n_past=4))
