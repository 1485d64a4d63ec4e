from pathlib import Path

import pytest

from def_ray.config import Config, ConfigError, config_from_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert set(cfg.data.target_variables) <= set(cfg.data.variables)


def test_seed_configs_have_the_documented_phases():
    root = CONFIGS[0].parent
    home = load_config(root / "diffusion_4090.yaml")
    assert (home.model.base_dims, home.model.timesteps, home.train.batch_size) == (64, 200, 1)
    assert (home.fetch.end - home.fetch.start).days + 1 == 14
    prod = load_config(root / "diffusion_production.yaml")
    assert 128 <= prod.model.base_dims <= 256 and prod.model.timesteps == 1000 and prod.train.num_workers > 1
    assert load_config(root / "light_aggressive.yaml").model.kind == "deterministic"


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        load_config(p)


@pytest.mark.parametrize("raw, key", [
    ({"data": {"variables": ["refc", "nope"]}}, "data.variables"),
    ({"data": {"target_variables": ["prate"]}}, "data"),
    ({"model": {"attention_levels": [5]}}, "model"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"data": {"crop": 30}, "model": {"channel_mults": [1, 2, 4]}}, "crop"),
    ({"forecast": {"sampler": {"steps": 500}}, "model": {"timesteps": 200}}, "forecast.sampler.steps"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, "test.yaml")
    assert key in str(err.value) and "test.yaml" in str(err.value)


def test_overrides_apply_and_validate(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    assert load_config(p, {"train.epochs": 7}).train.epochs == 7
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(p, {"train.epochs": 0})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
