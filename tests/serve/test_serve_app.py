"""The Serve app over real HTTP on the session's local Ray: results equal to the batch job's, every refusal with
its status and field, the API key, load shedding and the request timeout."""

import base64
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import xarray as xr
import yaml

from def_ray.forecast.products import exceedance_probability
from tests.conftest import free_port, wait_http

pytestmark = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]

KEY_ENV = "DEF_RAY_TEST_SERVE_KEY"
KEY = "s3cret-for-tests"
MEMBERS, SEED = 6, 11


@pytest.fixture(scope="module")
def setup(ray_session, tmp_path_factory):
    from ray import serve

    from def_ray.commands import forecast_main as batch_main
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store
    from def_ray.forecast.writer import open_forecast
    from def_ray.serve.app import forecast_app

    root = tmp_path_factory.mktemp("serve")
    store = tiny_store(root / "s.zarr", hours=20)
    small = {"sampler_replicas": 2, "cpus_per_replica": 0.5, "ingress_cpus": 0, "max_members": 40, "max_steps": 8,
             "max_body_bytes": 64 * 1024, "route_prefix": "/open", "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"}
    cfg = tiny_config(store.url, serve=small)
    ckpt = tiny_checkpoint(root / "m.pt", cfg)
    # the reference: the batch job with the same seed (before Serve takes its CPUs)
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.dump()))
    out = root / "batch.nc"
    assert batch_main(["--model", ckpt, "--config", str(cfg_path), "--members", str(MEMBERS), "--out", str(out),
                       "--no-progress", "-o", f"forecast.seed={SEED}"]) == 0
    batch = open_forecast(str(out)).load()
    # the guarded app: another model with 2-hour steps, an API key, one sampler slot and a one-place queue
    cfg2 = tiny_config(store.url, data={"dt_steps": 2}, serve={
        "sampler_replicas": 1, "cpus_per_replica": 0.5, "ingress_cpus": 0, "max_ongoing_requests": 1,
        "max_queued_requests": 1, "max_members": 200, "max_steps": 10, "route_prefix": "/guarded",
        "api_key_env": KEY_ENV})
    ckpt2 = tiny_checkpoint(root / "m2.pt", cfg2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    os.environ[KEY_ENV] = KEY
    try:
        serve.run(forecast_app(cfg, ckpt), name="open", route_prefix="/open")
        serve.run(forecast_app(cfg2, ckpt2), name="guarded", route_prefix="/guarded")
    finally:
        del os.environ[KEY_ENV]
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/open/healthz", 60)
    yield {"base": base, "store": store, "batch": batch, "cfg": cfg, "ckpt": ckpt, "root": root}
    serve.shutdown()


def _post(setup, body, app="open", **kw):
    return requests.post(f"{setup['base']}/{app}/forecast", json=body, timeout=120, **kw)


def _init(setup):
    return str(setup["batch"]["forecast_reference_time"].values.astype("datetime64[s]"))


def _request(setup, **extra):
    body = {"init_time": _init(setup), "members": MEMBERS, "seed": SEED, "lead_hours": 1}
    body.update(extra)
    return body


def test_summary_equals_the_batch_job(setup):
    r = _post(setup, _request(setup))
    assert r.status_code == 200, r.text
    got = r.json()
    batch = setup["batch"]
    prob = np.asarray(got["variables"]["refc"]["probability"], dtype=np.float32)
    assert prob.shape == (4, 1, 16, 16) and got["shape"] == [1, 16, 16]
    assert ((prob >= 0) & (prob <= 1)).all()
    # same seed, members split 3 + 3 over two replicas here and 4 + 2 over two actors there: equal to the bit
    np.testing.assert_array_equal(prob, batch["refc_probability"].values)
    np.testing.assert_array_equal(np.asarray(got["variables"]["refc"]["mean"], np.float32), batch["refc_mean"].values)
    np.testing.assert_array_equal(np.asarray(got["variables"]["refc"]["quantiles"], np.float32),
                                  batch["refc_quantile"].values)
    assert got["valid_time"] == [str(np.datetime64(_init(setup)) + np.timedelta64(1, "h"))]
    assert batch["refc_mean"].values.std() > 0  # not a constant field: the comparisons above mean something
    # thresholds inside the members' range give probabilities strictly between 0 and 1 somewhere
    members = batch["refc"].values
    thr = [float(np.quantile(members, 0.3)), float(np.median(members))]
    r = _post(setup, _request(setup, thresholds=thr))
    prob = np.asarray(r.json()["variables"]["refc"]["probability"], dtype=np.float32)
    np.testing.assert_array_equal(prob, exceedance_probability(members, thr))
    assert ((prob > 0) & (prob < 1)).any()


def test_concurrent_requests_give_the_batch_members(setup):
    # 4 requests at once = 8 member ranges on 2 replicas: each replica holds several calls at the same time, and
    # every answer must still be the batch job's ensemble to the bit
    gate = threading.Barrier(4)

    def fire(_):
        gate.wait()
        return _post(setup, _request(setup, output="netcdf"))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(fire, range(4)))
    for a in answers:
        assert a.status_code == 200, a.text
        np.testing.assert_array_equal(_nc(a.content, setup["root"])["refc"].values, setup["batch"]["refc"].values)


