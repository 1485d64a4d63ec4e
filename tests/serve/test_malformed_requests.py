"""Malformed requests against a real Serve app on loopback: every one is answered 4xx with JSON naming the field at
fault (`field`, or the name in `detail`), none 500.  NaN, Infinity and numbers that overflow (which Python's JSON
parser accepts although JSON has none) included, and shapes whose size overflows int64."""

import base64
import json

import numpy as np
import pytest
import requests

from tests.conftest import free_port, wait_http

pytestmark = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]

PREFIX = "/fz"
INIT = "2024-06-02T00:00:00"  # inside the tiny store's 20 hours (2024-06-01T12 .. 2024-06-02T07)


@pytest.fixture(scope="module")
def base(ray_session, tmp_path_factory):
    from ray import serve

    from def_ray.serve.app import forecast_app, proxy_timeout_s
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    root = tmp_path_factory.mktemp("fuzz")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url, serve={"sampler_replicas": 1, "cpus_per_replica": 0.5, "ingress_cpus": 0,
                                        "max_members": 40, "max_steps": 8, "max_body_bytes": 64 * 1024,
                                        "route_prefix": PREFIX, "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"})
    ckpt = tiny_checkpoint(root / "m.pt", cfg)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": proxy_timeout_s(cfg.serve)})
    serve.run(forecast_app(cfg, ckpt), name="fuzz", route_prefix=PREFIX)
    url = f"http://127.0.0.1:{port}{PREFIX}"
    wait_http(url + "/healthz", 60)
    yield url
    serve.shutdown()


def _raw(**fields: str) -> str:
    """A body with a valid init_time and 2 members, where each keyword is inserted as raw JSON text (so NaN,
    Infinity and 1e400 reach the server as written)."""
    parts = {"init_time": json.dumps(INIT), "members": "2", "lead_hours": "1"}
    parts.update(fields)
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in parts.items() if v is not None) + "}"


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode()


def _cond(shape: str, data: str | None = None, data_b64: str | None = None) -> str:
    body = {"shape": shape}
    if data is not None:
        body["data"] = data
    if data_b64 is not None:
        body["data_b64"] = json.dumps(data_b64)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}"


def _inline(cond: str) -> str:
    return _raw(init_time=None, conditioning=cond)


_zeros = np.zeros((2, 3, 16, 16), np.float32)
_nan_frames = _zeros.copy()
_nan_frames[1, 2, 3, 4] = np.nan
_nested_nan = json.dumps(_zeros.tolist()).replace("0.0", "NaN", 1)
_nested_inf = json.dumps(_zeros.tolist()).replace("0.0", "-Infinity", 1)
_ragged = json.dumps([[[[0.0] * 16] * 16] * 3, [[[0.0] * 15] * 16] * 3])

