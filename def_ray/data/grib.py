"""Decode HRRR GRIB2 files into xarray, message by message, identifying fields by their GRIB2 identity.

Why not cfgrib: it names fields from the local tables it knows, so NCEP-local parameters (HRRR's REFC is one)
come back under guessed or 'unknown' names, and it builds extra dimensions when a file holds several steps.
Here every message is matched to our lexicon by (discipline, category, number, level type, level) with eccodes,
and the file's own section-0 lengths are checked first, so a truncated or corrupt download is reported with the
file, the message number (1-based) and the byte offset where it breaks.

Policies (one valid time per file is our contract):
- A file whose selected messages have several valid times raises unless `valid_time=` picks one.
- A variable with several messages at the chosen time (HRRR's APCP holds both the 0-12 h and the 11-12 h
  accumulation) raises, naming the step ranges, unless `step_range=` picks one; `step_range` only filters
  non-instantaneous messages (accumulations, averages), whose step range is an interval.
- Messages that are not in the lexicon (e.g. VVCSH) are skipped and listed in the attribute `skipped`.
- A truncated file raises by default (a partial download must be fetched again).  With `strict=False` the
  complete messages before the break are decoded and the break is described in the attribute `truncated`.
- Missing values (bitmap or missing-value management) become NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# pyproj before eccodes: eccodeslib bundles its own libproj with the same soname, and whichever loads first wins;
# pyproj on eccodes' build fails to find its database and crashes the interpreter at exit (double free).
import pyproj  # noqa: F401  isort: skip
import eccodes  # isort: skip
import numpy as np
import xarray as xr

from def_ray.data.grid import LambertGrid
from def_ray.data.lexicon import Variable, check_variables, find_by_identity

__all__ = ["GribDecodeError", "MessageInfo", "GribInventory", "read_bytes", "scan_grib", "decode_grib"]

# set as eccodes' missing value before decoding: far outside any physical field, so only missing points match
_MISSING = 9.999e20
_SCAN_MODE_SOUTH_TO_NORTH = 64  # i west->east, j south->north, rows consecutive: HRRR's layout
_EARTH_SHAPE_SPHERE_6371229 = 6


class GribDecodeError(ValueError):
    """A GRIB2 file that cannot be decoded as asked; the message names the file and where it failed.

    `source`, `message` (1-based number, or None when the file as a whole is at fault), `offset` (byte) and
    `problem` (what was wrong) say the same in parts, for programs that collect failures.
    """

    def __init__(self, text: str, source: str = "", message: int | None = None, offset: int | None = None,
                 problem: str = ""):
        super().__init__(text)
        self.source, self.message, self.offset, self.problem = source, message, offset, problem or text

    def __reduce__(self):  # keep the fields across pickling (Ray tasks)
        return type(self), (self.args[0], self.source, self.message, self.offset, self.problem)


def _fail(source: str, problem: str, message: int | None = None, offset: int | None = None) -> GribDecodeError:
    where = f"{source}: message {message} at byte {offset}" if message is not None else source
    return GribDecodeError(f"{where}: {problem}", source, message, offset, problem)


@dataclass(frozen=True)
class MessageInfo:
    """Header of one GRIB2 message (no data decoded)."""

    number: int  # 1-based position in the file
    offset: int  # byte offset of 'GRIB'
    length: int
    identity: tuple[int, int, int, str, int]
    variable: str | None  # lexicon name, None if not one of ours
    short_name: str  # eccodes' name, for messages ('unknown' for local parameters it lacks)
    valid_time: np.datetime64
    reference_time: np.datetime64
    step_range: str
    step_type: str
    grid: LambertGrid | None
    grid_error: str = ""

    def describe(self) -> str:
        d, c, n, lt, lv = self.identity
        name = self.variable or self.short_name
        return (f"message {self.number} ({name}: {d}/{c}/{n} {lt} {lv}, step {self.step_range} {self.step_type}, "
                f"valid {self.valid_time})")


@dataclass
class GribInventory:
    source: str
    size: int
    messages: list[MessageInfo]
    truncated: str = ""  # description of the break when scanned with strict=False
    _data: bytes = field(default=b"", repr=False)

    def variables(self) -> list[str]:
        return sorted({m.variable for m in self.messages if m.variable})

    def valid_times(self, variables: Sequence[str] | None = None) -> list[np.datetime64]:
        return sorted({m.valid_time for m in self.messages
                       if m.variable and (variables is None or m.variable in variables)})


def read_bytes(path_or_url: str | Path, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole file in memory; URLs (s3://, http(s)://, ...) go through fsspec."""
    src = str(path_or_url)
    try:
        if "://" in src and not src.startswith("file://"):
            import fsspec

            with fsspec.open(src, "rb", **dict(storage_options or {})) as f:
                return f.read()
        return Path(src.removeprefix("file://")).read_bytes()
    except FileNotFoundError:
        raise _fail(src, "file not found") from None
    except Exception as err:  # noqa: BLE001  network and credential errors of fsspec backends vary in type
        raise _fail(src, f"cannot read: {type(err).__name__}: {err}") from None