def test_netcdf_output_with_bbox_is_the_batch_forecast_cropped(setup):
    r = _post(setup, _request(setup, output="netcdf", bbox={"y0": 2, "y1": 10, "x0": 4, "x1": 12}))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-netcdf"
    ds = _nc(r.content, setup["root"])
    ref = setup["batch"].isel(y=slice(2, 10), x=slice(4, 12))
    np.testing.assert_array_equal(ds["refc"].values, ref["refc"].values)
    np.testing.assert_array_equal(ds["latitude"].values, ref["latitude"].values)
    assert ds.attrs["seed"] == SEED and ds.attrs["members"] == MEMBERS


def _nc(data, root):
    path = root / f"resp-{time.monotonic_ns()}.nc"
    path.write_bytes(data)
    return xr.load_dataset(path, engine="netcdf4")


@pytest.mark.parametrize("sampler", [{"name": "ddpm", "steps": 4}, {"name": "ddim", "steps": 3, "eta": 0.7},
                                     {"name": "ddim", "steps": 3, "eta": 0.0}, {"name": "dpmpp", "steps": 2}],
                         ids=["ddpm", "ddim-eta0.7", "ddim-eta0", "dpmpp"])
def test_batch_job_serve_and_verification_give_the_same_members(setup, sampler):
    """One forecaster behind all three: for every sampler (DDIM with eta > 0 included) the same checkpoint, init
    time, seed and member give bit-identical members."""
    from def_ray.forecast.batch import run_forecast_job
    from def_ray.testing import tiny_config
    from def_ray.verify.forecasters import model_forecaster

    store, root = setup["store"], setup["root"]
    init = np.datetime64(_init(setup))
    i = store.index_of(init)  # verification seeds case i with seed + i
    cfg = tiny_config(store.url, forecast={"sampler": {**sampler, "member_batch_size": 4}, "cpus_per_actor": 0.1})
    batch = run_forecast_job(cfg, setup["ckpt"], init_time=init, members=MEMBERS, seed=SEED + i, progress=False,
                             out=str(root / f"parity-{'-'.join(map(str, sampler.values()))}.nc")).dataset
    r = _post(setup, _request(setup, seed=SEED + i, output="netcdf", sampler=sampler["name"], steps=sampler["steps"],
                              eta=sampler.get("eta", 0.0)))
    assert r.status_code == 200, r.text
    served = _nc(r.content, root)["refc"].values
    verified = model_forecaster(setup["ckpt"], store, "refc", 1, MEMBERS, cfg.forecast.sampler, seed=SEED)(i)
    np.testing.assert_array_equal(batch["refc"].values, served)
    np.testing.assert_array_equal(verified, served)
    assert batch.attrs["sampler"] == sampler["name"] and batch.attrs["eta"] == sampler.get("eta", 0.0)
    assert batch.attrs["checkpoint_sha256"] and len(np.unique(served[:, 0, 0, 0])) == MEMBERS


