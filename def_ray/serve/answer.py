"""The JSON answer of POST /forecast: probabilities, mean, spread and quantiles per variable, and the members
themselves when the request sets include_members (what the page at GET / draws)."""

from collections.abc import Mapping
from typing import Any

import numpy as np

from def_ray.serve.schema import ForecastRequest, RequestProblem

__all__ = ["cropped_projection", "json_array", "summary", "check_member_values", "MAX_MEMBER_VALUES"]

MAX_MEMBER_VALUES = 4_000_000
"""The most member values (members x leads x variables x points) a summary JSON carries with include_members:
about 80 MB of JSON; larger ensembles go out as output=netcdf or for a bbox."""


def cropped_projection(projection: Mapping[str, Any], y0: int, x0: int, ny: int, nx: int) -> dict:
    from def_ray.data.grid import LambertGrid

    names = LambertGrid.__dataclass_fields__.keys()
    if not all(k in projection for k in names):
        return {}
    return LambertGrid(**{k: projection[k] for k in names}).crop(y0, x0, ny, nx).attrs()


def json_array(a: np.ndarray) -> list:
    """Nested lists of floats; non-finite values (a diverging sample) become null, as JSON has no inf or NaN."""
    a = np.asarray(a)
    if np.isfinite(a).all():
        return a.astype(float).tolist()
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def check_member_values(body: ForecastRequest, members: int, leads: int, variables: int,
                        box: tuple[int, int, int, int]) -> None:
    """RequestProblem("include_members", ...) before any sampling when the members would not fit the JSON answer."""
    if not body.include_members or body.output != "summary":
        return
    y0, y1, x0, x1 = box
    values = members * leads * variables * (y1 - y0) * (x1 - x0)
    if values > MAX_MEMBER_VALUES:
        raise RequestProblem("include_members", f"{members} members x {leads} leads x {variables} variables x "
                                                f"{y1 - y0} x {x1 - x0} points = {values} values, more than "
                                                f"{MAX_MEMBER_VALUES} in JSON: ask for a bbox, fewer members or "
                                                "output=netcdf")


def summary(ds: Any, plan: Mapping[str, Any], body: ForecastRequest, box: tuple[int, int, int, int]) -> dict:
    """The JSON answer: per variable probability (threshold, lead, y, x), mean, spread, quantiles, and with
    include_members the members (member, lead, y, x)."""
    out: dict[str, Any] = {
        "init_time": ds.attrs["init_time"] if body.init_time is not None else None,
        "lead_hours": (ds["lead_time"].values / np.timedelta64(1, "h")).tolist(),
        "valid_time": [str(t) for t in ds["time"].values.astype("datetime64[s]")] if body.init_time else None,
        "members": plan["members"], "seed": body.seed, "sampler": plan["options"].name,
        "steps": int(ds.attrs["steps"]), "thresholds": list(plan["thresholds"]), "quantiles": list(plan["quantiles"]),
        "bbox": dict(zip(("y0", "y1", "x0", "x1"), box)), "shape": [int(ds.sizes["lead_time"]),
                                                                   int(ds.sizes["y"]), int(ds.sizes["x"])],
        "checkpoint": ds.attrs["checkpoint"], "variables": {},
    }
    if "latitude" in ds.coords:
        out["latitude"] = ds["latitude"].values.astype(float).tolist()
        out["longitude"] = ds["longitude"].values.astype(float).tolist()
    for v in plan["variables"]:
        out["variables"][v] = {
            "units": ds[v].attrs.get("units", ""),
            "non_finite_values": int((~np.isfinite(ds[v].values)).sum()),
            "probability": json_array(ds[f"{v}_probability"].values),
            "mean": json_array(ds[f"{v}_mean"].values),
            "spread": json_array(ds[f"{v}_spread"].values),
            "quantiles": json_array(ds[f"{v}_quantile"].values),
        }
        if body.include_members:
            out["variables"][v]["members"] = json_array(ds[v].values)
    return out
