"""The page for forecasters at GET / of the Serve app, and what it asks the app for (GET /options).

The page (static/index.html, shipped as package data) is one self-contained file: inline CSS and JavaScript, no
CDN, no fonts, nothing fetched but the app's own GET /options and POST /forecast (relative URLs, so it works under
any route_prefix). It is served as it is on disk, never with request input in it, under a Content-Security-Policy
that lets the browser run only that inline script and style (by their hashes) and connect only to the app itself.

The forecaster picks an init time the store offers, a lead and a threshold; the page sends the smallest request that
gives it what it draws (one variable, one threshold, one quantile, include_members) and draws on <canvas>: the
exceedance probability in 10 % steps with white below 1 % (def_ray.viz.palettes' probability scale), the ensemble
mean and a play/pause loop of the members (NWS reflectivity scale for dBZ, as the maps, else a continuous scale).
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["page_html", "page_headers", "usable_init_times", "options", "MAX_INIT_TIMES"]

MAX_INIT_TIMES = 500
"""GET /options lists at most this many init times, the newest first."""


@lru_cache(maxsize=1)
def page_html() -> bytes:
    """The page's bytes, as shipped (def_ray/serve/static/index.html)."""
    return resources.files("def_ray.serve").joinpath("static/index.html").read_bytes()


def _hashes(tag: str, html: str) -> list[str]:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]


@lru_cache(maxsize=1)
def page_headers() -> dict[str, str]:
    """Security headers of the page: only its own inline script and style run, it connects only to its origin and
    loads nothing from anywhere (images are the canvases it draws)."""
    html = page_html().decode()
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(_hashes('script', html))}",
        f"style-src {' '.join(_hashes('style', html))}",
        "connect-src 'self'", "img-src 'self' data:", "base-uri 'none'", "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def usable_init_times(store: Any, n_past: int, dt_steps: int, limit: int = MAX_INIT_TIMES) -> np.ndarray:
    """The store's init times whose n_past conditioning frames (dt_steps apart, ending at it) are all committed,
    the newest first, at most `limit`: what a forecast by init_time accepts (forecaster.check_init_time)."""
    committed = store.committed_mask()
    times = store.all_times()[:committed.size]
    offsets = np.arange(-(n_past - 1), 1) * dt_steps  # the conditioning frames relative to the init index
    idx = np.arange(committed.size)[:, None] + offsets[None, :]
    inside = (idx >= 0).all(axis=1) & (idx < committed.size).all(axis=1)
    ok = inside & committed[np.clip(idx, 0, max(committed.size - 1, 0))].all(axis=1)
    return times[np.flatnonzero(ok)[::-1][:limit]]


def options(forecaster: Any, cfg: Any, store: Any, step_seconds: int) -> dict[str, Any]:
    """GET /options: what a forecast request may ask for here (init times, leads, variables, default thresholds
    and members, the limits); what the page offers in its pickers."""
    fc_cfg, sv = cfg.forecast, cfg.serve
    inits = [] if store is None else usable_init_times(store, forecaster.n_past, forecaster.dt_steps)
    leads = [h for h in range(1, sv.max_lead_hours + 1) if (h * 3600) % step_seconds == 0]
    deterministic = forecaster.kind == "deterministic"
    return {
        "init_times": [str(t) for t in np.asarray(inits).astype("datetime64[s]")],
        "lead_hours": leads,
        "default_lead_hours": fc_cfg.lead_hours,
        "variables": forecaster.targets,
        "thresholds": list(fc_cfg.thresholds),
        "members": 1 if deterministic else fc_cfg.members,
        "max_members": 1 if deterministic else sv.max_members,
        "kind": forecaster.kind,
        "step_seconds": int(step_seconds),
    }