def test_latlon_bbox_and_inline_conditioning(setup):
    store, batch = setup["store"], setup["batch"]
    lat, lon = batch["latitude"].values, batch["longitude"].values
    box = {"lat_min": float(lat[4, 4]) - 1e-4, "lat_max": float(lat[8, 8]) + 1e-4,
           "lon_min": float(lon[8, 4]) - 1e-4, "lon_max": float(lon[4, 8]) + 1e-4}
    r = _post(setup, _request(setup, bbox=box))
    assert r.status_code == 200, r.text
    y0, y1, x0, x1 = (r.json()["bbox"][k] for k in ("y0", "y1", "x0", "x1"))
    inside = (lat >= box["lat_min"]) & (lat <= box["lat_max"]) & (lon >= box["lon_min"]) & (lon <= box["lon_max"])
    ys, xs = np.nonzero(inside)
    assert (y0, y1, x0, x1) == (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    # the same frames sent inline (base64 float32) give the same forecast as naming the init time
    i = store.index_of(np.datetime64(_init(setup)))
    frames = store.read_frames(["refc", "t2m", "cape"], [i - 1, i]).astype("<f4")
    cond = {"shape": list(frames.shape), "data_b64": base64.b64encode(frames.tobytes()).decode()}
    r = _post(setup, {"conditioning": cond, "members": MEMBERS, "seed": SEED})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["variables"]["refc"]["probability"], np.float32),
                                  batch["refc_probability"].values)


def _nan_conditioning():
    a = np.zeros((2, 3, 16, 16), np.float32)
    a[1, 2, 3, 4] = np.nan
    return {"shape": [2, 3, 16, 16], "data_b64": base64.b64encode(a.tobytes()).decode()}


@pytest.mark.parametrize("extra, field", [
    ({"members": 0}, "members"),
    ({"members": 41}, "members"),
    ({"sampler": "euler"}, "sampler"),
    ({"variables": ["refc", "xyz"]}, "variables"),
    ({"steps": 9}, "steps"),
    ({"steps": 0}, "steps"),
    ({"lead_hours": 1.5}, "lead_hours"),
    ({"lead_hours": 0}, "lead_hours"),
    ({"init_time": "2030-01-01T00:00"}, "init_time"),
    ({"init_time": None, "conditioning": _nan_conditioning()}, "conditioning"),
    ({"init_time": None, "conditioning": {"shape": [1, 3, 16, 16], "data_b64": base64.b64encode(
        np.zeros((1, 3, 16, 16), np.float32).tobytes()).decode()}}, "conditioning"),
    ({"bbox": {"y0": 0, "y1": 40, "x0": 0, "x1": 4}}, "bbox"),
])
def test_bad_requests_answer_422_naming_the_field(setup, extra, field):
    r = _post(setup, _request(setup, **extra))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"].startswith(field), body
    assert field in body["detail"] or body["field"] == field


def test_lead_hours_not_a_whole_number_of_model_steps(setup):
    r = _post(setup, _request(setup, lead_hours=1), app="guarded", headers={"X-API-Key": KEY})
    assert r.status_code == 422 and r.json()["field"] == "lead_hours", r.text
    assert "7200 s" in r.json()["detail"]


