"""The HTTP side of the Serve app: the FastAPI object, the API-key and body-size guard, and JSON answers that cannot
fail to encode (every refusal is JSON naming the field; raw input is never echoed back)."""

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from def_ray.config import one_line
from def_ray.serve.schema import RequestProblem

__all__ = ["api", "GUARD", "PUBLIC_PATHS", "is_page", "RECEIVED", "key_hash", "Guard", "SafeJSONResponse", "error", "problem"]

PUBLIC_PATHS = ("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
"""Paths open without the API key (besides the page at the app's root, see is_page)."""
RECEIVED = "def_ray.received"
"""ASGI scope key: time.monotonic() when the ingress received the request (the request timeout counts from it)."""

api = FastAPI(title="def_ray ensemble forecasts",
              description="Probabilistic convection forecasts from a conditional diffusion model: ensembles sampled "
                          "across Ray Serve replicas, returned as probabilities and quantiles or as a NetCDF file.",
              version="1")


# set by the ingress replica (one per process); Serve runs a copy of `api`, so app.state would not reach it
GUARD: dict[str, Any] = {}


def is_page(scope: Mapping[str, Any]) -> bool:
    """GET of the app's root (the static page for forecasters), under whatever route_prefix Serve set as root_path."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", "")).rstrip("/")
    rel = path[len(root):] if root and path.startswith(root) else path
    return scope.get("method") in ("GET", "HEAD") and rel in ("", "/")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Guard:
    """ASGI middleware: the API key (checked before the body is read), then Starlette's body size limit (413)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[RECEIVED] = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        expected = GUARD.get("api_key_hash")
        if expected and not scope["path"].rstrip("/").endswith(PUBLIC_PATHS) and not is_page(scope):
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if not given and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not hmac.compare_digest(key_hash(given), expected):
                return await send_json(send, 401, {"detail": "missing or wrong API key (header X-API-Key or "
                                                              "Authorization: Bearer)", "field": "X-API-Key"},
                                        {"www-authenticate": "Bearer"})
        if not str(scope.get("path", "")).rstrip("/").endswith(PUBLIC_PATHS):
            length = headers.get("content-length", "0")
            limit = GUARD.get("max_body_bytes")
            if limit is not None and length.isdigit() and int(length) > int(limit):
                return await send_json(send, 413, {"detail": f"body of {length} bytes is larger than "
                                                              f"serve.max_body_bytes={limit}", "field": "body"})
        limit = GUARD.get("max_body_bytes")
        if limit is None:
            return await self.app(scope, receive, send)
        await RequestBodyLimitMiddleware(self.app, int(limit))(scope, receive, send)


async def send_json(send: Any, status: int, body: dict, headers: Mapping[str, str] | None = None) -> None:
    data = json_bytes(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


api.add_middleware(Guard)


def plain(value: Any) -> Any:
    """`value` made encodable as strict JSON: non-finite floats become strings, unknown objects their str()."""
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def json_bytes(content: Any) -> bytes:
    """Strict JSON (no NaN/Infinity), ASCII-escaped so that any text a request sent (lone surrogates included)
    can be named back."""
    return json.dumps(plain(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


class SafeJSONResponse(JSONResponse):
    """A JSON answer that cannot fail to encode (see json_bytes)."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def error(status: int, detail: str, field: str = "", headers: Mapping[str, str] | None = None,
           **extra: Any) -> SafeJSONResponse:
    return SafeJSONResponse(status_code=status, content={"detail": detail, "field": field, **extra},
                            headers=dict(headers or {}))


def loc(error: Mapping[str, Any]) -> str:
    """The dotted field of a pydantic error ("body" for the body as a whole or a JSON syntax error)."""
    if error.get("type") == "json_invalid":
        return "body"
    return ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"


def describe(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":
        loc = [p for p in error.get("loc", ()) if p != "body"]
        where = f" at character {loc[0]}" if loc else ""
        msg = f"not valid JSON{where}: {(error.get('ctx') or {}).get('error', msg)}"
    return one_line(msg)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming every field at fault; the raw input is never echoed (it may hold NaN, which JSON cannot carry)."""
    errors = exc.errors()
    problems = [f"{loc(e)}: {describe(e)}" for e in errors]
    return error(422, "; ".join(problems) or "invalid request", loc(errors[0]) if errors else "body",
                  errors=[{"field": loc(e), "type": e.get("type", ""), "msg": describe(e)} for e in errors])


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body it cannot parse, a body too large, an unknown path) in the same JSON form."""
    field = "body" if exc.status_code in (400, 413, 415) else ""
    detail = exc.detail if exc.status_code != 400 else f"{exc.detail} (send UTF-8 JSON)"
    return error(exc.status_code, one_line(detail), field, headers=getattr(exc, "headers", None))


def problem(p: RequestProblem) -> JSONResponse:
    return error(p.status, p.message, p.field)
