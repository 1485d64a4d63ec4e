"""The page for forecasters (GET /) and GET /options: a real Serve app on loopback driven by a real headless Chromium
over the DevTools protocol. The page is loaded, a forecast is run through its own button, and the canvases it drew
are read back pixel by pixel against the POST /forecast answer and the maps' colour scales (def_ray.viz.palettes).

Chromium comes from the system packages (scripts/test.sh installs it where missing and it can); without it the
browser test skips, or fails when DEF_RAY_REQUIRE_BROWSER=1 (what scripts/test.sh sets once it has installed it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import free_port, wait_http

SERVED = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]
KEY_ENV = "DEF_RAY_TEST_PAGE_KEY"
KEY = "page-key-for-tests"
MEMBERS = 6


# -- without Serve --------------------------------------------------------------------------------------------------


def test_page_is_self_contained_and_its_csp_allows_only_its_own_inline_code():
    from def_ray.serve.page import page_headers, page_html

    html = page_html().decode()
    # an empty icon inline, so the browser does not ask the server's root for /favicon.ico
    assert html.count('<link rel="icon" href="data:,">') == 1
    html = html.replace('<link rel="icon" href="data:,">', "")
    # nothing fetched from anywhere: no external URL, no <link>, <img>, <iframe>, no src= at all, no CSS import/url()
    assert not re.search(r"https?:|//[a-z0-9]", html, flags=re.I), "the page names an external address"
    for bad in ("<link", "<img", "<iframe", "src=", "@import", "url(", "innerHTML", "outerHTML", "document.write",
                "eval(", "onclick=", "onload="):
        assert bad.lower() not in html.lower(), bad
    assert html.count("<script>") == 1 and html.count("<style>") == 1  # exactly the blocks the CSP hashes
    csp = page_headers()["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/=]{44}'", csp)) == 2


class _FakeStore:
    """An hourly store axis with some steps not committed (a gap in ingestion)."""

    url, dt_seconds = "fake://store", 3600

    def __init__(self, committed):
        self.mask = np.asarray(committed, dtype=bool)

    def committed_mask(self):
        return self.mask

    def all_times(self):
        return np.datetime64("2024-06-01T00:00", "s") + np.arange(self.mask.size) * np.timedelta64(1, "h")

    def committed_times(self):
        return self.all_times()[self.mask]

    def index_of(self, t):
        return int((np.datetime64(t, "s") - self.all_times()[0]) // np.timedelta64(1, "h"))


@pytest.mark.parametrize("n_past, dt", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_usable_init_times_are_what_a_forecast_accepts(n_past, dt):
    from def_ray.forecast.forecaster import ForecastError, check_init_time
    from def_ray.serve.page import usable_init_times

    store = _FakeStore([1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1])
    accepted = []
    for t in store.all_times():
        try:
            check_init_time(store, n_past, dt, t)
            accepted.append(t)
        except ForecastError:
            pass
    got = usable_init_times(store, n_past, dt)
    assert list(got) == accepted[::-1] and len(got) > 0  # newest first
    assert list(usable_init_times(store, n_past, dt, limit=2)) == accepted[::-1][:2]


def test_include_members_is_refused_before_sampling_when_too_large():
    from def_ray.serve.answer import MAX_MEMBER_VALUES, check_member_values
    from def_ray.serve.schema import ForecastRequest, RequestProblem

    body = ForecastRequest(init_time="2024-06-01T18:00", include_members=True)
    check_member_values(body, 10, 2, 1, (0, 100, 0, 100))  # 200 000 values: fine
    with pytest.raises(RequestProblem) as err:
        check_member_values(body, 50, 2, 1, (0, 300, 0, 300))
    assert err.value.field == "include_members" and str(MAX_MEMBER_VALUES) in err.value.message
    # without include_members, or for NetCDF, there is nothing to check
    check_member_values(ForecastRequest(init_time="2024-06-01T18:00"), 50, 2, 1, (0, 300, 0, 300))
    check_member_values(ForecastRequest(init_time="2024-06-01T18:00", include_members=True, output="netcdf"),
                        50, 2, 1, (0, 300, 0, 300))


# -- a real Serve app -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    from ray import serve

    from def_ray.serve.app import forecast_app
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    root = tmp_path_factory.mktemp("page")
    store = tiny_store(root / "s.zarr", hours=12)
    small = {"sampler_replicas": 1, "cpus_per_replica": 0.5, "ingress_cpus": 0, "max_members": 40, "max_steps": 8,
             "max_lead_hours": 3, "api_key_env": "DEF_RAY_TEST_NO_SUCH_VAR"}
    cfg = tiny_config(store.url, serve=small, forecast={"members": MEMBERS, "lead_hours": 1, "thresholds": [5.0, 20.0],
                                                        "sampler": {"name": "dpmpp", "steps": 2,
                                                                    "member_batch_size": 4}})
    ckpt = tiny_checkpoint(root / "m.pt", cfg)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    os.environ[KEY_ENV] = KEY
    try:
        serve.run(forecast_app(cfg, ckpt), name="page", route_prefix="/fc")
        keyed = tiny_config(store.url, serve={**small, "api_key_env": KEY_ENV})
        serve.run(forecast_app(keyed, ckpt), name="page-key", route_prefix="/keyed")
    finally:
        del os.environ[KEY_ENV]
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/fc/healthz", 60)
    wait_http(base + "/keyed/healthz", 60)
    yield {"base": base, "store": store, "cfg": cfg}
    serve.shutdown()


@pytest.mark.ray
@pytest.mark.serve
@pytest.mark.slow
def test_get_root_serves_the_static_page_with_its_security_headers(app):
    from def_ray.serve.page import page_headers, page_html

    for path in ("/fc/", "/fc", "/fc/?init=<script>alert(1)</script>"):
        r = requests.get(app["base"] + path, timeout=30)
        assert r.status_code == 200, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        assert r.content == page_html()  # static: the same bytes whatever the request says
        assert r.headers["content-security-policy"] == page_headers()["Content-Security-Policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    # with an API key configured the page stays open, but what it asks the app for needs the key
    r = requests.get(app["base"] + "/keyed/", timeout=30)
    assert r.status_code == 200 and r.content == page_html()
    assert requests.get(app["base"] + "/keyed/options", timeout=30).status_code == 401
    assert requests.post(app["base"] + "/keyed/forecast", json={}, timeout=30).status_code == 401
    assert requests.get(app["base"] + "/keyed/options", headers={"X-API-Key": KEY}, timeout=30).status_code == 200
    # the page is GET only; the root path is no back door for other methods
    assert requests.post(app["base"] + "/keyed/", json={}, timeout=30).status_code == 401


@pytest.mark.ray
@pytest.mark.serve
@pytest.mark.slow
def test_options_lists_the_store_init_times_and_the_leads(app):
    from def_ray.serve.page import usable_init_times

    o = requests.get(app["base"] + "/fc/options", timeout=30).json()
    store = app["store"]
    want = [str(t) for t in usable_init_times(store, 2, 1).astype("datetime64[s]")]
    assert o["init_times"] == want and len(want) == 11  # 12 hours, n_past 2: all but the first, newest first
    assert o["init_times"][0] == str(store.all_times()[-1].astype("datetime64[s]"))
    assert o["lead_hours"] == [1, 2, 3] and o["default_lead_hours"] == 1
    assert o["variables"] == ["refc"] and o["thresholds"] == [5.0, 20.0]
    assert o["members"] == MEMBERS and o["max_members"] == 40 and o["kind"] == "diffusion"
    # the oldest offered init time is accepted, the hour before it is not
    ok = requests.post(app["base"] + "/fc/forecast", json={"init_time": o["init_times"][-1], "members": 1},
                       timeout=60)
    assert ok.status_code == 200, ok.text
    first = str(store.all_times()[0].astype("datetime64[s]"))
    bad = requests.post(app["base"] + "/fc/forecast", json={"init_time": first, "members": 1}, timeout=60)
    assert bad.status_code == 422 and bad.json()["field"] == "init_time"


@pytest.mark.ray
@pytest.mark.serve
@pytest.mark.slow
def test_include_members_returns_the_members_the_products_come_from(app):
    from def_ray.forecast.products import exceedance_probability

    init = str(app["store"].all_times()[6].astype("datetime64[s]"))
    body = {"init_time": init, "lead_hours": 2, "members": 5, "seed": 3, "thresholds": [2.0, 6.0]}
    plain = requests.post(app["base"] + "/fc/forecast", json=body, timeout=60).json()
    assert "members" not in plain["variables"]["refc"]  # unchanged unless asked for
    got = requests.post(app["base"] + "/fc/forecast", json={**body, "include_members": True}, timeout=60).json()
    v = got["variables"]["refc"]
    members = np.asarray(v["members"], dtype=np.float32)
    assert members.shape == (5, 2, 16, 16)
    np.testing.assert_array_equal(np.asarray(v["probability"], np.float32), exceedance_probability(members, [2, 6]))
    np.testing.assert_allclose(np.asarray(v["mean"], np.float32), members.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert v["probability"] == plain["variables"]["refc"]["probability"]  # the same forecast with or without them


# -- the page in a real browser -------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in (os.environ.get("DEF_RAY_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Chromium:
    """Headless Chromium in its own process group and profile, driven over the DevTools protocol (websockets)."""

    def __init__(self, exe: str, profile: Path):
        self.profile = profile
        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--mute-audio", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000",
             "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.ws, self.next_id, self.events = None, 0, []

    def connect(self, timeout: float = 60) -> None:
        from websockets.sync.client import connect

        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()}): "
                                   f"{(self.profile.parent / 'chromium.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                 if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, timeout: float = 60, **params):
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        state, text = self.js("[document.body.dataset.state, document.getElementById('status').textContent]")
        raise TimeoutError(f"{expression} not true within {timeout} s (page state {state}, status {text!r})")

    def click(self, element_id: str) -> None:
        """A real mouse click at the middle of the element (pressed and released), as a user's."""
        box = self.js(f"(() => {{ const e = document.getElementById({json.dumps(element_id)}); "
                      "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)  # chromium and its helpers: the group it leads
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.log.close()
            _wait_gone(str(self.profile))


def _with_profile(profile: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"--user-data-dir={profile}".encode() in cmd:
            found.append(int(entry.name))
    return found


def _wait_gone(profile: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _with_profile(profile) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _with_profile(profile):  # a helper that left the group: ours by its profile path
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _pixels(browser: Chromium, canvas: str) -> np.ndarray:
    """The colour drawn at the middle of every grid cell of a canvas, (ny, nx, 3), rows as drawn (north up)."""
    data = browser.js(f"""(() => {{
        const c = document.getElementById({json.dumps(canvas)}), cell = window.defRay.view.cell;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
        for (let y = 0; y < c.height / cell; y++) for (let x = 0; x < c.width / cell; x++) {{
            const p = 4 * (Math.floor((y + 0.5) * cell) * c.width + Math.floor((x + 0.5) * cell));
            out.push(d[p], d[p + 1], d[p + 2]);
        }}
        return [c.height / cell, c.width / cell, out];
    }})()""")
    return np.asarray(data[2], dtype=np.int64).reshape(int(data[0]), int(data[1]), 3)


def _expected(palette, field: np.ndarray) -> np.ndarray:
    """The maps' colour of every value (def_ray.viz.palettes), masked values white, as 0..255 RGB."""
    values = palette.mask(field)
    rgba = np.asarray(palette.cmap(palette.norm(values.filled(np.nan))))
    rgb = np.round(rgba[..., :3] * 255).astype(np.int64)
    rgb[np.ma.getmaskarray(values)] = 255
    return rgb


@pytest.mark.ray
@pytest.mark.serve
@pytest.mark.slow
def test_page_runs_a_forecast_in_a_real_browser_and_draws_it(app, tmp_path):
    from def_ray.viz.palettes import probability_palette, reflectivity_palette

    exe = _chromium()
    if exe is None:
        msg = "no chromium on PATH (scripts/test.sh installs it: apt-get install chromium)"
        if os.environ.get("DEF_RAY_REQUIRE_BROWSER") == "1":
            pytest.fail(msg + " and DEF_RAY_REQUIRE_BROWSER=1")
        pytest.skip(msg)
    base = app["base"]
    store = app["store"]
    init = str(store.all_times()[7].astype("datetime64[s]"))
    lead = 2
    # a threshold inside the members' range, so the map holds zeros, ones and values between
    probe = requests.post(base + "/fc/forecast", json={"init_time": init, "lead_hours": lead, "members": MEMBERS,
                                                       "include_members": True}, timeout=60).json()
    threshold = round(float(np.median(np.asarray(probe["variables"]["refc"]["members"])[:, -1])), 3)

    browser = Chromium(exe, tmp_path / "profile")
    try:
        browser.connect()
        browser.send("Page.navigate", url=base + "/fc")
        browser.wait_for("document.body && document.body.dataset.state === 'ready'", 60)
        offered = browser.js("Array.from(document.getElementById('init').options).map(o => o.value)")
        assert offered == requests.get(base + "/fc/options", timeout=30).json()["init_times"]
        assert browser.js("document.getElementById('go').disabled") is False
        # the forecaster's choices, then a real click on the page's button
        browser.js(f"document.getElementById('init').value = {json.dumps(init)}")
        browser.js(f"document.getElementById('lead').value = '{lead}'")
        browser.js(f"document.getElementById('threshold').value = '{threshold}'")
        browser.click("go")
        browser.wait_for("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'", 120)
        assert browser.js("document.body.dataset.state") == "done", browser.js("document.getElementById('status')"
                                                                                ".textContent")
        # the answer the page drew from, checked against the app's own answer to the same request
        drawn = browser.js("window.defRay.answer")
        ref = requests.post(base + "/fc/forecast", json={
            "init_time": init, "lead_hours": lead, "members": MEMBERS, "variables": ["refc"],
            "thresholds": [threshold], "quantiles": [0.5], "include_members": True}, timeout=60).json()
        assert drawn["variables"] == ref["variables"] and drawn["thresholds"] == [threshold]
        v = ref["variables"]["refc"]
        prob = np.asarray(v["probability"], dtype=np.float64)[0, -1]
        assert (prob == 0).any() and (prob == 1).any() and ((prob > 0) & (prob < 1)).any(), prob
        # the tiny store's rows run south to north: the page puts north up
        lat = np.asarray(ref["latitude"])
        assert lat[0, 8] < lat[-1, 8] and browser.js("window.defRay.view.flip") is True
        north_up = lambda a: a[::-1]  # noqa: E731

        # probability: white exactly where P = 0 (< 1 %), a colour wherever P > 0, and the maps' colour of each bin
        px = _pixels(browser, "prob")
        assert px.shape == (16, 16, 3)
        white = (px == 255).all(axis=-1)
        np.testing.assert_array_equal(white, north_up(prob == 0))
        np.testing.assert_array_equal(px, north_up(_expected(probability_palette(), prob)))
        # the legend: 11 colours in 10 % steps with white first
        swatches = browser.js("Array.from(document.querySelectorAll('#prob-legend .box'))"
                              ".map(b => getComputedStyle(b).backgroundColor)")
        assert swatches[0] == "rgb(255, 255, 255)" and len([s for s in swatches if s.startswith("rgb(")]) >= 11
        # ensemble mean and the shown member in the maps' NWS reflectivity scale (dBZ), no echo white
        assert v["units"] == "dBZ"
        refl = reflectivity_palette()
        np.testing.assert_array_equal(_pixels(browser, "mean"),
                                      north_up(_expected(refl, np.asarray(v["mean"])[-1])))

        # the member loop plays by itself, and stops on Pause
        members = np.asarray(v["members"])[:, -1]
        seen = {browser.js("window.defRay.shownMember")}
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            seen.add(browser.js("window.defRay.shownMember"))
        assert len(seen) >= 3 and browser.js("window.defRay.playing()") is True
        browser.click("play")
        assert browser.js("window.defRay.playing()") is False
        k = browser.js("window.defRay.shownMember")
        time.sleep(1.5)
        assert browser.js("window.defRay.shownMember") == k
        assert browser.js("document.getElementById('member-label').textContent") == f"member {k + 1} / {MEMBERS}"
        np.testing.assert_array_equal(_pixels(browser, "member"), north_up(_expected(refl, members[k])))

        # nothing but the app itself was asked for anything, and the page raised no error (CSP violations included)
        urls = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(base + "/fc") for u in urls), urls
        assert any(u.endswith("/fc/options") for u in urls) and any(u.endswith("/fc/forecast") for u in urls)
        errors = [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"
                  or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
                      and "favicon" not in e["params"]["entry"].get("url", ""))
                  or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")]
        assert not errors, errors
    finally:
        browser.close()
    assert not _with_profile(str(tmp_path / "profile")), "chromium processes left behind"