def test_body_too_large_is_413(setup):
    r = requests.post(f"{setup['base']}/open/forecast", data=b"{" + b" " * 100_000 + b"}",
                      headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text


def test_api_key(setup):
    body = _request(setup, members=2, lead_hours=2, steps=1)
    assert _post(setup, body, app="guarded").status_code == 401
    assert _post(setup, body, app="guarded", headers={"X-API-Key": "wrong"}).status_code == 401
    ok = _post(setup, body, app="guarded", headers={"X-API-Key": KEY})
    assert ok.status_code == 200, ok.text
    assert _post(setup, body, app="guarded", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    # even a bad body gets 401 first: the key is checked before the request is read
    assert _post(setup, {"members": -1}, app="guarded").status_code == 401
    assert requests.get(f"{setup['base']}/guarded/healthz", timeout=30).status_code == 200
    # the open app has no key configured
    assert _post(setup, _request(setup, members=1)).status_code == 200


def test_openapi_schema_documents_forecast(setup):
    r = requests.get(f"{setup['base']}/open/openapi.json", timeout=30)
    assert r.status_code == 200
    schema = r.json()
    assert "/forecast" in schema["paths"] and "ForecastRequest" in schema["components"]["schemas"]
    assert requests.get(f"{setup['base']}/open/docs", timeout=30).status_code == 200


def test_burst_beyond_the_queue_gets_503_and_accepted_requests_succeed(setup):
    # guarded app: one sampler slot and one queue place (ingress admits 1 + 1), so of 8 simultaneous slow
    # requests at most 2 are accepted at first; the rest must be shed with 503, not queued
    body = _request(setup, members=60, lead_hours=2, steps=10)
    gate = threading.Barrier(8)

    def fire(_):
        gate.wait()
        return _post(setup, body, app="guarded", headers={"X-API-Key": KEY})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(fire, range(8)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 503}, [a.text for a in answers if a.status_code not in (200, 503)]
    assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
    first = next(a for a in answers if a.status_code == 200).json()
    for a in answers:
        if a.status_code == 200:  # every accepted answer is complete and the same (same seed)
            assert a.json()["variables"] == first["variables"]


def test_timeout_answers_504_and_cancels_the_sampling(setup):
    from ray import serve

    from def_ray.testing import tiny_config
    from def_ray.serve.app import forecast_app

    cfg = tiny_config(setup["store"].url, serve={
        "sampler_replicas": 1, "cpus_per_replica": 0.5, "ingress_cpus": 0, "max_ongoing_requests": 1,
        "max_queued_requests": 4, "max_members": 400, "max_steps": 10, "request_timeout_s": 2,
        "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"})
    serve.run(forecast_app(cfg, setup["ckpt"]), name="slow", route_prefix="/slow")
    try:
        small = _request(setup, members=2, steps=1)
        assert _post(setup, small, app="slow").status_code == 200  # warm
        started = time.monotonic()
        # several times the timeout of sampling if it ran to the end
        r = _post(setup, _request(setup, members=400, steps=10, lead_hours=4), app="slow")
        assert r.status_code == 504, r.text
        assert "request_timeout_s" in r.json()["detail"]
        assert time.monotonic() - started < 15
        # the one sampler slot is free again at once only if the sampling was really cancelled; otherwise this
        # request waits behind it and itself runs out of time (504)
        follow = _post(setup, small, app="slow")
        assert follow.status_code == 200, follow.text
    finally:
        serve.delete("slow")


def test_run_serve_deploys_the_config(setup):
    # what `def-ray serve` / jobs/serve.py do, without blocking: Serve already runs here, so the app joins its proxy
    from ray import serve

    from def_ray.testing import tiny_config
    from def_ray.serve.app import run_serve

    cfg = tiny_config(setup["store"].url, serve={"sampler_replicas": 1, "cpus_per_replica": 0.5, "ingress_cpus": 0,
                                                 "route_prefix": "/rs", "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"})
    run_serve(cfg, setup["ckpt"], blocking=False, name="rs")
    try:
        health = requests.get(f"{setup['base']}/rs/healthz", timeout=30).json()
        assert health["status"] == "ok" and health["targets"] == ["refc"] and health["sampler_replicas"] == 1
        assert _post(setup, _request(setup, members=2), app="rs").status_code == 200
    finally:
        serve.delete("rs")
