"""The Ray Serve app: a FastAPI ingress that fans ensemble members out to EnsembleSampler replicas.

    GET  /           the page for forecasters (page.py, static/index.html): pick init time, lead, threshold; see
                     the probability map, the ensemble mean and a loop of the members
    GET  /options    what a request may ask for: the store's usable init times, leads, variables, defaults
    POST /forecast   JSON in (schema.ForecastRequest); summary JSON or a NetCDF-4 file out
    GET  /healthz    liveness of the ingress (the sampler replicas check themselves with a tiny forward pass)
    GET  /docs       OpenAPI UI (schema at /openapi.json)

ForecastIngress validates the request, builds the normalised conditioning (from the store at `init_time`, or
from inline frames), splits the members into at most one contiguous range per sampler replica (ranges start on
multiples of the member batch size, as the batch job's chunks do) and calls ``EnsembleSampler.sample`` through a
deployment handle for each range with its ``member_offset``, so the members are those of the batch job for the
same seed; then it combines them and computes the products.  Concurrent requests for the same forecast share
their sampler calls (identical member ranges here, overlapping ones in the replicas: sampler.py), each still getting
exactly its own members.  Metrics: def_ray_forecast_requests and def_ray_forecast_seconds by HTTP status,
def_ray_forecast_active_requests, def_ray_ingress_shared_calls (the samplers' in sampler.py).

Malformed requests: every one answers 4xx with JSON naming the input at fault (`field`, `detail`), never 500:
NaN, Infinity and overflowing numbers are refused by the schema, error answers never echo raw input back (JSON
cannot encode NaN), and inline conditioning's declared shape is checked before anything is allocated.

Overload and time: the ingress admits serve.sampler_replicas x (max_ongoing_requests + max_queued_requests)
requests at a time and answers the rest 503 itself at once (JSON, Retry-After); its Serve slots are sized above
that, so requests do not wait in Serve's queue in front of it.  Every request has serve.request_timeout_s from the
moment the ingress receives it: waiting for a sampler slot, sampling and building the answer all count, and a
request not done by then answers the app's own 504 (JSON naming the limit) and cancels its sampler calls (a
cancelled call stops at the next network evaluation: a forward pre-hook checks a per-call flag).  run_serve sets
the HTTP proxy's own limit above the app's (proxy_timeout_s), so clients get the app's 504, not the proxy's 408.

With the environment variable named by serve.api_key_env set when the app is built, requests other than /healthz,
/docs and the page need the key (the page asks for it and sends it) (header X-API-Key or `Authorization: Bearer KEY`) and get 401 without it; bodies over
serve.max_body_bytes get 413.

Deploy: `def-ray serve --config CFG --model CKPT` (run_serve), or `serve run/deploy cluster/serve_config.yaml`
(import path def_ray.serve.app:build_app, args: config, model).
"""

# no `from __future__ import annotations` here: FastAPI must see the real ForecastRequest annotation through the
# signature Serve rewrites for the ingress methods
import asyncio
import os
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import ray
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from def_ray.config import (Config, ConfigError, ServeConfig, config_from_dict, error_message,
                            load_config, one_line, root_cause)
from def_ray.data.normalise import Normaliser
from def_ray.forecast.forecaster import ForecastError, Forecaster, load_for_config
from def_ray.forecast.members import member_ranges
from def_ray.serve.answer import check_member_values, cropped_projection, summary
from def_ray.serve.http import RECEIVED, SafeJSONResponse, api, error, key_hash, problem
from def_ray.serve.page import options as request_options, page_headers, page_html
from def_ray.serve.sampler import EnsembleSampler, SamplingCancelled, cond_digest
from def_ray.serve.schema import ForecastRequest, RequestProblem, index_box

__all__ = ["EnsembleSampler", "ForecastIngress", "forecast_app", "build_app", "run_serve", "SamplingCancelled",
           "ingress_limits", "proxy_timeout_s", "check_serve_inputs", "sampler_scaling"]

PROXY_MARGIN_S = 10.0
"""How far the HTTP proxy's own request timeout stays above serve.request_timeout_s."""


