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


# -- every way a config can be unusable is one line naming the file or the override -----------------------------
def _line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_bad_files_are_one_line_naming_the_file(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: [3\n")
    cases = [(latin, r"not UTF-8 text \(byte 0xe9 at offset 9\)"), (broken, r"not valid YAML: .* at line 3"),
             (tmp_path, "is a folder")]
    for path, text in cases:
        with pytest.raises(ConfigError, match=text) as err:
            load_config(path)
        assert str(path) in _line(err)


def test_every_bad_key_is_named_on_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochz: 3, lr: -1}\nserve: {port: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    line = _line(err)
    assert line.startswith(f"invalid config {p}: ")
    assert all(k in line for k in ("train.epochz: unknown key", "train.lr:", "serve.port:")), line


@pytest.mark.parametrize("pairs, text", [
    (["k=["], r"override 'k=\[': the value '\[' is not valid YAML"),
    (["train.epochs"], "is not KEY=VALUE"),
    (["=3"], "is not KEY=VALUE"),
    (["train..epochs=3"], "is not KEY=VALUE"),
])
def test_bad_overrides_are_one_line(pairs, text):
    from def_ray.config import parse_overrides

    with pytest.raises(ConfigError, match=text) as err:
        parse_overrides(pairs)
    _line(err)


def test_overriding_inside_a_value_is_refused_and_inside_an_empty_section_works(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntrain:\n")
    assert load_config(p, {"train.epochs": 4}).train.epochs == 4  # `train:` alone is an empty section
    with pytest.raises(ConfigError, match="override name.first: name is a str, not a section"):
        load_config(p, {"name.first": 1})


def test_run_command_maps_errors_to_exit_status_and_one_line(capsys, monkeypatch):
    from def_ray.config import run_command

    monkeypatch.delenv("DEF_RAY_DEBUG", raising=False)

    def raiser(exc):
        def work():
            raise exc
        return work

    assert run_command("p", raiser(ConfigError("bad\n key"))) == 2
    assert capsys.readouterr().err == "p: bad key\n"
    assert run_command("p", raiser(LookupError("x")), (LookupError,)) == 2
    assert capsys.readouterr().err == "p: x\n"
    assert run_command("p", raiser(RuntimeError("boom\nmore"))) == 1
    assert capsys.readouterr().err.startswith("p: failed: RuntimeError: boom more (DEF_RAY_DEBUG=1")
    assert run_command("p", raiser(KeyboardInterrupt())) == 130
    assert run_command("p", lambda: 0) == 0