def _split(data: bytes, source: str, strict: bool) -> tuple[list[tuple[int, int, int]], str]:
    """(number, offset, length) of every complete message, and a description of a break if not strict."""
    out: list[tuple[int, int, int]] = []
    size = len(data)
    pos = 0
    while True:
        start = data.find(b"GRIB", pos)
        if start < 0:
            break  # trailing bytes without a message (e.g. a stray byte after the last 7777) are ignored
        number = len(out) + 1
        problem = ""
        if size - start < 16:
            problem = f"truncated: only {size - start} bytes of the 16-byte indicator section (file ends at {size})"
        elif data[start + 7] != 2:
            problem = f"GRIB edition {data[start + 7]} is not supported (GRIB2 only)"
        else:
            length = int.from_bytes(data[start + 8:start + 16], "big")
            if length < 16 + 4:
                problem = f"corrupt: indicator section declares an impossible length of {length} bytes"
            elif start + length > size:
                problem = (f"truncated: the message declares {length} bytes but the file ends at byte {size} "
                           f"({size - start} bytes of it present)")
            elif data[start + length - 4:start + length] != b"7777":
                problem = (f"corrupt: no end marker '7777' at byte {start + length - 4} where the declared length "
                           f"of {length} bytes puts it")
        if problem:
            err = _fail(source, problem, number, start)
            if strict or not out:
                raise err
            return out, str(err)
        out.append((number, start, length))
        pos = start + length
    if not out:
        raise _fail(source, f"no GRIB message found in {size} bytes")
    return out, ""


def _datetime(date: int, hhmm: int) -> np.datetime64:
    y, mo, d = date // 10000, date // 100 % 100, date % 100
    return np.datetime64(f"{y:04d}-{mo:02d}-{d:02d}T{hhmm // 100:02d}:{hhmm % 100:02d}", "s")


def _grid(h: int) -> tuple[LambertGrid | None, str]:
    g = eccodes.codes_get
    grid_type = g(h, "gridType")
    if grid_type != "lambert":
        return None, f"grid type {grid_type!r} is not supported (Lambert conformal only)"
    if g(h, "shapeOfTheEarth") != _EARTH_SHAPE_SPHERE_6371229:
        return None, f"earth shape {g(h, 'shapeOfTheEarth')} is not supported (6: sphere of radius 6371229 m)"
    if g(h, "scanningMode") != _SCAN_MODE_SOUTH_TO_NORTH:
        return None, f"scanning mode {g(h, 'scanningMode')} is not supported (64: rows west-east, south to north)"
    return LambertGrid(ny=g(h, "Ny"), nx=g(h, "Nx"), dx_m=float(g(h, "DxInMetres")), dy_m=float(g(h, "DyInMetres")),
                       lat_0=float(g(h, "LaDInDegrees")), lat_1=float(g(h, "Latin1InDegrees")),
                       lat_2=float(g(h, "Latin2InDegrees")), lon_0=float(g(h, "LoVInDegrees")),
                       first_lat=float(g(h, "latitudeOfFirstGridPointInDegrees")),
                       first_lon=float(g(h, "longitudeOfFirstGridPointInDegrees"))), ""


def _header(h: int, number: int, offset: int, length: int) -> MessageInfo:
    g = eccodes.codes_get
    identity = (int(g(h, "discipline")), int(g(h, "parameterCategory")), int(g(h, "parameterNumber")),
                str(g(h, "typeOfLevel")), int(g(h, "level")))
    var = find_by_identity(*identity)
    grid, grid_error = _grid(h)
    return MessageInfo(number=number, offset=offset, length=length, identity=identity,
                       variable=var.name if var else None, short_name=str(g(h, "shortName")),
                       valid_time=_datetime(int(g(h, "validityDate")), int(g(h, "validityTime"))),
                       reference_time=_datetime(int(g(h, "dataDate")), int(g(h, "dataTime"))),
                       step_range=str(g(h, "stepRange")), step_type=str(g(h, "stepType")),
                       grid=grid, grid_error=grid_error)


def _inventory(data: bytes, source: str, strict: bool) -> GribInventory:
    spans, truncated = _split(data, source, strict)
    infos = []
    for number, offset, length in spans:
        try:
            h = eccodes.codes_new_from_message(data[offset:offset + length])
        except eccodes.CodesInternalError as err:
            raise _fail(source, f"corrupt header: {err}", number, offset) from None
        try:
            infos.append(_header(h, number, offset, length))
        except eccodes.CodesInternalError as err:
            raise _fail(source, f"unreadable header key: {err}", number, offset) from None
        finally:
            eccodes.codes_release(h)
    return GribInventory(source=source, size=len(data), messages=infos, truncated=truncated, _data=data)


def scan_grib(path_or_url: str | Path, storage_options: Mapping[str, Any] | None = None, *,
              strict: bool = True) -> GribInventory:
    """Headers of every message of a file (no field decoded): what it holds, valid times, grid."""
    src = str(path_or_url)
    inv = _inventory(read_bytes(src, storage_options), src, strict)
    inv._data = b""
    return inv