def ingress_limits(sv: ServeConfig) -> tuple[int, int, int]:
    """(requests the ingress admits at a time, its Serve max_ongoing_requests, its Serve max_queued_requests).

    It admits what the sampler replicas can hold (ongoing + queued) and answers the rest 503 itself; its Serve
    slots leave room above that for the requests it turns away, so none waits in Serve's queue, where its time
    would not count against serve.request_timeout_s (only a burst of more than twice as many at once queues there,
    briefly: turned-away requests free their slots in milliseconds).
    """
    admitted = sv.sampler_replicas * (sv.max_ongoing_requests + sv.max_queued_requests)
    slots = admitted + max(16, admitted)
    return admitted, slots, slots


def proxy_timeout_s(sv: ServeConfig) -> float:
    """The HTTP proxy's request timeout: above the app's, so a client gets the app's JSON 504, not the proxy's 408."""
    return float(sv.request_timeout_s) + PROXY_MARGIN_S


class _Late(Exception):
    """The request's time (serve.request_timeout_s from its receipt) ran out."""


async def _by(deadline: float, awaitable: Any) -> Any:
    """Await `awaitable` until `deadline` (time.monotonic()); _Late when it is not done by then."""
    left = deadline - time.monotonic()
    if left <= 0:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        elif isinstance(awaitable, asyncio.Future):
            awaitable.cancel()
        raise _Late
    try:
        return await asyncio.wait_for(awaitable, timeout=left)
    except asyncio.TimeoutError:
        raise _Late from None


async def _shared_call(shared: dict[tuple, dict[str, Any]], key: tuple, make: Any, counter: Any = None) -> Any:
    """The result of the call in flight under `key`, or of a new one made by `make()`; the call is cancelled when
    the last caller waiting for it is."""
    entry = shared.get(key)
    if entry is None:
        call = make()

        async def wait() -> Any:
            return await call

        entry = shared[key] = {"task": asyncio.ensure_future(wait()), "call": call, "users": 0}
        entry["task"].add_done_callback(lambda t: t.cancelled() or t.exception())
        entry["task"].add_done_callback(lambda _: shared.pop(key) if shared.get(key) is entry else None)
    elif counter is not None:
        counter.inc()
    entry["users"] += 1
    try:
        return await asyncio.shield(entry["task"])
    finally:
        entry["users"] -= 1
        if entry["users"] == 0 and not entry["task"].done():
            entry["call"].cancel()
            entry["task"].cancel()


