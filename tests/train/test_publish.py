"""The exported model in MLflow: logged as a pyfunc model of its run, registered, aliased champion when promoted, tagged; loaded back
by models:/NAME@ALIAS (forecaster, pyfunc, `def-ray forecast`) it forecasts bit-identically the members of the
file it came from.  Against the session's real `mlflow server` (sqlite backend) on loopback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from def_ray.train.publish import git_commit, input_example_for, model_tags

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]


def test_git_commit_comes_from_the_code_version():
    assert git_commit("0.1.0+g6e6d69d7d191.dirty") == "6e6d69d7d191"
    assert git_commit("0.1.0+g6e6d69d7d191") == "6e6d69d7d191"
    assert git_commit("0.1.0") is None


@pytest.fixture(scope="module")
def published(mlflow_server, tmp_path_factory):
    """A tiny store and checkpoint, logged and registered through a training run's Tracker."""
    from def_ray.models.checkpoint import read_checkpoint
    from def_ray.models.description import ModelDescription
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store
    from def_ray.train.tracking import Tracker

    root = tmp_path_factory.mktemp("publish")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url, tracking={"tracking_uri": mlflow_server, "experiment": "publish-test"})
    ckpt = tiny_checkpoint(root / "best.pt", cfg)
    description = ModelDescription.from_dict(read_checkpoint(ckpt, build=False).description)
    tracker = Tracker.start(cfg.tracking, "publish", {"name": "publish"})
    # promoted: other tests of the session may have registered (and aliased) def-ray-diffusion on this server first
    pub = tracker.publish_model(ckpt, description, cfg.dump(), exported_epoch=2, export="best", promote=True)
    assert tracker.enabled and pub is not None, "publishing failed (see the warning)"
    tracker.end()
    cfg_file = root / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.dump()))
    return {"store": store, "cfg": cfg, "cfg_file": str(cfg_file), "ckpt": ckpt, "description": description,
            "tracker": tracker, "pub": pub, "root": root, "uri": mlflow_server}


def test_published_model_is_registered_aliased_and_tagged(published):
    from mlflow import MlflowClient

    pub, d = published["pub"], published["description"]
    client = MlflowClient(published["uri"])
    assert pub["name"] == "def-ray-diffusion" and pub["model_uri"] == "models:/def-ray-diffusion@champion"
    mv = client.get_model_version_by_alias("def-ray-diffusion", "champion")
    assert mv.version == pub["version"] and mv.run_id == published["tracker"].run_id
    commit = git_commit(d.provenance["code_version"])
    assert commit and mv.tags["mlflow.source.git.commit"] == commit
    assert mv.tags["data_period"] == d.provenance["data_period"] and mv.tags["exported_epoch"] == "2"
    run = client.get_run(published["tracker"].run_id)
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags["data_period"] == mv.tags["data_period"]
    assert run.outputs and run.outputs.model_outputs  # the logged model is an output of its run
    logged = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert logged.experiment_id == run.info.experiment_id and logged.name == "model"


def test_model_by_alias_forecasts_the_members_of_its_file(published, monkeypatch):
    import mlflow

    from def_ray.forecast.forecaster import Forecaster

    monkeypatch.setenv("MLFLOW_TRACKING_URI", published["uri"])
    store, cfg = published["store"], published["cfg"]
    from_file = Forecaster.load(published["ckpt"])
    from_registry = Forecaster.load("models:/def-ray-diffusion@champion")
    assert from_registry.sha256 == from_file.sha256
    init = from_file.init_time(store)
    options = from_file.sampler_options(cfg.forecast.sampler)
    ref = from_file.forecast(store, init, 5, 1, options, seed=11)
    got = from_registry.forecast(store, init, 5, 1, options, seed=11)
    assert np.array_equal(got, ref)  # bit-identical, not close

    # the pyfunc: physical frames in, the same members out
    model = mlflow.pyfunc.load_model("models:/def-ray-diffusion@champion")
    i = store.index_of(init)
    frames = store.read_frames(from_file.variables, [i - 1, i], slice(None), slice(None))
    out = model.predict(frames, params={"members": 5, "seed": 11, "sampler": options.name, "steps": options.steps})
    assert out.dtype == np.float32 and np.array_equal(out, ref)
    assert model.metadata.get_input_schema().inputs[0].shape == (2, 3, -1, -1)
    example = input_example_for(published["description"], cfg.dump())
    assert model.predict(example).shape == (4, 1, 1) + example.shape[2:]  # the params' defaults: 4 members

    # the run's logged model reaches the same file
    run_id = published["tracker"].run_id
    assert Forecaster.load(f"runs:/{run_id}/model", light=True).sha256 == from_file.sha256


def test_a_new_export_takes_the_alias_only_when_promoted(published):
    """With a champion (the fixture's version), a new registration leaves it unless train.promote says so; with
    none, the first registration takes it."""
    from mlflow import MlflowClient

    from def_ray.config import TrackingConfig
    from def_ray.train.tracking import Tracker

    client = MlflowClient(published["uri"])

    def publish(promote):
        tracker = Tracker.start(TrackingConfig(tracking_uri=published["uri"], experiment="publish-test"), "again",
                                None)
        pub = tracker.publish_model(published["ckpt"], published["description"], published["cfg"].dump(),
                                    exported_epoch=1, promote=promote)
        tracker.end()
        return pub, client.get_model_version_by_alias("def-ray-diffusion", "champion").version, \
            client.get_run(tracker.run_id).data.tags["registered_model"]

    first = published["pub"]["version"]
    for promote in (None, False):  # default: the model has a champion already; False: never
        pub, champion, tag = publish(promote)
        assert int(pub["version"]) > int(first) and champion == first
        assert not pub["promoted"] and pub["champion"] == first
        assert pub["model_uri"] == f"models:/def-ray-diffusion/{pub['version']}" and "@" not in tag
    pub, champion, tag = publish(True)
    assert pub["promoted"] and champion == pub["version"] == pub["champion"]
    assert pub["model_uri"] == "models:/def-ray-diffusion@champion" and tag.endswith("(@champion)")
    client.delete_registered_model_alias("def-ray-diffusion", "champion")  # no champion now: the default takes it
    pub, champion, tag = publish(None)
    assert pub["promoted"] and champion == pub["version"] and tag.endswith("(@champion)")
    published["pub"] = pub


@pytest.mark.parametrize("uri, says", [
    ("models:/def-ray-diffusion@no-such-alias", "has no alias 'no-such-alias'"),
    ("models:/no-such-model@champion", "no registered model 'no-such-model'"),
    ("models:/def-ray-diffusion/9999", "has no version 9999"),
])
def test_a_missing_model_or_alias_is_one_line_exit_2(published, uri, says, capsys, monkeypatch):
    from def_ray.cli import main

    monkeypatch.delenv("DEF_RAY_DEBUG", raising=False)
    # a wrong server in the environment: the config's tracking.tracking_uri names the right one and comes first
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    out = published["root"] / "never.nc"
    status = main(["forecast", "--config", published["cfg_file"], "--model", uri, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert uri in err and says in err and published["uri"] in err
    assert not Path(out).exists()


def test_tags_name_the_commit_and_period(published):
    tags = model_tags(published["description"], exported_epoch=5, export="best", sha256="ab")
    assert tags["exported_epoch"] == "5" and tags["checkpoint_sha256"] == "ab"
    assert tags["data_period"] == published["description"].provenance["data_period"]
