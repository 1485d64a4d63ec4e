"""The app as `serve run` / `serve deploy` build it from a config file (binding only; nothing is started)."""

import pytest
import yaml

from def_ray.serve.app import build_app, ingress_limits, proxy_timeout_s
from def_ray.serve.http import key_hash


def _deployments(app):
    # the bound graph: the ingress, with the sampler as its first init argument
    ingress = app._bound_deployment
    sampler = ingress.init_args[0]._bound_deployment
    return ingress, sampler


def test_build_app_sizes_deployments_from_the_config(tmp_path, monkeypatch):
    cfg = {"serve": {"sampler_replicas": 3, "gpus_per_replica": 1, "max_ongoing_requests": 2,
                     "max_queued_requests": 5, "api_key_env": "DEF_RAY_TEST_BUILD_KEY"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("DEF_RAY_TEST_BUILD_KEY", "k1")
    ingress, sampler = _deployments(build_app({"config": str(path), "model": "s3://b/model.pt"}))
    assert sampler.name == "EnsembleSampler" and ingress.name == "ForecastIngress"
    assert sampler.num_replicas == 3 and sampler.ray_actor_options["num_gpus"] == 1
    assert sampler.max_ongoing_requests == 2 and sampler.max_queued_requests == 5
    # the app admits what the three sampler replicas hold (3 x (2 + 5)) and answers the rest 503 itself, from Serve
    # slots above that: no request waits in Serve's queue, where its time would not count against the timeout
    from def_ray.config import load_config

    sv = load_config(path).serve
    assert ingress_limits(sv) == (21, 42, 42)
    assert ingress.max_ongoing_requests == 42 and ingress.max_queued_requests == 42
    assert proxy_timeout_s(sv) > sv.request_timeout_s
    # the key travels only as its hash, never in clear
    assert ingress.init_args[-1] == key_hash("k1") and "k1" not in repr(ingress.init_args)
    assert ingress.init_args[2] == "s3://b/model.pt"


def test_build_app_without_key_env_is_open_and_needs_its_args(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("serve: {api_key_env: DEF_RAY_TEST_UNSET_KEY}\n")
    monkeypatch.delenv("DEF_RAY_TEST_UNSET_KEY", raising=False)
    ingress, _ = _deployments(build_app({"config": str(path), "model": "m.pt"}))
    assert ingress.init_args[-1] is None
    with pytest.raises(ValueError, match=r"needs args \['model'\]"):
        build_app({"config": str(path)})
