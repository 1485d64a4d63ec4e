"""Write HRRR-like GRIB2 files (one message per variable on a crop of the HRRR Lambert grid) with eccodes.

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
from datetime import datetime
from pathlib import Path

# pyproj before eccodes: eccodeslib bundles its own libproj, and if it loads first pyproj crashes the interpreter
import pyproj  # noqa: F401  isort: skip
import eccodes
import numpy as np

from def_ray.data.grid import LambertGrid
from def_ray.data.lexicon import lookup

__all__ = ["write_grib2", "GribWriteError"]

PACKING = "grid_ieee"


class GribWriteError(ValueError):
    """A field that cannot be written; the message names the variable and the file."""


def _set_grid(h: int, grid: LambertGrid) -> None:
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


def _message(name: str, values: np.ndarray, valid_time: datetime, grid: LambertGrid) -> bytes:
    var = lookup(name)
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        # refc is an NCEP-local parameter: the centre must be set before the parameter keys
        eccodes.codes_set(h, "centre", "kwbc")
        eccodes.codes_set(h, "subCentre", 0)
        eccodes.codes_set(h, "significanceOfReferenceTime", 0)  # analysis
        eccodes.codes_set(h, "dataDate", int(valid_time.strftime("%Y%m%d")))
        eccodes.codes_set(h, "dataTime", int(valid_time.strftime("%H%M")))
        eccodes.codes_set(h, "productDefinitionTemplateNumber", 0)
        eccodes.codes_set(h, "typeOfGeneratingProcess", 0)  # analysis
        eccodes.codes_set(h, "stepUnits", 1)
        eccodes.codes_set(h, "forecastTime", 0)
        eccodes.codes_set(h, "discipline", var.discipline)
        eccodes.codes_set(h, "parameterCategory", var.category)
        eccodes.codes_set(h, "parameterNumber", var.number)
        eccodes.codes_set(h, "typeOfLevel", var.level_type)
        eccodes.codes_set(h, "level", var.level)
        _set_grid(h, grid)
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
    messages = []
    for name, values in fields.items():
        lookup(name)  # unknown names fail here, naming the known ones
        arr = np.asarray(values)
        if arr.shape != (grid.ny, grid.nx):
            raise GribWriteError(f"{path}: field {name!r} has shape {arr.shape}, grid is ({grid.ny}, {grid.nx})")
        if not np.issubdtype(arr.dtype, np.number):
            raise GribWriteError(f"{path}: field {name!r} has non-numeric dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise GribWriteError(f"{path}: field {name!r} has {int((~np.isfinite(arr)).sum())} non-finite values")
        messages.append(_message(name, arr, valid_time, grid))
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
