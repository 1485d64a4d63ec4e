"""Serve under load (issue 19 item 5): requests for the same forecast share their network passes and still get
exactly the members they would get alone; the sampler deployment autoscales; the app's custom Ray metrics reach
the node's Prometheus export (what the Ray dashboard's metrics show).

In process: an EnsembleSampler replica's job sharing (union of member ranges, joining the running job, cancelling
only when every caller is gone), bit-identical with unshared calls.  Over HTTP on loopback against a real Serve app
with 2 sampler replicas: concurrent requests (same init time and seed, different member counts, and another seed)
equal the same requests sent alone, bit for bit (NetCDF answers), and the metrics show the shared calls."""

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import REPO, free_port, wait_http

pytestmark = [pytest.mark.ray, pytest.mark.serve]

SEED = 5
APP = {"application": "shared"}  # the Serve tags of this module's app (other apps share the node)
WAIT_S = 0.3  # serve.batch_wait_timeout_s of the apps here: callers arriving together surely share


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    root = tmp_path_factory.mktemp("shared")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url, serve={
        "sampler_replicas": 2, "cpus_per_replica": 0.5, "ingress_cpus": 0, "max_members": 40, "max_steps": 8,
        "batch_wait_timeout_s": WAIT_S, "route_prefix": "/shared", "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"})
    return {"store": store, "cfg": cfg, "ckpt": tiny_checkpoint(root / "m.pt", cfg),
            "init": str(store.committed_times()[-1].astype("datetime64[s]"))}


# -- one replica, in process ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(ray_session, tiny):
    from def_ray.forecast.forecaster import Forecaster
    from def_ray.serve.sampler import EnsembleSampler

    sampler = EnsembleSampler.func_or_class(tiny["ckpt"], None, 1, WAIT_S)
    fc = Forecaster.load(tiny["ckpt"], light=True)
    norm = fc.normaliser(tiny["store"])
    cond = fc.conditioning(tiny["store"], tiny["init"], norm)
    options = fc.sampler_options(tiny["cfg"].forecast.sampler).model_copy(update={"steps": 4,
                                                                                   "member_batch_size": 2})
    return sampler, cond, options, norm


def _alone(replica, count, offset, seed=SEED):
    from def_ray.forecast.members import MemberSampler

    sampler, cond, options, norm = replica
    return MemberSampler.sample(sampler, cond, count, 1, options, seed, offset, norm)


def test_calls_of_one_forecast_share_one_job_and_get_their_own_members(replica):
    sampler, cond, options, norm = replica
    asks = [(4, 0), (4, 2), (3, 0), (1, 5)]  # (members, offset): union 0..5, drawn once

    async def together():
        return await asyncio.gather(*(sampler.sample(cond.copy(), n, 1, options, SEED, o, norm) for n, o in asks))

    jobs, calls = sampler.jobs, sampler.calls
    got = asyncio.run(together())
    assert sampler.jobs - jobs == 1 and sampler.calls - calls == 1  # one job, one interval 0..5
    for (n, o), g in zip(asks, got):
        assert g.shape[0] == n
        assert np.array_equal(g, _alone(replica, n, o)), (n, o)  # bit-identical with the call alone
    # another seed or lead is another forecast: its own job
    jobs = sampler.jobs

    async def two_forecasts():
        return await asyncio.gather(sampler.sample(cond, 2, 1, options, SEED, 0, norm),
                                    sampler.sample(cond, 2, 1, options, SEED + 1, 0, norm))

    a, b = asyncio.run(two_forecasts())
    assert sampler.jobs - jobs == 2
    assert np.array_equal(b, _alone(replica, 2, 0, SEED + 1)) and not np.array_equal(a, b)


def test_a_shared_job_is_cancelled_only_when_every_caller_is(replica):
    sampler, cond, options, norm = replica

    async def one_leaves():
        keep = asyncio.ensure_future(sampler.sample(cond, 3, 1, options, SEED, 0, norm))
        leave = asyncio.ensure_future(sampler.sample(cond, 2, 1, options, SEED, 4, norm))
        await asyncio.sleep(WAIT_S / 3)  # both joined the open job
        leave.cancel()
        return await keep

    jobs = sampler.jobs
    assert np.array_equal(asyncio.run(one_leaves()), _alone(replica, 3, 0))
    assert sampler.jobs - jobs == 1

    async def all_leave():
        calls = [asyncio.ensure_future(sampler.sample(cond, 2, 1, options, SEED, 0, norm)) for _ in range(2)]
        await asyncio.sleep(WAIT_S / 3)
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(WAIT_S)  # past the moment the job would have started
        # a later call opens a new job and gets its members
        return await sampler.sample(cond, 2, 1, options, SEED, 0, norm)

    jobs = sampler.jobs
    assert np.array_equal(asyncio.run(all_leave()), _alone(replica, 2, 0))
    assert sampler.jobs - jobs == 1  # the abandoned job never ran


# -- the app over HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(ray_session, tiny):
    from ray import serve

    from def_ray.serve.app import forecast_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(forecast_app(tiny["cfg"], tiny["ckpt"]), name="shared", route_prefix="/shared")
    url = f"http://127.0.0.1:{port}/shared"
    wait_http(url + "/healthz", 60)
    yield url
    serve.shutdown()


def _members(url, init, members, seed=SEED):
    import tempfile

    import xarray as xr

    r = requests.post(url + "/forecast", json={"init_time": init, "members": members, "seed": seed, "steps": 4,
                                               "lead_hours": 1, "output": "netcdf"}, timeout=120)
    assert r.status_code == 200, r.text
    with tempfile.NamedTemporaryFile(suffix=".nc") as f:
        f.write(r.content)
        f.flush()
        ds = xr.load_dataset(f.name, engine="netcdf4")
    return {v: ds[v].values for v in ds.data_vars if "member" in ds[v].dims}


