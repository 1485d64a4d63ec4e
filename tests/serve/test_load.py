"""A bounded load test on loopback: more concurrent requests than the app admits, against a tiny app with one
sampler slot and one queue place and a 3 s request timeout.  Every answer is the app's own JSON 200, 503 or 504
(never the proxy's 408 or 503, never a 500), none arrives later than the limit plus a margin (waiting for a
sampler counts against the limit), and the app is healthy afterwards."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import free_port, wait_http

pytestmark = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]

TIMEOUT_S = 3.0  # serve.request_timeout_s of the app
MARGIN_S = 2.0  # no answer may arrive later than TIMEOUT_S + MARGIN_S after it was sent
CLIENTS = 6  # concurrent clients, three times what the app admits (1 sampler slot + 1 queue place)
LOAD_S = 12.0  # each client sends requests back to back for this long
INIT = "2024-06-02T00:00:00"


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    from ray import serve

    from def_ray.serve.app import forecast_app, ingress_limits, proxy_timeout_s
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    root = tmp_path_factory.mktemp("load")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url, serve={
        "sampler_replicas": 1, "cpus_per_replica": 0.5, "ingress_cpus": 0, "max_ongoing_requests": 1,
        "max_queued_requests": 1, "request_timeout_s": TIMEOUT_S, "max_members": 400, "max_steps": 10,
        "route_prefix": "/load", "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"})
    assert ingress_limits(cfg.serve)[0] == 2 < CLIENTS
    ckpt = tiny_checkpoint(root / "m.pt", cfg)
    port = free_port()
    # the proxy's own limit as run_serve sets it (above the app's): a late answer would be its plain-text 408
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": proxy_timeout_s(cfg.serve)})
    serve.run(forecast_app(cfg, ckpt), name="load", route_prefix="/load")
    url = f"http://127.0.0.1:{port}/load"
    wait_http(url + "/healthz", 60)
    yield url
    serve.shutdown()


def _post(url: str, members: int) -> tuple[int, float, dict | None, str]:
    """(status, seconds from sending to the whole answer, the JSON answer or None, content type)."""
    started = time.monotonic()
    r = requests.post(url + "/forecast", json={"init_time": INIT, "members": members, "steps": 10, "lead_hours": 2,
                                               "seed": 1}, timeout=TIMEOUT_S + 30)
    took = time.monotonic() - started
    kind = r.headers.get("content-type", "")
    return r.status_code, took, r.json() if kind.startswith("application/json") else None, kind


def _members_for(url: str, seconds: float) -> int:
    """Members whose sampling takes about `seconds` on this machine (timed alone): long enough that a request
    waiting behind another runs out of time, short enough that one alone does not."""
    members = 20
    status, took, _, _ = _post(url, members)
    assert status == 200
    return max(4, min(400, int(members * seconds / max(took, 0.05))))


def test_overload_answers_200_503_or_504_from_the_app_within_the_limit(app):
    _post(app, 2)  # warm
    members = _members_for(app, 0.5 * TIMEOUT_S)
    stop = time.monotonic() + LOAD_S
    answers: list[tuple[int, float, dict | None, str]] = []
    lock = threading.Lock()
    gate = threading.Barrier(CLIENTS)

    def client(_: int) -> None:
        gate.wait()
        while time.monotonic() < stop:
            a = _post(app, members)
            with lock:
                answers.append(a)
            if a[0] == 503:
                time.sleep(0.2)  # as Retry-After asks, more or less

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    codes = [a[0] for a in answers]
    summary = {c: codes.count(c) for c in sorted(set(codes))}
    assert set(codes) <= {200, 503, 504}, summary
    for status, took, body, kind in answers:
        assert body is not None, f"{status} is not the app's JSON ({kind})"
        if status == 504:
            assert "request_timeout_s" in body["detail"] and body["timeout_s"] == TIMEOUT_S, body
        if status == 503:
            assert "overloaded" in body["detail"], body
    slowest = max(a[1] for a in answers)
    assert slowest <= TIMEOUT_S + MARGIN_S, (slowest, summary)
    assert summary.get(200, 0) >= 1 and summary.get(503, 0) >= 1, summary
    print(f"\n{len(answers)} answers with {members} members each: {summary}; slowest {slowest:.2f} s")
    # afterwards: healthy, and a request alone succeeds (the cancelled sampling freed the sampler)
    assert requests.get(app + "/healthz", timeout=30).status_code == 200
    assert _post(app, 2)[0] == 200
