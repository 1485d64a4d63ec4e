"""The HTTP schema of POST /forecast: the request body and how its parts turn into arrays and index boxes.

Checks that need only the request live here (pydantic answers 422 naming the field); checks that need the model,
the store or the serve config (member and step limits, known variables, lead hours in model steps, the init time)
are made by the app and answer 422 naming the field too.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime, timezone
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from def_ray.config import SamplerName

__all__ = ["RequestProblem", "Conditioning", "BBox", "ForecastRequest", "index_box", "MAX_CONDITIONING_VALUES"]

MAX_CONDITIONING_VALUES = 2**28
"""Most values inline conditioning may declare (1 GiB of float32; the body size limit is usually far lower)."""


class RequestProblem(ValueError):
    """A request the app cannot serve: HTTP `status` with a message naming `field`."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class _Body(BaseModel):
    # JSON has no NaN or Infinity, but Python's parser accepts them (and 1e400 as infinity): refuse them here
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Conditioning(_Body):
    """Past frames in physical units, shape (n_past, n_vars, y, x), oldest first, variables in the model's order.

    Give either `data` (nested lists) or `data_b64` (base64 of little-endian float32 in C order).
    """

    shape: list[Annotated[int, Field(ge=1)]] = Field(..., min_length=4, max_length=4,
                                                      description="(n_past, n_vars, y, x)")
    data: list | None = Field(None, description="nested lists of numbers with the given shape")
    data_b64: str | None = Field(None, description="base64 of little-endian float32 values, C order")

    @field_validator("shape")
    @classmethod
    def _bounded(cls, shape: list[int]) -> list[int]:
        # Python integers: a product that would overflow int64 (and wrap in numpy) is refused, not allocated
        if math.prod(shape) > MAX_CONDITIONING_VALUES:
            raise ValueError(f"shape {shape} declares {math.prod(shape)} values; at most {MAX_CONDITIONING_VALUES}")
        return shape

    @model_validator(mode="after")
    def _one_source(self) -> Conditioning:
        if (self.data is None) == (self.data_b64 is None):
            raise ValueError("give exactly one of conditioning.data and conditioning.data_b64")
        return self

    def to_array(self) -> np.ndarray:
        """The frames as float32; RequestProblem("conditioning", ...) when the shape or the values are wrong."""
        shape = tuple(self.shape)
        size = math.prod(shape)
        if self.data_b64 is not None:
            try:
                raw = base64.b64decode(self.data_b64, validate=True)
            except (binascii.Error, ValueError) as err:
                raise RequestProblem("conditioning.data_b64", f"not valid base64 ({err})") from None
            if len(raw) != 4 * size:
                raise RequestProblem("conditioning.data_b64", f"{len(raw)} bytes, but shape {list(shape)} of "
                                                              f"float32 needs {4 * size}")
            arr = np.frombuffer(raw, dtype="<f4").reshape(shape)
        else:
            try:
                arr = np.asarray(self.data, dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise RequestProblem("conditioning.data", f"not a regular nested list of numbers ({err})") from None
            if arr.shape != shape:
                raise RequestProblem("conditioning.data", f"has shape {list(arr.shape)}, declared shape "
                                                          f"{list(shape)}")
        if not np.all(np.isfinite(arr)):
            raise RequestProblem("conditioning", f"{int((~np.isfinite(arr)).sum())} values are NaN or infinite")
        return np.array(arr, dtype=np.float32)


class BBox(_Body):
    """A sub-area: grid indices (half-open y0:y1, x0:x1) or a latitude/longitude box (degrees, lon in -180..180)."""

    y0: int | None = Field(None, ge=0)
    y1: int | None = Field(None, ge=1)
    x0: int | None = Field(None, ge=0)
    x1: int | None = Field(None, ge=1)
    lat_min: float | None = Field(None, ge=-90, le=90)
    lat_max: float | None = Field(None, ge=-90, le=90)
    lon_min: float | None = Field(None, ge=-180, le=360)
    lon_max: float | None = Field(None, ge=-180, le=360)

    @model_validator(mode="after")
    def _one_form(self) -> BBox:
        idx = [self.y0, self.y1, self.x0, self.x1]
        geo = [self.lat_min, self.lat_max, self.lon_min, self.lon_max]
        full_idx, full_geo = all(v is not None for v in idx), all(v is not None for v in geo)
        if full_idx == full_geo or (full_idx and any(v is not None for v in geo)) or \
                (full_geo and any(v is not None for v in idx)):
            raise ValueError("bbox needs either all of y0, y1, x0, x1 or all of lat_min, lat_max, lon_min, lon_max")
        if full_idx and (self.y0 >= self.y1 or self.x0 >= self.x1):
            raise ValueError(f"bbox y0 < y1 and x0 < x1 are required (got y {self.y0}:{self.y1}, "
                             f"x {self.x0}:{self.x1})")
        if full_geo and (self.lat_min >= self.lat_max or self.lon_min >= self.lon_max):
            raise ValueError("bbox lat_min < lat_max and lon_min < lon_max are required")
        return self


def index_box(bbox: BBox | None, shape: tuple[int, int], latitude: np.ndarray | None = None,
              longitude: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of `bbox` on a grid of `shape`: the index box itself, or the smallest index rectangle
    holding every grid point inside the lat/lon box."""
    ny, nx = shape
    if bbox is None:
        return 0, ny, 0, nx
    if bbox.y0 is not None:
        if bbox.y1 > ny or bbox.x1 > nx:
            raise RequestProblem("bbox", f"y {bbox.y0}:{bbox.y1}, x {bbox.x0}:{bbox.x1} reaches outside the "
                                         f"{ny} x {nx} grid")
        return bbox.y0, bbox.y1, bbox.x0, bbox.x1
    if latitude is None or longitude is None or latitude.shape != (ny, nx):
        raise RequestProblem("bbox", "a latitude/longitude box needs the store's grid (use grid indices with "
                                     "inline conditioning on another grid)")
    lon = ((np.asarray(longitude) + 180) % 360) - 180
    lo_min, lo_max = ((bbox.lon_min + 180) % 360) - 180, ((bbox.lon_max + 180) % 360) - 180
    inside = (latitude >= bbox.lat_min) & (latitude <= bbox.lat_max) & (lon >= lo_min) & (lon <= lo_max)
    if not inside.any():
        raise RequestProblem("bbox", f"no grid point inside lat {bbox.lat_min}..{bbox.lat_max}, "
                                     f"lon {bbox.lon_min}..{bbox.lon_max}")
    ys, xs = np.nonzero(inside)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


class ForecastRequest(_Body):
    """POST /forecast. Unset fields take the serve config's forecast defaults."""

    init_time: datetime | None = Field(None, description="initialisation time in the store (UTC), e.g. "
                                                         "2024-06-01T18:00; or give `conditioning`")
    conditioning: Conditioning | None = Field(None, description="inline past frames instead of an init_time")
    lead_hours: int | None = Field(None, ge=1, description="hours ahead; a whole number of model steps")
    members: int | None = Field(None, ge=1, description="ensemble size, at most serve.max_members")
    sampler: SamplerName | None = None
    steps: int | None = Field(None, ge=1, description="sampler steps, at most min(serve.max_steps, model T)")
    seed: int = Field(0, ge=0, le=2**62, description="member k draws its noise from (seed, k)")
    spread_scale: float | None = Field(None, gt=0, le=10)
    eta: float | None = Field(None, ge=0, le=1, description="DDIM stochasticity")
    variables: list[str] | None = Field(None, min_length=1, max_length=64,
                                        description="target variables (default: all)")
    thresholds: list[float] | None = Field(None, min_length=1, max_length=32)
    quantiles: list[float] | None = Field(None, min_length=1, max_length=32)
    bbox: BBox | None = None
    output: Literal["summary", "netcdf"] = Field("summary", description="summary JSON or a NetCDF-4 file")
    include_members: bool = Field(False, description="summary JSON only: also the members themselves, per "
                                                     "variable `members` (member, lead, y, x), as the page at "
                                                     "GET / draws them; at most 4,000,000 values in all (use a "
                                                     "bbox on large grids)")

    @field_validator("init_time")
    @classmethod
    def _naive_utc(cls, t: datetime | None) -> datetime | None:
        # the store's time axis is UTC without a zone; a time with a zone is converted
        return t if t is None or t.tzinfo is None else t.astimezone(timezone.utc).replace(tzinfo=None)

    @field_validator("quantiles")
    @classmethod
    def _unit_interval(cls, qs: list[float] | None) -> list[float] | None:
        if qs is not None and any(not 0 <= q <= 1 for q in qs):
            raise ValueError(f"quantiles {qs} must lie in [0, 1]")
        return qs

    @field_validator("variables")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError(f"variables {names} name a variable twice")
        return names

    @model_validator(mode="after")
    def _one_source(self) -> ForecastRequest:
        if (self.init_time is None) == (self.conditioning is None):
            raise ValueError("give exactly one of init_time and conditioning")
        return self