def _metrics() -> str:
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _total(text: str, name: str, **tags: str) -> float:
    """Sum of the samples of metric `name` (Ray's export prefixes ray_; counters may end in _total)."""
    total = 0.0
    for m in re.finditer(rf"^ray_{name}(?:_total)?\{{([^}}]*)\}} (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in m.group(1) for k, v in tags.items()):
            total += float(m.group(2))
    return total


def test_concurrent_requests_share_passes_and_get_the_members_they_get_alone(app, tiny):
    init = tiny["init"]
    asks = [6, 6, 3, 6, 3, 6]
    alone = {n: _members(app, init, n) for n in set(asks)}
    other = _members(app, init, 6, SEED + 1)
    gate = threading.Barrier(len(asks) + 1)

    def client(ask):
        gate.wait()
        return _members(app, init, *ask)

    with ThreadPoolExecutor(len(asks) + 1) as pool:
        got = list(pool.map(client, [(n, SEED) for n in asks] + [(6, SEED + 1)]))
    for n, g in zip(asks, got):
        assert g.keys() == alone[n].keys() and g
        for v in g:
            assert np.array_equal(g[v], alone[n][v]), (n, v)  # bit-identical with the request alone
    assert all(np.array_equal(got[-1][v], other[v]) for v in other)

    # the metrics reach the node's Prometheus export (the dashboard's source); the agent exports every few seconds
    requested = sum(asks) + sum(set(asks)) + 12
    answered = len(asks) + len(set(asks)) + 2
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = _metrics()
        if _total(text, "def_ray_forecast_requests", status="200", **APP) >= answered:
            break
        time.sleep(2)
    assert _total(text, "def_ray_forecast_requests", status="200", **APP) >= answered, text[-3000:]
    shared = (_total(text, "def_ray_ingress_shared_calls", **APP)
              + _total(text, "def_ray_sampler_shared_requests", **APP))
    drawn = _total(text, "def_ray_members_sampled", **APP)
    assert shared >= 3, "the concurrent identical requests shared no sampler call"
    assert 0 < drawn < requested, (drawn, requested)
    assert _total(text, "def_ray_sampler_requests", **APP) >= 1
    assert _total(text, "def_ray_members_sampled", deployment="EnsembleSampler", **APP) == drawn
    assert re.search(r"^ray_def_ray_member_pass_seconds_bucket\{", text, re.M)
    assert re.search(r"^ray_def_ray_sampler_queue_length\{", text, re.M)
    assert re.search(r"^ray_def_ray_forecast_seconds_bucket\{", text, re.M)
    print(f"\nmembers asked {requested}, drawn {drawn:g}; shared calls {shared:g}")


# -- autoscaling --------------------------------------------------------------------------------------------------


def test_sampler_scaling_from_the_config():
    from def_ray.config import ConfigError, ServeConfig
    from def_ray.serve.app import forecast_app, sampler_scaling
    from def_ray.testing import tiny_config

    assert sampler_scaling(ServeConfig(sampler_replicas=3)) == {"num_replicas": 3}
    auto = sampler_scaling(ServeConfig(sampler_replicas=3, sampler_max_replicas=6, target_ongoing_requests=1.5))
    assert auto == {"autoscaling_config": {"min_replicas": 1, "initial_replicas": 3, "max_replicas": 6,
                                           "target_ongoing_requests": 1.5}}
    with pytest.raises(ConfigError, match="sampler_max_replicas"):
        sampler_scaling(ServeConfig(sampler_replicas=3, sampler_max_replicas=2))
    cfg = tiny_config("/nonexistent.zarr", serve={"sampler_replicas": 2, "sampler_max_replicas": 4,
                                                  "batch_wait_timeout_s": 0.05})
    sampler = forecast_app(cfg, "s3://b/m.pt")._bound_deployment.init_args[0]._bound_deployment
    ac = sampler._deployment_config.autoscaling_config
    assert (ac.min_replicas, ac.initial_replicas, ac.max_replicas) == (1, 2, 4)
    assert sampler.init_args[-1] == 0.05  # batch_wait_timeout_s reaches the replicas


def test_production_serve_config_autoscales_the_sampler_within_the_gpu_pool():
    from ray.serve.schema import ServeDeploySchema

    from def_ray.config import load_config

    raw = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(raw)
    app = raw["applications"][0]
    sampler = next(d for d in app["deployments"] if d["name"] == "EnsembleSampler")
    ac = sampler["autoscaling_config"]
    assert "num_replicas" not in sampler
    cfg = load_config(REPO / app["args"]["config"])
    assert ac["initial_replicas"] == cfg.serve.sampler_replicas
    assert 1 <= ac["min_replicas"] <= ac["initial_replicas"] <= ac["max_replicas"]
    assert ac["target_ongoing_requests"] <= sampler["max_ongoing_requests"]
    docs = list(yaml.safe_load_all((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text()))
    service = next(d for d in docs if d and d.get("kind") == "RayService")["spec"]
    assert yaml.safe_load(service["serveConfigV2"]) == raw
    pools = service["rayClusterConfig"]["workerGroupSpecs"]
    gpu_pods = sum(p["maxReplicas"] for p in pools if "nvidia.com/gpu" in str(p["template"]))
    assert ac["max_replicas"] * sampler["ray_actor_options"]["num_gpus"] <= gpu_pods
