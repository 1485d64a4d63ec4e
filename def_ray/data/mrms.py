"""MRMS radar mosaics (NSSL GRIB2, discipline 209) decoded into xarray, with their sentinel values handled.

MRMS files use NSSL's local parameter tables, which eccodes does not know (it calls the variable "unknown"), so a
product is recognised by (discipline, category, number). The mosaics mark pixels with sentinel values instead of
a bitmap; read against the real files:

- PrecipRate (209/6/1, mm/h): -3 = outside radar coverage (8.8 M of the 24.5 M pixels on 2019-06-10); 0 = no rain.
- GaugeCorr_QPE_01H (209/6/9, mm in the hour ending at the valid time): -3 = outside radar coverage, as for
  PrecipRate (35% of the grid on 2016-09-20/21); 0 = no rain.
- MergedReflectivityQCComposite (209/10/0, dBZ): -999 = outside radar coverage (8.7 M pixels, the same region
  PrecipRate marks -3), -99 = covered but no echo (14.4 M pixels, where PrecipRate is 0); this follows NSSL's
  convention "no coverage -999, missing -99" for mosaicked reflectivity.

No coverage becomes NaN and False in the `coverage` mask. "No echo" is a real observation (nothing above the
detection threshold), so it becomes a finite floor value, by default -10 dBZ, the floor HRRR's REFC uses, so that
radar and model fields compare directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from def_ray.data.lexicon import LEXICON, Variable

__all__ = ["MrmsProduct", "MRMS_PRODUCTS", "MrmsError", "MrmsHeader", "read_mrms_header", "read_mrms",
           "crop_and_coarsen", "read_mrms_series"]


class MrmsError(ValueError):
    """An MRMS file that cannot be decoded as one of the known products; the message names the file."""


@dataclass(frozen=True)
class MrmsProduct:
    """An MRMS product: its lexicon entry (name, NSSL product name, GRIB identity, units) and its sentinels."""

    variable: Variable
    no_coverage: tuple[float, ...]  # sentinels meaning "no radar sees this pixel" -> NaN
    no_echo: float | None = None  # sentinel meaning "seen, nothing detected"
    no_echo_value: float | None = None  # the value "no echo" becomes

    @property
    def name(self) -> str:  # our variable name in datasets and stores
        return self.variable.name

    @property
    def mrms_name(self) -> str:  # NSSL's product name (as in the file names)
        return self.variable.idx_key

    @property
    def units(self) -> str:
        return self.variable.units

    @property
    def long_name(self) -> str:
        return self.variable.long_name

    @property
    def identity(self) -> tuple[int, int, int]:
        return (self.variable.discipline, self.variable.category, self.variable.number)


MRMS_PRODUCTS: dict[tuple[int, int, int], MrmsProduct] = {p.identity: p for p in [
    MrmsProduct(LEXICON["preciprate"], (-3.0,)),
    MrmsProduct(LEXICON["qpe_01h"], (-3.0,)),
    MrmsProduct(LEXICON["refc_mrms"], (-999.0,), no_echo=-99.0, no_echo_value=-10.0),
]}

# sentinels are whole numbers and the data are packed to 0.1 (decimal scale factor 1): a tolerance of 1e-3 cannot
# confuse a sentinel with a measured value
_SENTINEL_TOL = 1e-3


@dataclass(frozen=True)
class MrmsHeader:
    product: MrmsProduct
    valid_time: datetime
    latitude: np.ndarray  # 1-D, in file order (north to south for MRMS)
    longitude: np.ndarray  # 1-D, degrees east in -180..180


def _read_bytes(path: str | Path, storage_options: dict[str, Any] | None) -> bytes:
    import fsspec

    with fsspec.open(str(path), "rb", compression="infer", **(storage_options or {})) as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":  # gzipped without a .gz name
        import gzip

        data = gzip.decompress(data)
    return data


def _header(h: Any, source: str) -> MrmsHeader:
    import eccodes

    def get(key: str) -> Any:
        return eccodes.codes_get(h, key)

    identity = (int(get("discipline")), int(get("parameterCategory")), int(get("parameterNumber")))
    product = MRMS_PRODUCTS.get(identity)
    if product is None:
        known = ", ".join(f"{p.mrms_name} {'/'.join(map(str, k))}" for k, p in MRMS_PRODUCTS.items())
        raise MrmsError(f"{source}: GRIB2 parameter {'/'.join(map(str, identity))} (discipline/category/number) is "
                        f"not a known MRMS product; known: {known}")
    if get("gridType") != "regular_ll":
        raise MrmsError(f"{source}: expected a regular lat/lon grid, found {get('gridType')!r}")
    ni, nj = int(get("Ni")), int(get("Nj"))
    lat0, lat1 = float(get("latitudeOfFirstGridPointInDegrees")), float(get("latitudeOfLastGridPointInDegrees"))
    lon0, lon1 = float(get("longitudeOfFirstGridPointInDegrees")), float(get("longitudeOfLastGridPointInDegrees"))
    dj, di = float(get("jDirectionIncrementInDegrees")), float(get("iDirectionIncrementInDegrees"))
    lat = lat0 + (1 if int(get("jScansPositively")) else -1) * dj * np.arange(nj)
    lon = lon0 + (-1 if int(get("iScansNegatively")) else 1) * di * np.arange(ni)
    if abs(lat[-1] - lat1) > dj / 2 or abs(lon[-1] - lon1) > di / 2:
        raise MrmsError(f"{source}: grid corners ({lat0}, {lon0})..({lat1}, {lon1}) disagree with {nj} x {ni} "
                        f"points at {dj} x {di} degrees")
    lat = np.round(lat, 6)
    lon = np.round((lon + 180.0) % 360.0 - 180.0, 6)
    # the reference time to the second (dataTime would drop the seconds MRMS file names carry)
    ref = datetime(*(int(get(k)) for k in ("year", "month", "day", "hour", "minute", "second")))
    unit = {0: "minutes", 1: "hours", 13: "seconds"}.get(int(get("indicatorOfUnitOfTimeRange")), "hours")
    valid = ref + timedelta(**{unit: int(get("forecastTime"))})
    return MrmsHeader(product, valid, lat, lon)


def _open(path: str | Path, storage_options: dict[str, Any] | None):
    import eccodes

    data = _read_bytes(path, storage_options)
    if data[:4] != b"GRIB":
        raise MrmsError(f"{path}: not a GRIB file (starts with {data[:4]!r})")
    try:
        return eccodes.codes_new_from_message(data)
    except eccodes.CodesInternalError as err:
        raise MrmsError(f"{path}: cannot decode GRIB2 message: {err}") from None


def read_mrms_header(path: str | Path, storage_options: dict[str, Any] | None = None) -> MrmsHeader:
    """Product, valid time and grid of an MRMS file, without decoding its values."""
    import eccodes

    h = _open(path, storage_options)
    try:
        return _header(h, str(path))
    finally:
        eccodes.codes_release(h)


def read_mrms(path: str | Path, *, no_echo_value: float | None = None,
              storage_options: dict[str, Any] | None = None) -> xr.DataArray:
    """One MRMS frame as a float32 DataArray (latitude, longitude) in file order (north to south).

    Pixels outside radar coverage are NaN, and the boolean coord `coverage` is False there. Reflectivity's
    "no echo" becomes `no_echo_value` (default: the product's, -10 dBZ). Plain or gzipped files, local or any
    fsspec URL.
    """
    import eccodes

    h = _open(path, storage_options)
    try:
        head = _header(h, str(path))
        values = eccodes.codes_get_values(h)
    finally:
        eccodes.codes_release(h)
    p = head.product
    grid = values.reshape(len(head.latitude), len(head.longitude)).astype(np.float32)
    no_cov = np.zeros(grid.shape, dtype=bool)
    for s in p.no_coverage:
        no_cov |= np.abs(grid - s) < _SENTINEL_TOL
    grid[no_cov] = np.nan
    fill = p.no_echo_value if no_echo_value is None else no_echo_value
    if p.no_echo is not None:
        grid[np.abs(grid - p.no_echo) < _SENTINEL_TOL] = fill
    attrs = {"product": p.mrms_name, "units": p.units, "long_name": p.long_name,
             "valid_time": head.valid_time.isoformat(), "grib_identity": "/".join(map(str, p.identity)),
             "no_coverage_sentinels": list(p.no_coverage), "source": str(path)}
    if p.no_echo is not None:
        attrs.update(no_echo_sentinel=p.no_echo, no_echo_value=fill)
    return xr.DataArray(
        grid, dims=("latitude", "longitude"), name=p.name, attrs=attrs,
        coords={"latitude": ("latitude", head.latitude, {"units": "degrees_north"}),
                "longitude": ("longitude", head.longitude, {"units": "degrees_east"}),
                "time": np.datetime64(head.valid_time, "ns"),
                "coverage": (("latitude", "longitude"), ~no_cov)})


def crop_and_coarsen(da: xr.DataArray, lat_range: tuple[float, float], lon_range: tuple[float, float],
                     factor: int, *, min_coverage: float = 0.5) -> xr.DataArray:
    """Crop to a lat/lon box (inclusive) and average factor x factor blocks, ignoring NaN.

    Partial blocks at the box's edges are dropped. The coord `coverage` becomes the fraction of each block's pixels
    that hold data; blocks with less than `min_coverage` become NaN (an average of a few pixels is not a block
    average).
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"coarsening factor must be a positive integer, got {factor!r}")
    if not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage must lie in [0, 1], got {min_coverage}")
    factor = int(factor)
    lat, lon = da["latitude"].values, da["longitude"].values
    (la0, la1), (lo0, lo1) = sorted(lat_range), sorted(lon_range)
    rows = np.flatnonzero((lat >= la0) & (lat <= la1))
    cols = np.flatnonzero((lon >= lo0) & (lon <= lo1))
    if len(rows) < factor or len(cols) < factor:
        raise ValueError(f"box lat {lat_range} lon {lon_range} holds {len(rows)} x {len(cols)} pixels of the "
                         f"grid lat {lat.min():.3f}..{lat.max():.3f} lon {lon.min():.3f}..{lon.max():.3f}; "
                         f"at least {factor} x {factor} are needed")
    crop = da.isel(latitude=rows, longitude=cols).drop_vars("coverage", errors="ignore")
    blocks = {"latitude": factor, "longitude": factor}
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # all-NaN blocks are meant NaN
        mean = crop.coarsen(blocks, boundary="trim").mean()  # skips NaN (float data)
    covered = crop.notnull().coarsen(blocks, boundary="trim").mean().astype(np.float32)
    out = mean.where(covered >= min_coverage).astype(np.float32)
    out = out.assign_coords(coverage=covered.variable)
    out.attrs = {**da.attrs, "coarsen_factor": factor, "min_coverage": min_coverage}
    return out


