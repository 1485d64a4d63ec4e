"""The job entry points: a bad config fails before any worker starts, naming the key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _job(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture
def config_file(tmp_path, make_store, make_config):
    store = make_store(str(tmp_path / "s.zarr"))
    cfg = make_config(store, str(tmp_path / "runs"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.dump()))
    return path


@pytest.mark.parametrize("override,key", [
    ("train.lr=-1", "train.lr"),
    ("train.epochs=zero", "train.epochs"),
    ("train.no_such_key=1", "train.no_such_key"),
    ("data.crop=64", "data.crop=64"),  # larger than the 24 x 24 store
    ("data.variables=[refc,cape]", "data.variables"),  # cape is not in the store
    ("train.batch_size=64", "train.batch_size=64"),  # more than the 30 training windows
    ("train.num_workers=64", "train.num_workers=64"),
])
def test_bad_config_fails_before_any_worker_naming_the_key(config_file, capsys, override, key):
    rc = _job("train_deterministic")(["--config", str(config_file), "--override", override])
    err = capsys.readouterr().err
    assert rc == 2 and key in err
    assert not (config_file.parent / "runs").exists()  # nothing started, nothing written


def test_job_refuses_the_other_model_kind(config_file, capsys):
    rc = _job("train_diffusion")(["--config", str(config_file)])
    assert rc == 2 and "model.kind" in capsys.readouterr().err


def test_missing_config_file_is_named(tmp_path, capsys):
    rc = _job("train_diffusion")(["--config", str(tmp_path / "nope.yaml")])
    assert rc == 2 and "nope.yaml" in capsys.readouterr().err