# (case id, raw body, the field named, the status when it is not 422)
CASES = [
    # members
    ("members-nan", _raw(members="NaN"), "members"),
    ("members-inf", _raw(members="Infinity"), "members"),
    ("members-neg-inf", _raw(members="-Infinity"), "members"),
    ("members-1e400", _raw(members="1e400"), "members"),
    ("members-negative", _raw(members="-1"), "members"),
    ("members-zero", _raw(members="0"), "members"),
    ("members-above-max", _raw(members="41"), "members"),
    ("members-huge", _raw(members=str(10**30)), "members"),
    ("members-text", _raw(members='"many"'), "members"),
    ("members-fraction", _raw(members="2.5"), "members"),
    # seed, steps, lead
    ("seed-nan", _raw(seed="NaN"), "seed"),
    ("seed-1e400", _raw(seed="1e400"), "seed"),
    ("seed-negative", _raw(seed="-1"), "seed"),
    ("seed-2**63", _raw(seed=str(2**63)), "seed"),
    ("seed-text", _raw(seed='"1e400"'), "seed"),
    ("steps-inf", _raw(steps="Infinity"), "steps"),
    ("steps-zero", _raw(steps="0"), "steps"),
    ("steps-above-max", _raw(steps="9"), "steps"),
    ("steps-text", _raw(steps='"ten"'), "steps"),
    ("lead-nan", _raw(lead_hours="NaN"), "lead_hours"),
    ("lead-zero", _raw(lead_hours="0"), "lead_hours"),
    ("lead-fraction", _raw(lead_hours="1.5"), "lead_hours"),
    ("lead-above-max", _raw(lead_hours="49"), "lead_hours"),
    ("lead-2**70", _raw(lead_hours=str(2**70)), "lead_hours"),
    # sampler options
    ("eta-nan", _raw(eta="NaN"), "eta"),
    ("eta-inf", _raw(eta="Infinity"), "eta"),
    ("eta-above-1", _raw(eta="2"), "eta"),
    ("eta-negative", _raw(eta="-0.1"), "eta"),
    ("spread-nan", _raw(spread_scale="NaN"), "spread_scale"),
    ("spread-inf", _raw(spread_scale="Infinity"), "spread_scale"),
    ("spread-1e400", _raw(spread_scale="1e400"), "spread_scale"),
    ("spread-zero", _raw(spread_scale="0"), "spread_scale"),
    ("spread-1e-400", _raw(spread_scale="1e-400"), "spread_scale"),
    ("spread-above-max", _raw(spread_scale="11"), "spread_scale"),
    ("sampler-unknown", _raw(sampler='"euler"'), "sampler"),
    ("sampler-number", _raw(sampler="3"), "sampler"),
    # products
    ("thresholds-nan", _raw(thresholds="[NaN]"), "thresholds"),
    ("thresholds-inf", _raw(thresholds="[Infinity]"), "thresholds"),
    ("thresholds-neg-inf-second", _raw(thresholds="[1, -Infinity]"), "thresholds"),
    ("thresholds-1e400", _raw(thresholds="[1e400]"), "thresholds"),
    ("thresholds-empty", _raw(thresholds="[]"), "thresholds"),
    ("thresholds-text", _raw(thresholds='["a"]'), "thresholds"),
    ("thresholds-too-many", _raw(thresholds=json.dumps(list(range(33)))), "thresholds"),
    ("thresholds-not-a-list", _raw(thresholds="20"), "thresholds"),
    ("quantiles-nan", _raw(quantiles="[NaN]"), "quantiles"),
    ("quantiles-inf", _raw(quantiles="[0.5, Infinity]"), "quantiles"),
    ("quantiles-above-1", _raw(quantiles="[1.5]"), "quantiles"),
    ("quantiles-negative", _raw(quantiles="[-0.1]"), "quantiles"),
    ("quantiles-empty", _raw(quantiles="[]"), "quantiles"),
    ("variables-empty", _raw(variables="[]"), "variables"),
    ("variables-unknown", _raw(variables='["refc", "xyz"]'), "variables"),
    ("variables-twice", _raw(variables='["refc", "refc"]'), "variables"),
    ("variables-not-a-list", _raw(variables='"refc"'), "variables"),
    ("variables-lone-surrogate", _raw(variables='["\\ud800"]'), "variables"),  # named back in the answer
    ("output-unknown", _raw(output='"csv"'), "output"),
    # init time
    ("init-not-a-time", _raw(init_time='"yesterday"'), "init_time"),
    ("init-outside-store", _raw(init_time='"2030-01-01T00:00"'), "init_time"),
    ("init-nan", _raw(init_time="NaN"), "init_time"),
    ("init-1e400", _raw(init_time="1e400"), "init_time"),
    ("init-bad-date", _raw(init_time='"2024-13-45T99:00"'), "init_time"),
    # the body as a whole
    ("unknown-key", _raw(typo="1"), "typo"),
    # a key that is no Unicode text (a lone surrogate): pydantic refuses the body before naming keys
    ("unknown-key-lone-surrogate", _raw(**{"\ud800x": "1"}), "body"),
    ("init-and-conditioning", _raw(conditioning=_cond("[2, 3, 16, 16]", data_b64=_b64(_zeros))),
     "init_time"),
    ("neither-init-nor-conditioning", "{}", "init_time"),
    ("body-list", "[]", "body"),
    ("body-null", "null", "body"),
    ("body-string", '"forecast please"', "body"),
    ("body-nan", "NaN", "body"),
    ("body-truncated", '{"init_time": ', "body"),
    ("body-trailing-garbage", '{"init_time": "2024-06-02T00"} x', "body"),
    # bounding boxes
    ("bbox-outside-grid", _raw(bbox='{"y0": 0, "y1": 40, "x0": 0, "x1": 4}'), "bbox"),
    ("bbox-empty", _raw(bbox='{"y0": 5, "y1": 5, "x0": 0, "x1": 4}'), "bbox"),
    ("bbox-mixed-forms", _raw(bbox='{"y0": 1, "lat_min": 3}'), "bbox"),
    ("bbox-lat-nan", _raw(bbox='{"lat_min": NaN, "lat_max": 40, "lon_min": -100, "lon_max": -90}'), "bbox"),
    ("bbox-lat-above-90", _raw(bbox='{"lat_min": 10, "lat_max": 91, "lon_min": -100, "lon_max": -90}'), "bbox"),
    ("bbox-no-grid-point", _raw(bbox='{"lat_min": 50, "lat_max": 55, "lon_min": 0, "lon_max": 1}'), "bbox"),
    ("bbox-index-inf", _raw(bbox='{"y0": 0, "y1": Infinity, "x0": 0, "x1": 4}'), "bbox"),
    # inline conditioning
    ("cond-shape-1e400", _inline(_cond("[1e400, 3, 16, 16]", data_b64="")), "conditioning.shape"),
    ("cond-shape-overflows", _inline(_cond(json.dumps([2**40] * 4), data_b64="")), "conditioning.shape"),
    ("cond-shape-int64-wraps", _inline(_cond(json.dumps([2**32, 2**32, 1, 1]), data_b64="")),
     "conditioning.shape"),
    ("cond-shape-3-dims", _inline(_cond("[2, 3, 16]", data_b64="")), "conditioning.shape"),
    ("cond-shape-zero", _inline(_cond("[0, 3, 16, 16]", data_b64="")), "conditioning.shape"),
    ("cond-shape-negative", _inline(_cond("[-2, 3, 16, 16]", data_b64="")), "conditioning.shape"),
    ("cond-data-nan", _inline(_cond("[2, 3, 16, 16]", data=_nested_nan)), "conditioning"),
    ("cond-data-inf", _inline(_cond("[2, 3, 16, 16]", data=_nested_inf)), "conditioning"),
    ("cond-data-ragged", _inline(_cond("[2, 3, 16, 16]", data=_ragged)), "conditioning.data"),
    ("cond-data-shape-differs", _inline(_cond("[2, 3, 16, 8]", data=json.dumps(_zeros.tolist()))),
     "conditioning.data"),
    ("cond-b64-not-base64", _inline(_cond("[2, 3, 16, 16]", data_b64="***")), "conditioning.data_b64"),
    ("cond-b64-short", _inline(_cond("[2, 3, 16, 16]", data_b64=_b64(_zeros[:1]))), "conditioning.data_b64"),
    ("cond-b64-nan-values", _inline(_cond("[2, 3, 16, 16]", data_b64=_b64(_nan_frames))), "conditioning"),
    ("cond-both-sources", _inline(_cond("[2, 3, 16, 16]", data="[]", data_b64=_b64(_zeros))), "conditioning"),
    ("cond-no-source", _inline(_cond("[2, 3, 16, 16]")), "conditioning"),
    ("cond-wrong-n-past", _inline(_cond("[1, 3, 16, 16]", data_b64=_b64(_zeros[:1]))), "conditioning"),
    ("cond-odd-grid", _inline(_cond("[2, 3, 15, 15]", data_b64=_b64(np.zeros((2, 3, 15, 15))))), "conditioning"),
]


