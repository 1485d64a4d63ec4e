"""Write HRRR-like GRIB2 files (one message per variable on a crop of the HRRR Lambert grid) with eccodes, and
the message encoder (`encode_message`: any product template, Lambert or regular lat/lon grid) other writers use.

Messages start from eccodes' GRIB2 sample and carry what HRRR's own files carry: centre kwbc, a Lambert conformal
grid (template 3.30, spherical earth of shape 6, j scanning northwards, winds relative to the grid) and each
variable's identity from def_ray.data.lexicon.  They are written as analyses (reference time = valid time, step 0)
so the valid time cannot be misread.

Precision: values are packed as IEEE 754 32-bit floats (`grid_ieee`), so a float32 field decodes bit for bit;
a float64 field decodes as its float32 rounding (relative error <= 2**-24).
The file is written beside its target and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# pyproj before eccodes: eccodeslib bundles its own libproj, and if it loads first pyproj crashes the interpreter
import pyproj  # noqa: F401  isort: skip
import eccodes
import numpy as np

from def_ray.data.grid import LambertGrid
from def_ray.data.lexicon import lookup

__all__ = ["write_grib2", "encode_message", "check_field", "set_grid", "LatLonGrid", "GribGrid", "GribWriteError",
           "ANALYSIS"]

PACKING = "grid_ieee"
NOAA_OAR = 161  # the centre whose local tables define MRMS's discipline 209 (as NSSL's MRMS files say)
MRMS_DISCIPLINE = 209

ANALYSIS: dict[str, Any] = {"significanceOfReferenceTime": 0, "productDefinitionTemplateNumber": 0,
                            "typeOfGeneratingProcess": 0, "stepUnits": 1, "forecastTime": 0}
"""Section 1/4 keys of an analysis (template 4.0, step 0), as write_grib2 writes."""


class GribWriteError(ValueError):
    """A field that cannot be written; the message names the variable and the file."""


@dataclass(frozen=True)
class LatLonGrid:
    """A regular latitude/longitude grid (template 3.0, as MRMS uses); row 0 = southernmost row, like the stores."""

    ny: int
    nx: int
    first_lat: float
    first_lon: float
    dlat: float
    dlon: float

    @classmethod
    def from_latlon(cls, lat: np.ndarray, lon: np.ndarray) -> LatLonGrid:
        """The grid of 2-D (y, x) latitude/longitude arrays; ValueError unless regular with rows running north."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        ny, nx = lat.shape
        if lon.shape != lat.shape or ny < 2 or nx < 2:
            raise ValueError(f"a regular lat/lon grid needs 2-D lat/lon of one shape, at least 2 x 2; got {lat.shape}")
        lats, lons = lat[:, 0], np.unwrap(lon[0], period=360.0)
        dlat, dlon = round((lats[-1] - lats[0]) / (ny - 1), 6), round((lons[-1] - lons[0]) / (nx - 1), 6)
        tol = 1e-3 * min(abs(dlat), abs(dlon))  # float32 coordinates of a regular grid are far closer than this
        regular = (dlat > 0 and dlon > 0 and np.allclose(lat, lats[:, None], atol=tol, rtol=0)
                   and np.allclose(lon, lon[0][None, :], atol=tol, rtol=0)
                   and np.allclose(lats, lats[0] + dlat * np.arange(ny), atol=tol, rtol=0)
                   and np.allclose(lons, lons[0] + dlon * np.arange(nx), atol=tol, rtol=0))
        if not regular:
            raise ValueError("latitude/longitude are not a regular grid with rows south to north and columns east")
        return cls(ny, nx, round(float(lats[0]), 6), round(float(lons[0]) % 360, 6), dlat, dlon)


GribGrid = LambertGrid | LatLonGrid


def _set_lambert(h: int, grid: LambertGrid) -> None:
    eccodes.codes_set(h, "gridType", "lambert")
    eccodes.codes_set(h, "shapeOfTheEarth", 6)
    eccodes.codes_set(h, "Nx", grid.nx)
    eccodes.codes_set(h, "Ny", grid.ny)
    eccodes.codes_set(h, "latitudeOfFirstGridPointInDegrees", grid.first_lat)
    eccodes.codes_set(h, "longitudeOfFirstGridPointInDegrees", grid.first_lon % 360)
    eccodes.codes_set(h, "LaDInDegrees", grid.lat_0)
    eccodes.codes_set(h, "LoVInDegrees", grid.lon_0 % 360)
    eccodes.codes_set(h, "Latin1InDegrees", grid.lat_1)
    eccodes.codes_set(h, "Latin2InDegrees", grid.lat_2)
    eccodes.codes_set(h, "DxInMetres", grid.dx_m)
    eccodes.codes_set(h, "DyInMetres", grid.dy_m)
    eccodes.codes_set(h, "projectionCentreFlag", 0)
    eccodes.codes_set(h, "iScansNegatively", 0)
    eccodes.codes_set(h, "jScansPositively", 1)
    eccodes.codes_set(h, "jPointsAreConsecutive", 0)
    eccodes.codes_set(h, "uvRelativeToGrid", 1)  # HRRR's u/v are grid-relative
    eccodes.codes_set(h, "latitudeOfSouthernPoleInDegrees", 0.0)
    eccodes.codes_set(h, "longitudeOfSouthernPoleInDegrees", 0.0)