def read_mrms_series(paths: Sequence[str | Path], box: tuple[float, float, float, float], factor: int, *,
                     min_coverage: float = 0.5, no_echo_value: float | None = None,
                     storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Frames of one MRMS product, cropped to box = (lat_min, lat_max, lon_min, lon_max) and coarsened.

    Returns a Dataset (time, y, x) in time order with y running south to north (as in the HRRR store), holding the
    product (named as in MRMS_PRODUCTS, e.g. "preciprate") and `coverage` (fraction of each block with data), with
    2-D `latitude` / `longitude` coordinates. Mixed products, different grids or repeated times are errors.
    """
    if not paths:
        raise ValueError("read_mrms_series: no files given")
    if len(box) != 4:
        raise ValueError(f"box must be (lat_min, lat_max, lon_min, lon_max), got {box!r}")
    headers = [(read_mrms_header(p, storage_options), p) for p in paths]
    products = {h.product.name for h, _ in headers}
    if len(products) > 1:
        raise MrmsError(f"read_mrms_series: files mix products {sorted(products)}")
    headers.sort(key=lambda hp: hp[0].valid_time)
    times = [h.valid_time for h, _ in headers]
    dup = sorted({t for t in times if times.count(t) > 1})
    if dup:
        raise MrmsError(f"read_mrms_series: several files for time(s) {[t.isoformat() for t in dup]}")

    frames, cover, first = [], [], None
    for head, path in headers:
        da = crop_and_coarsen(read_mrms(path, no_echo_value=no_echo_value, storage_options=storage_options),
                              box[:2], box[2:], factor, min_coverage=min_coverage)
        da = da.isel(latitude=slice(None, None, -1)) if da.latitude[0] > da.latitude[-1] else da
        if first is None:
            first = da
        elif not (np.array_equal(da.latitude, first.latitude) and np.array_equal(da.longitude, first.longitude)):
            raise MrmsError(f"{path}: grid differs from {headers[0][1]}")
        frames.append(da.values)
        cover.append(da["coverage"].values)
    assert first is not None
    lat2d, lon2d = np.meshgrid(first.latitude.values, first.longitude.values, indexing="ij")
    name = headers[0][0].product.name
    var_attrs = {k: v for k, v in first.attrs.items() if k not in ("valid_time", "source")}
    return xr.Dataset(
        {name: (("time", "y", "x"), np.stack(frames).astype(np.float32), var_attrs),
         "coverage": (("time", "y", "x"), np.stack(cover).astype(np.float32),
                      {"long_name": "fraction of each block's pixels inside radar coverage", "units": "1"})},
        coords={"time": np.array(times, dtype="datetime64[ns]"),
                "latitude": (("y", "x"), lat2d.astype(np.float32), {"units": "degrees_north"}),
                "longitude": (("y", "x"), lon2d.astype(np.float32), {"units": "degrees_east"})},
        attrs={"source": "NOAA NSSL MRMS", "product": headers[0][0].product.mrms_name,
               "box": list(box), "coarsen_factor": int(factor), "grid_mapping_name": "latitude_longitude",
               "source_files": [Path(str(p)).name for _, p in headers]})