@functools.lru_cache(maxsize=4)
def _latlon(grid: LambertGrid) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = grid.latlon()
    lat.setflags(write=False)
    lon.setflags(write=False)
    return lat, lon


def _select(inv: GribInventory, variables: Sequence[str] | None, valid_time: Any,
            step_range: str | None) -> dict[str, MessageInfo]:
    src = inv.source
    ours = [m for m in inv.messages if m.variable]
    holds = "; ".join(m.describe() for m in inv.messages) + (f"; then {inv.truncated}" if inv.truncated else "")
    if variables is not None:
        check_variables(list(variables))
        missing = sorted(set(variables) - {m.variable for m in ours})
        if missing:
            raise _fail(src, f"no message for {missing}; the file holds: {holds}")
        ours = [m for m in ours if m.variable in variables]
    elif not ours:
        raise _fail(src, f"no message holds a lexicon variable; the file holds: {holds}")
    if valid_time is not None:
        vt = np.datetime64(valid_time, "s")
        chosen = [m for m in ours if m.valid_time == vt]
        if not chosen:
            raise _fail(src, f"no selected message is valid at {vt}; the file holds: {holds}")
        ours = chosen
    times = sorted({m.valid_time for m in ours})
    if len(times) > 1:
        detail = "; ".join(f"{t}: {sorted({m.variable for m in ours if m.valid_time == t})}" for t in times)
        raise _fail(src, f"holds {len(times)} valid times ({detail}); one time per file is the contract: "
                         f"pass valid_time= to pick one")
    if step_range is not None:
        ours = [m for m in ours if m.step_type == "instant" or m.step_range == step_range]
    by_var: dict[str, list[MessageInfo]] = {}
    for m in ours:
        by_var.setdefault(m.variable, []).append(m)
    if variables is not None:
        gone = sorted(set(variables) - set(by_var))
        if gone:
            raise _fail(src, f"no message for {gone} with step_range={step_range!r}; the file holds: {holds}")
    for var, ms in by_var.items():
        if len(ms) > 1:
            detail = ", ".join(f"message {m.number} (step {m.step_range} {m.step_type})" for m in ms)
            raise _fail(src, f"{var} is held by {len(ms)} messages: {detail}; pass step_range= "
                             f"(e.g. {ms[0].step_range!r}) to pick one")
    for var, (m,) in by_var.items():
        if m.grid is None:
            raise _fail(src, f"({var}) {m.grid_error}", m.number, m.offset)
    grids = {m.grid for (m,) in by_var.values()}
    if len(grids) > 1:
        raise _fail(src, f"the selected messages lie on {len(grids)} different grids")
    return {var: ms[0] for var, ms in by_var.items()}


def _values(data: bytes, m: MessageInfo, source: str) -> np.ndarray:
    h = eccodes.codes_new_from_message(data[m.offset:m.offset + m.length])
    try:
        eccodes.codes_set(h, "missingValue", _MISSING)
        values = eccodes.codes_get_values(h)
    except eccodes.CodesInternalError as err:
        raise _fail(source, f"({m.variable}) data section cannot be decoded: {err}", m.number, m.offset) from None
    finally:
        eccodes.codes_release(h)
    grid = m.grid
    if values.size != grid.ny * grid.nx:
        raise _fail(source, f"({m.variable}) {values.size} values for a {grid.ny} x {grid.nx} grid", m.number,
                    m.offset)
    out = values.reshape(grid.ny, grid.nx).astype("float32")
    out[values.reshape(grid.ny, grid.nx) == _MISSING] = np.nan
    return out


def decode_grib(path_or_url: str | Path, variables: Sequence[str] | None = None,
                storage_options: Mapping[str, Any] | None = None, *, valid_time: Any = None,
                step_range: str | None = None, strict: bool = True) -> xr.Dataset:
    """Dataset (y, x) with one float32 variable per lexicon field found (or asked for), 2-D lat/lon coords.

    attrs: valid_time (np.datetime64), reference_time, projection (LambertGrid attrs), source, skipped
    (messages not in the lexicon), truncated (with strict=False, the description of a break, else "").
    """
    src = str(path_or_url)
    inv = _inventory(read_bytes(src, storage_options), src, strict)
    chosen = _select(inv, variables, valid_time, step_range)
    names = list(variables) if variables is not None else sorted(chosen)
    first = chosen[names[0]]
    lat, lon = _latlon(first.grid)
    data_vars = {}
    for name in names:
        m = chosen[name]
        meta: Variable = find_by_identity(*m.identity)
        data_vars[name] = xr.Variable(("y", "x"), _values(inv._data, m, src), attrs={
            "units": meta.units, "long_name": meta.long_name, "grib_key": meta.idx_key,
            "grib_message": m.number, "step_range": m.step_range, "step_type": m.step_type})
    return xr.Dataset(
        data_vars, coords={"latitude": (("y", "x"), lat), "longitude": (("y", "x"), lon)},
        attrs={"valid_time": first.valid_time, "reference_time": first.reference_time,
               "projection": first.grid.attrs(), "source": src,
               "skipped": [m.describe() for m in inv.messages if not m.variable], "truncated": inv.truncated})