@pytest.mark.parametrize("body, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_is_4xx_naming_the_field(base, body, field):
    r = requests.post(base + "/forecast", data=body.encode("utf-8", "surrogatepass"),
                      headers={"content-type": "application/json"}, timeout=60)
    _assert_names(r, field, 422)


def _assert_names(r: requests.Response, field: str, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    answer = r.json()
    assert answer["field"].startswith(field) or field in answer["detail"], answer
    assert all(set(e) == {"field", "type", "msg"} for e in answer.get("errors", [])), "raw input echoed back"


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("data, status", [
    (b'{"init_time": "2024-06-02T00", "members": 2, "x": "\xff\xfe"}', 400),  # not UTF-8
    (b"[" * 20000 + b"]" * 20000, 400),  # nesting deeper than the JSON parser's recursion limit
    (b'{"init_time": "' + b" " * 70_000 + b'"}', 413),  # over serve.max_body_bytes
], ids=["not-utf8", "nested-too-deep", "too-large"])
def test_unparseable_body_is_4xx_naming_the_body(base, data, status):
    r = requests.post(base + "/forecast", data=data, headers={"content-type": "application/json"}, timeout=60)
    _assert_names(r, "body", status)


def test_a_valid_request_still_succeeds(base):
    r = requests.post(base + "/forecast", data=_raw(steps="2"), headers={"content-type": "application/json"},
                      timeout=60)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["members"] == 2