def _set_latlon(h: int, grid: LatLonGrid) -> None:
    eccodes.codes_set(h, "gridType", "regular_ll")
    eccodes.codes_set(h, "shapeOfTheEarth", 2)  # as MRMS's own files
    eccodes.codes_set(h, "Ni", grid.nx)
    eccodes.codes_set(h, "Nj", grid.ny)
    eccodes.codes_set(h, "iScansNegatively", 0)
    eccodes.codes_set(h, "jScansPositively", 1)
    eccodes.codes_set(h, "jPointsAreConsecutive", 0)
    eccodes.codes_set(h, "latitudeOfFirstGridPointInDegrees", grid.first_lat)
    eccodes.codes_set(h, "longitudeOfFirstGridPointInDegrees", grid.first_lon)
    eccodes.codes_set(h, "latitudeOfLastGridPointInDegrees", round(grid.first_lat + (grid.ny - 1) * grid.dlat, 6))
    eccodes.codes_set(h, "longitudeOfLastGridPointInDegrees",
                      round((grid.first_lon + (grid.nx - 1) * grid.dlon) % 360, 6))
    eccodes.codes_set(h, "iDirectionIncrementInDegrees", grid.dlon)
    eccodes.codes_set(h, "jDirectionIncrementInDegrees", grid.dlat)


def set_grid(h: int, grid: GribGrid) -> None:
    """Section 3 of message `h`: template 3.30 for a LambertGrid, 3.0 for a LatLonGrid."""
    if isinstance(grid, LambertGrid):
        _set_lambert(h, grid)
    else:
        _set_latlon(h, grid)


def check_field(where: str, name: str, values: np.ndarray, grid: GribGrid) -> np.ndarray:
    """`values` as an array if it is a finite numeric (ny, nx) field of `grid`, else GribWriteError naming `where`."""
    lookup(name)  # unknown names fail here, naming the known ones
    arr = np.asarray(values)
    if arr.shape != (grid.ny, grid.nx):
        raise GribWriteError(f"{where}: field {name!r} has shape {arr.shape}, grid is ({grid.ny}, {grid.nx})")
    if not np.issubdtype(arr.dtype, np.number):
        raise GribWriteError(f"{where}: field {name!r} has non-numeric dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise GribWriteError(f"{where}: field {name!r} has {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def encode_message(name: str, values: np.ndarray, grid: GribGrid, reference_time: datetime,
                   product: Mapping[str, Any]) -> bytes:
    """One IEEE-packed GRIB2 message of variable `name` (its identity from the lexicon) on `grid`.

    `product`: section 1/4 keys set in their order after the reference time, the template number first (eccodes
    lays out the template's keys when its number is set); see ANALYSIS.
    """
    var = lookup(name)
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        # refc is an NCEP-local parameter: the centre must be set before the parameter keys
        eccodes.codes_set(h, "centre", NOAA_OAR if var.discipline == MRMS_DISCIPLINE else "kwbc")
        eccodes.codes_set(h, "subCentre", 0)
        eccodes.codes_set(h, "dataDate", int(reference_time.strftime("%Y%m%d")))
        eccodes.codes_set(h, "dataTime", int(reference_time.strftime("%H%M")))
        for key, value in product.items():
            eccodes.codes_set(h, key, value)
        eccodes.codes_set(h, "discipline", var.discipline)
        eccodes.codes_set(h, "parameterCategory", var.category)
        eccodes.codes_set(h, "parameterNumber", var.number)
        eccodes.codes_set(h, "typeOfLevel", var.level_type)
        eccodes.codes_set(h, "level", var.level)
        set_grid(h, grid)
        eccodes.codes_set(h, "packingType", PACKING)
        eccodes.codes_set(h, "precision", 1)  # 1 = IEEE 32-bit
        eccodes.codes_set_values(h, np.asarray(values, dtype=np.float64).ravel())
        return eccodes.codes_get_message(h)
    finally:
        eccodes.codes_release(h)


def write_grib2(path: str | Path, fields: Mapping[str, np.ndarray], valid_time: datetime,
                grid: LambertGrid) -> Path:
    """Write one GRIB2 file at `path` with one message per entry of `fields` (short name -> (ny, nx) array,
    row 0 = southernmost row of `grid`).  Returns the path.  Nothing is written unless every field is valid."""
    path = Path(path)
    if not fields:
        raise GribWriteError(f"no fields to write to {path}")
    arrays = {name: check_field(str(path), name, values, grid) for name, values in fields.items()}
    messages = [encode_message(name, arr, grid, valid_time, ANALYSIS) for name, arr in arrays.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for m in messages:
                f.write(m)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