@serve.deployment(name="ForecastIngress")
@serve.ingress(api)
class ForecastIngress:
    """Validates, builds the conditioning, fans members out to EnsembleSampler, combines and summarises."""

    def __init__(self, sampler: Any, config: dict, model_uri: str, model_options: Mapping[str, Any] | None = None,
                 api_key_hash: str | None = None):
        from def_ray.data.ray_dataset import resolve_storage_options
        from def_ray.data.zarr_store import ZarrStore

        self.sampler = sampler
        self.cfg: Config = config_from_dict(config, "serve app config")
        self.forecaster = Forecaster.load(model_uri, model_options, light=True)
        self.forecaster.check_config(self.cfg.data)
        store = ZarrStore(self.cfg.data.store,
                          resolve_storage_options(self.cfg.data.store, self.cfg.data.storage.to_fsspec()))
        self.store = store if store.exists() else None
        self.step_s = self.forecaster.step_seconds(self.store)
        self.latlon = self.store.latlon() if self.store is not None else None
        self.admitted, self.active = ingress_limits(self.cfg.serve)[0], 0
        # Serve ships this class by value (globals copied); the middleware reads the real module's GUARD
        import def_ray.serve.http as http_module

        http_module.GUARD.update(api_key_hash=api_key_hash, max_body_bytes=self.cfg.serve.max_body_bytes)
        # custom metrics (Prometheus / the Ray dashboard, prefixed ray_); the samplers' are in sampler.py
        from ray.serve import metrics  # ray.util.metrics tagged with deployment, replica, application

        self.m_requests = metrics.Counter("def_ray_forecast_requests", description="POST /forecast answers, by "
                                          "HTTP status", tag_keys=("status",))
        self.m_seconds = metrics.Histogram("def_ray_forecast_seconds", description="seconds from receiving a "
                                           "POST /forecast to its answer, by HTTP status", tag_keys=("status",),
                                           boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300])
        self.m_active = metrics.Gauge("def_ray_forecast_active_requests", description="POST /forecast requests "
                                      "the ingress is working on (its queue for the samplers)")
        self.m_shared = metrics.Counter("def_ray_ingress_shared_calls", description="sampler calls a request "
                                        "shared with a concurrent identical one instead of making its own")
        self.m_active.set(0)

    # -- endpoints -----------------------------------------------------------------------------------------------
    @api.get("/", include_in_schema=False)
    def page(self) -> Response:
        """The page for forecasters: static, the same bytes for every request."""
        return Response(content=page_html(), media_type="text/html; charset=utf-8", headers=page_headers())

    @api.get("/options")
    def what_to_ask(self) -> dict:
        """What a forecast request may ask for: the store's usable init times (newest first), leads, variables,
        default thresholds and members, the member limit."""
        # a fresh handle, so steps ingested while the app runs are offered
        store = type(self.store)(self.store.url, self.store.storage_options) if self.store is not None else None
        return request_options(self.forecaster, self.cfg, store, self.step_s)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.forecaster.path, "targets": self.forecaster.targets,
                "sampler_replicas": self.cfg.serve.sampler_replicas, "store": self.store is not None}

    @api.post("/forecast", responses={
        200: {"description": "summary JSON, or a NetCDF-4 file (application/x-netcdf) with output=netcdf"},
        401: {"description": "API key missing or wrong"}, 413: {"description": "body too large"},
        422: {"description": "invalid request; `field` names the input at fault"},
        503: {"description": "overloaded, try again later"}, 504: {"description": "request timed out"}})
    async def forecast(self, body: ForecastRequest, request: Request) -> Any:
        received = request.scope.get(RECEIVED, time.monotonic())
        self.m_active.set(self.active + 1)
        try:
            answer = await self._forecast(body, received + self.cfg.serve.request_timeout_s)
        finally:
            self.m_active.set(self.active)
        status = {"status": str(getattr(answer, "status_code", 200))}
        self.m_requests.inc(tags=status)
        self.m_seconds.observe(time.monotonic() - received, tags=status)
        return answer

    async def _forecast(self, body: ForecastRequest, deadline: float) -> Any:
        if self.active >= self.admitted:
            return self._overloaded(f"{self.active} requests in progress, as many as this app admits")
        self.active += 1
        try:
            return await self._answer(body, deadline)
        except _Late:
            return error(504, f"not done within serve.request_timeout_s={self.cfg.serve.request_timeout_s:g} s "
                               "(counted from when the app received it, waiting for a sampler included); its "
                               "sampling was cancelled", timeout_s=self.cfg.serve.request_timeout_s)
        finally:
            self.active -= 1

    def _overloaded(self, why: str) -> JSONResponse:
        return error(503, f"overloaded, try again later: {why}", headers={"Retry-After": "1"})

    async def _answer(self, body: ForecastRequest, deadline: float) -> Any:
        """Plan, condition, sample, respond: each step bounded by what is left of the request's time."""
        try:
            plan = self._plan(body)
            cond, plan["normaliser"], plan["store_url"] = await _by(deadline,
                                                                    asyncio.to_thread(self._conditioning, body))
            plan["box"] = index_box(body.bbox, tuple(cond.shape[-2:]), *self._latlon_for(cond.shape[-2:]))
            check_member_values(body, plan["members"], plan["lead_steps"], len(plan["variables"]), plan["box"])
            ens = await self._sample(cond, plan, body.seed, deadline)
        except RequestProblem as p:
            return problem(p)
        except ForecastError as err:  # also raised in a sampler replica: the message of its cause
            return problem(RequestProblem(getattr(root_cause(err), "field", "") or "body", error_message(err)))
        except BackPressureError as err:
            return self._overloaded(f"the samplers' queues are full ({one_line(err)})")
        return await _by(deadline, asyncio.to_thread(self._respond, body, plan, ens, cond.shape[-2:]))

    async def _sample(self, cond: np.ndarray, plan: Mapping[str, Any], seed: int, deadline: float) -> np.ndarray:
        """The members, one contiguous range per sampler replica; every call is cancelled if any fails or time
        runs out. The conditioning goes into Ray's object store once per forecast and every call gets its
        reference (the replicas read it from the store; about 230 MB at full CONUS is not sent with each call).

        Concurrent requests for the same forecast share their calls: a range whose (conditioning digest, lead,
        sampler options, seed, normaliser, members) equals one in flight waits for that call instead of making its
        own (which is cancelled only when every request waiting for it is); the sampler replicas share overlapping
        ranges too (sampler.py)."""
        options = plan["options"]
        ranges = member_ranges(plan["members"], self.cfg.serve.sampler_replicas, options.member_batch_size)
        digest = await asyncio.to_thread(cond_digest, cond)
        forecast = (digest, plan["lead_steps"], options.model_dump_json(), seed, repr(plan["normaliser"]))
        shared = self.__dict__.setdefault("_shared_calls", {})
        keys = [(*forecast, offset, count) for offset, count in ranges]
        ref: list[Any] = []
        if any(k not in shared for k in keys):
            ref.append(await asyncio.to_thread(ray.put, cond))

        def make(offset: int, count: int) -> Any:
            if not ref:  # every call was in flight when this request looked, and one finished since
                ref.append(ray.put(cond))
            return self.sampler.sample.remote(ref[0], count, plan["lead_steps"], options, seed, offset,
                                              plan["normaliser"])

        calls = [asyncio.ensure_future(_shared_call(shared, k, partial(make, offset, count),
                                                    getattr(self, "m_shared", None)))
                 for k, (offset, count) in zip(keys, ranges)]
        try:
            parts = await _by(deadline, asyncio.gather(*calls))
        except BaseException:
            for c in calls:
                c.cancel()
            raise
        return np.concatenate(parts, axis=0)

    # -- steps ---------------------------------------------------------------------------------------------------
    def _plan(self, body: ForecastRequest) -> dict[str, Any]:
        from def_ray.models.diffusion.samplers import resolve_steps

        fc, fc_cfg, sv = self.forecaster, self.cfg.forecast, self.cfg.serve
        members = body.members if body.members is not None else fc_cfg.members
        if members > sv.max_members:
            raise RequestProblem("members", f"{members} is above serve.max_members={sv.max_members}")
        if fc.kind == "deterministic" and members != 1:
            raise RequestProblem("members", f"{members}: this endpoint serves the deterministic model (1 member)")
        options = fc.sampler_options(fc_cfg.sampler, name=body.sampler, spread_scale=body.spread_scale,
                                     eta=body.eta)
        steps = body.steps if body.steps is not None else options.steps
        max_steps = min(sv.max_steps, fc.timesteps)
        try:
            steps = resolve_steps(options.name, steps, fc.timesteps)
        except ValueError:
            steps = max_steps + 1
        if steps > max_steps:
            raise RequestProblem("steps", f"{body.steps if body.steps is not None else steps} is outside 1.."
                                          f"{max_steps} (serve.max_steps={sv.max_steps}, model T={fc.timesteps})")
        lead_hours = body.lead_hours if body.lead_hours is not None else fc_cfg.lead_hours
        if lead_hours > sv.max_lead_hours:
            raise RequestProblem("lead_hours", f"{lead_hours} is above serve.max_lead_hours={sv.max_lead_hours}")
        variables = body.variables or fc.targets
        unknown = [v for v in variables if v not in fc.targets]
        if unknown:
            raise RequestProblem("variables", f"unknown variable(s) {unknown}; this model forecasts {fc.targets}")
        return {"members": members, "lead_hours": lead_hours, "lead_steps": fc.lead_steps(lead_hours, self.store),
                "variables": variables, "thresholds": body.thresholds or fc_cfg.thresholds,
                "quantiles": body.quantiles or fc_cfg.quantiles, "options": options.model_copy(update={"steps": steps})}

    def _conditioning(self, body: ForecastRequest) -> tuple[np.ndarray, Normaliser, str]:
        """(normalised conditioning, the normaliser, the store's URL or "") of the request."""
        fc = self.forecaster
        if body.conditioning is not None:
            norm = fc.normaliser(self.store)
            return fc.conditioning_from_frames(body.conditioning.to_array(), self.store, norm), norm, ""
        if self.store is None:
            raise RequestProblem("init_time", f"no store at data.store={self.cfg.data.store}; send conditioning")
        # a fresh handle per request, so steps ingested while the app runs are seen (handles cache metadata)
        store = type(self.store)(self.store.url, self.store.storage_options)
        norm = fc.normaliser(store)
        return fc.conditioning(store, body.init_time, norm), norm, store.url

    def _latlon_for(self, grid: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The store's latitude/longitude when the forecast is on the store's grid."""
        if self.latlon is not None and self.latlon[0].shape == tuple(grid):
            return self.latlon
        return None, None

    def _respond(self, body: ForecastRequest, plan: dict[str, Any], ens: np.ndarray, grid: tuple[int, int]) -> Any:
        from def_ray.forecast.ensemble import build_forecast_dataset
        from def_ray.forecast.writer import netcdf_bytes

        lat, lon = self._latlon_for(grid)
        y0, y1, x0, x1 = plan["box"]
        keep = [self.forecaster.targets.index(v) for v in plan["variables"]]
        ens = ens[:, :, keep, y0:y1, x0:x1]
        if lat is not None:
            lat, lon = lat[y0:y1, x0:x1], lon[y0:y1, x0:x1]
        init = np.datetime64(body.init_time, "s") if body.init_time is not None else np.datetime64(0, "s")
        attrs = self.forecaster.provenance(plan["options"], seed=body.seed, members=plan["members"],
                                           lead_hours=plan["lead_hours"], normaliser=plan["normaliser"],
                                           store_url=plan["store_url"])
        attrs.update(bbox=[y0, y1, x0, x1], inline_conditioning=int(body.conditioning is not None))
        projection = self.store.projection if self.store is not None and lat is not None else {}
        if projection and (y0, y1, x0, x1) != (0, grid[0], 0, grid[1]):
            projection = cropped_projection(projection, y0, x0, y1 - y0, x1 - x0)
        ds = build_forecast_dataset(ens, targets=plan["variables"], init_time=init, step_seconds=self.step_s,
                                    latitude=lat, longitude=lon, projection=projection,
                                    thresholds=plan["thresholds"], quantiles=plan["quantiles"], attrs=attrs)
        if body.output == "netcdf":
            return Response(content=netcdf_bytes(ds), media_type="application/x-netcdf",
                            headers={"Content-Disposition": 'attachment; filename="forecast.nc"'})
        return SafeJSONResponse(content=summary(ds, plan, body, (y0, y1, x0, x1)))


# -- building and running the app -----------------------------------------------------------------------------------


def sampler_scaling(sv: ServeConfig) -> dict[str, Any]:
    """The EnsembleSampler deployment's replica options: a fixed serve.sampler_replicas, or with
    serve.sampler_max_replicas an autoscaling_config from 1 to that many, starting at serve.sampler_replicas and
    aiming at serve.target_ongoing_requests calls per replica."""
    if sv.sampler_max_replicas is None:
        return {"num_replicas": sv.sampler_replicas}
    if sv.sampler_max_replicas < sv.sampler_replicas:
        raise ConfigError(f"serve.sampler_max_replicas={sv.sampler_max_replicas} is below serve.sampler_replicas="
                          f"{sv.sampler_replicas} (the replicas it starts with)")
    return {"autoscaling_config": {"min_replicas": 1, "initial_replicas": sv.sampler_replicas,
                                   "max_replicas": sv.sampler_max_replicas,
                                   "target_ongoing_requests": sv.target_ongoing_requests}}


def forecast_app(cfg: Config, model_uri: str, api_key: str | None = None) -> serve.Application:
    """The bound app for `cfg` and a checkpoint; the API key defaults to the env var named by serve.api_key_env."""
    from def_ray.data.ray_dataset import resolve_storage_options

    from def_ray.models.registry import is_mlflow_uri, pin_model_uri, tracking_uri_for

    sv = cfg.serve
    key = api_key if api_key is not None else os.environ.get(sv.api_key_env) or None
    opts = resolve_storage_options(model_uri, cfg.train.storage.to_fsspec())
    runtime_env: dict[str, Any] = {}
    if is_mlflow_uri(model_uri):
        # the registry is read once, here: models:/NAME@ALIAS becomes the version it points at now, so every
        # replica serves that version even if the alias moves; the replicas download it from the same server
        tracking = tracking_uri_for(cfg.tracking.tracking_uri)
        model_uri = pin_model_uri(model_uri, tracking)
        runtime_env = {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": tracking}}}
    sampler = EnsembleSampler.options(
        **sampler_scaling(sv), max_ongoing_requests=sv.max_ongoing_requests,
        max_queued_requests=sv.max_queued_requests,
        ray_actor_options={"num_cpus": sv.cpus_per_replica, "num_gpus": sv.gpus_per_replica, **runtime_env},
    ).bind(model_uri, opts, max(1, int(sv.cpus_per_replica)), sv.batch_wait_timeout_s)
    # the ingress admits what all sampler replicas together can hold and answers the rest 503 itself, from slots
    # above that (ingress_limits)
    _, slots, queue = ingress_limits(sv)
    ingress = ForecastIngress.options(num_replicas=1, max_ongoing_requests=slots, max_queued_requests=queue,
                                      ray_actor_options={"num_cpus": sv.ingress_cpus, **runtime_env})
    # the keys the config sets, not every default: the checkpoint's sampler defaults apply where it is silent
    config = cfg.model_dump(mode="json", exclude_unset=True)
    return ingress.bind(sampler, config, model_uri, opts, key_hash(key) if key else None)


def build_app(args: dict[str, Any]) -> serve.Application:
    """For `serve run` / `serve deploy`: args {"config": YAML path, "model": checkpoint, "override": {k: v}}."""
    missing = [k for k in ("config", "model") if k not in args]
    if missing:
        raise ValueError(f"def_ray.serve.app:build_app needs args {missing} (config: YAML path, model: checkpoint)")
    cfg = load_config(args["config"], dict(args.get("override") or {}))
    return forecast_app(cfg, str(args["model"]))


def check_serve_inputs(cfg: Config, model_uri: str) -> Forecaster:
    """Everything `def-ray serve` can be refused for before Ray starts (ForecastError / ConfigError naming the key):
    the checkpoint readable and consistent with the config, and the defaults a request falls back on servable
    (members, lead, sampler steps within the serve limits; one member for a deterministic model)."""
    from def_ray.data.ray_dataset import resolve_storage_options
    from def_ray.data.zarr_store import ZarrStore
    from def_ray.models.diffusion.samplers import resolve_steps

    fc = load_for_config(model_uri, cfg)
    sv, fc_cfg = cfg.serve, cfg.forecast
    if fc.kind == "deterministic" and fc_cfg.members != 1:
        raise ConfigError(f"forecast.members={fc_cfg.members} (a request's default) but checkpoint {model_uri} holds "
                          "the deterministic model, which makes one member: set forecast.members=1")
    if fc_cfg.members > sv.max_members:
        raise ConfigError(f"forecast.members={fc_cfg.members} (a request's default) is above "
                          f"serve.max_members={sv.max_members}")
    if fc_cfg.lead_hours > sv.max_lead_hours:
        raise ConfigError(f"forecast.lead_hours={fc_cfg.lead_hours} (a request's default) is above "
                          f"serve.max_lead_hours={sv.max_lead_hours}")
    store = ZarrStore(cfg.data.store, resolve_storage_options(cfg.data.store, cfg.data.storage.to_fsspec()))
    fc.lead_steps(fc_cfg.lead_hours, store if store.exists() else None)
    options = fc.sampler_options(fc_cfg.sampler)
    if fc.kind != "deterministic":
        steps = resolve_steps(options.name, options.steps, fc.timesteps)
        if steps > min(sv.max_steps, fc.timesteps):
            raise ConfigError(f"forecast.sampler.steps={steps} (a request's default) is above serve.max_steps="
                              f"{sv.max_steps} or the model's T={fc.timesteps}")
    return fc


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def run_serve(cfg: Config, model_path: str, blocking: bool = True, name: str = "def-ray") -> Any:
    """Check the inputs, start Serve's HTTP proxy on serve.host:serve.port and deploy the app; with `blocking`,
    serve until Ctrl-C."""
    import ray

    check_serve_inputs(cfg, model_path)
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS") and not _port_free(cfg.serve.host, cfg.serve.port):
            raise ConfigError(f"serve.port={cfg.serve.port} on serve.host={cfg.serve.host} is in use (another "
                              "server?); choose another with -o serve.port=...")
        ray.init()  # joins RAY_ADDRESS when set, else a local instance
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port,
                              "request_timeout_s": proxy_timeout_s(cfg.serve)})
    handle = serve.run(forecast_app(cfg, model_path), name=name, route_prefix=cfg.serve.route_prefix)
    if not blocking:
        return handle
    prefix = cfg.serve.route_prefix.rstrip("/")
    print(f"serving POST http://{cfg.serve.host}:{cfg.serve.port}{prefix}/forecast "
          f"(OpenAPI at {prefix}/docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return handle
