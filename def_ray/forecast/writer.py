"""Write a forecast Dataset as Zarr (v3), NetCDF or GRIB2 (probabilities and mean only, def_ray.forecast.grib_output),
chosen by extension, to a local path or an fsspec URL.

What a writer promises (the "nothing lost" rule of the design):
- An existing path is never replaced unless overwrite=True; the default refuses with FileExistsError naming it.
- Local outputs are written beside the destination first and moved into place only once complete (a rename), so
  a crash never leaves a half-written forecast where a reader (or the previous forecast) expects a whole one; of
  two writers racing for one new path, one wins and the other gets FileExistsError.
- Remote Zarr is written under a temporary prefix beside the destination, then copied into place with the
  `zarr.json` metadata last (the root's very last), so an interrupted copy does not open as a forecast; remote
  NetCDF and GRIB2 are one object (one PUT), created with If-None-Match on s3:// when not overwriting.
- `check_output_not_input` refuses an output that is, lies inside or contains an input store.

What is written is standard (`cf_conventions`, applied by `write_forecast` and `netcdf_bytes`): each variable with
its CF `standard_name` where CF has one, the threshold coordinate with units and a long_name, probabilities in
units "1" with a long_name naming the variable and its threshold units.  Zarr is written v3 with consolidated
metadata (a plain ``xr.open_zarr(path)`` opens it quietly); tools of the Panoply class open the NetCDF form (`.nc`;
`def-ray demo` writes both).
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import xarray as xr

__all__ = ["write_forecast", "open_forecast", "netcdf_bytes", "output_format", "check_output_not_input",
           "cf_conventions", "CF_STANDARD_NAMES"]

CF_STANDARD_NAMES: dict[str, str] = {
    # reflectivity: CF's name for radar reflectivity in dBZ; composite = the column's maximum (said in long_name)
    "refc": "equivalent_reflectivity_factor",
    "refc_mrms": "equivalent_reflectivity_factor",
    # a 1-hour QPE in mm is a liquid-water-equivalent depth (CF's precipitation_amount is a mass, kg m-2)
    "qpe_01h": "lwe_thickness_of_precipitation_amount",
    "apcp": "precipitation_amount",  # kg m-2
    "prate": "precipitation_flux",  # kg m-2 s-1
    "preciprate": "lwe_precipitation_rate",  # mm h-1
    "t2m": "air_temperature",
    "d2m": "dew_point_temperature",
    "tsfc": "surface_temperature",
    "u10": "eastward_wind",
    "v10": "northward_wind",
    "gust": "wind_speed_of_gust",
    "cape": "atmosphere_convective_available_potential_energy",
    "cin": "atmosphere_convective_inhibition",
    "hpbl": "atmosphere_boundary_layer_thickness",
}
"""CF standard names (CF standard name table) of the lexicon's variables that have one."""

_PRODUCTS = ("_mean", "_spread", "_quantile")  # same quantity as the variable (cell_methods say which statistic)

# the HDF5 library under netCDF4 is not thread-safe: one NetCDF write at a time per process (the Serve ingress
# answers several requests from threads)
_NETCDF_LOCK = threading.Lock()

_FORMATS = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".grib2": "grib2",
            ".grb2": "grib2"}


def output_format(path: str) -> str:
    """'zarr', 'netcdf' or 'grib2' from the extension; anything else is an error naming the path."""
    ext = os.path.splitext(str(path).rstrip("/"))[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"forecast output {path!r}: unknown extension {ext!r}; use .zarr or .nc (the whole forecast) "
                         "or .grib2 (probabilities and mean)")
    return _FORMATS[ext]


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    # one chunk per member and lead keeps a single member or lead readable without reading the rest
    enc = {}
    for name, v in ds.data_vars.items():
        if {"member", "lead_time"} <= set(v.dims):
            enc[name] = {"chunks": tuple(1 if d in ("member", "lead_time") else s for d, s in v.sizes.items())}
    return enc


def _to_zarr(ds: xr.Dataset, where: Any, **kwargs: Any) -> None:
    """A new Zarr v3 store with consolidated metadata in its root zarr.json, so that a plain ``xr.open_zarr(path)``
    opens it without a warning (zarr-python warns, at write time only, that v3 has no consolidated metadata in its
    specification yet; readers that ignore it read the arrays' own metadata)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        ds.to_zarr(where, mode="w-", zarr_format=3, consolidated=True, encoding=_encoding(ds), **kwargs)


def _targets(ds: xr.Dataset) -> list[str]:
    targets = ds.attrs.get("targets")
    if isinstance(targets, str):
        targets = [targets]
    if targets is None:
        targets = [n for n, v in ds.data_vars.items() if "member" in v.dims]
    return [str(t) for t in targets if t in ds.data_vars]


def cf_conventions(ds: xr.Dataset) -> xr.Dataset:
    """`ds` (a forecast of def_ray.forecast.ensemble) with the CF attributes a CF reader looks for; attributes
    already there are kept.  A shallow copy: the arrays are shared, the attributes are new."""
    from def_ray.data.lexicon import LEXICON

    out = ds.copy(deep=False)
    for name in list(out.variables):
        out[name].attrs = dict(ds[name].attrs)
    threshold_units, threshold_names = set(), set()
    for name in _targets(out):
        meta = LEXICON.get(name)
        units = out[name].attrs.get("units", meta.units if meta is not None else "")
        long_name = out[name].attrs.get("long_name", meta.long_name if meta is not None else name)
        standard_name = CF_STANDARD_NAMES.get(name)
        for var in [name] + [name + suffix for suffix in _PRODUCTS]:
            if var in out.data_vars and standard_name:
                out[var].attrs.setdefault("standard_name", standard_name)
        prob = f"{name}_probability"
        if prob in out.data_vars:
            attrs = out[prob].attrs
            attrs["units"] = "1"
            attrs["long_name"] = f"probability that {long_name} >= threshold" + (f" ({units})" if units else "")
            attrs.pop("standard_name", None)  # CF has no standard name for an exceedance probability
            if units:
                attrs.setdefault("threshold_units", units)
            threshold_units.add(units)
            threshold_names.add(standard_name)
    if "threshold" in out.coords:
        attrs = out["threshold"].attrs
        if len(threshold_units) == 1 and next(iter(threshold_units)):
            attrs["units"] = next(iter(threshold_units))
        if len(threshold_names) == 1 and next(iter(threshold_names)):  # the thresholded quantity (as IMPROVER does)
            attrs.setdefault("standard_name", next(iter(threshold_names)))
        names = ", ".join(_targets(out)) or "the variable"
        attrs["long_name"] = f"exceedance threshold of {names}"
        attrs["spp__relative_to_threshold"] = "greater_than_or_equal_to"  # P(x >= threshold)
    if "quantile" in out.coords:
        out["quantile"].attrs.setdefault("units", "1")
        out["quantile"].attrs.setdefault("long_name", "ensemble quantile (probability level)")
    out.attrs.setdefault("Conventions", "CF-1.10")
    return out


def netcdf_bytes(ds: xr.Dataset) -> bytes:
    """The Dataset (with `cf_conventions`) as the bytes of a NetCDF-4 file."""
    ds = cf_conventions(ds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forecast.nc"
        with _NETCDF_LOCK:
            ds.to_netcdf(path, engine="netcdf4")
        return path.read_bytes()


def _file_bytes(ds: xr.Dataset, fmt: str) -> bytes:
    """The single-file formats as bytes."""
    if fmt == "grib2":
        from def_ray.forecast.grib_output import grib2_bytes

        return grib2_bytes(ds)
    return netcdf_bytes(ds)


def _exists_error(path: str) -> FileExistsError:
    return FileExistsError(f"forecast output {path} already exists; pass --overwrite (overwrite=True) to replace it")


def write_forecast(ds: xr.Dataset, path: str, storage_options: Mapping[str, Any] | None = None, *,
                   overwrite: bool = False) -> str:
    """Write `ds` with its CF attributes (`cf_conventions`) to `path` (.zarr -> Zarr v3, .nc -> NetCDF-4, .grib2 ->
    GRIB2 of the probabilities and the mean); returns the path written.

    An existing path is refused (FileExistsError) unless overwrite=True; see the module doc for what a crash or a
    concurrent writer leaves.
    """
    path = str(path)
    fmt = output_format(path)
    ds = cf_conventions(ds)
    if _is_remote(path):
        return _write_remote(ds, path, fmt, dict(storage_options or {}), overwrite)
    return _write_local(ds, Path(path.removeprefix("file://")).absolute(), fmt, overwrite)


def _write_local(ds: xr.Dataset, dest: Path, fmt: str, overwrite: bool) -> str:
    """Write beside `dest`, then rename into place (refusing, or replacing, what is there)."""
    if not overwrite and (dest.exists() or dest.is_symlink()):
        raise _exists_error(str(dest))  # before the work: the rename below refuses again, atomically
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if fmt == "zarr":
            _to_zarr(ds, tmp)
        elif fmt == "grib2":
            tmp.write_bytes(_file_bytes(ds, fmt))
        else:
            with _NETCDF_LOCK:
                ds.to_netcdf(tmp, engine="netcdf4")
        if overwrite:
            _replace(tmp, dest)
        else:
            _rename_new(tmp, dest)
    finally:
        _remove(tmp)
    return str(dest)


def _rename_new(tmp: Path, dest: Path) -> None:
    """Move tmp to dest only if dest does not exist, atomically (a link for files, a rename for folders)."""
    try:
        if tmp.is_dir():
            if dest.is_dir() and not any(dest.iterdir()):
                raise _exists_error(str(dest))  # rename(2) would silently replace an empty folder
            os.rename(tmp, dest)
        else:
            os.link(tmp, dest)
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise _exists_error(str(dest)) from None
        raise


def _replace(tmp: Path, dest: Path) -> None:
    """Move tmp to dest, replacing a file or a folder; the old one is removed only once the new one is in place."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    dest.rename(old)
    try:
        os.rename(tmp, dest)
    except OSError:
        old.rename(dest)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_remote(ds: xr.Dataset, path: str, fmt: str, opts: dict[str, Any], overwrite: bool) -> str:
    import fsspec

    fs, remote = fsspec.core.url_to_fs(path, **opts)
    remote = remote.rstrip("/")
    fs.invalidate_cache()
    if fs.exists(remote) and not overwrite:
        raise _exists_error(path)
    if fmt != "zarr":
        _put_once(fs, remote, _file_bytes(ds, fmt), overwrite, path)
        return path
    tmp_url = f"{path.rstrip('/').rsplit('/', 1)[0]}/.{posixpath.basename(remote)}.tmp-{uuid.uuid4().hex[:8]}"
    _, tmp = fsspec.core.url_to_fs(tmp_url, **opts)
    try:
        _to_zarr(ds, tmp_url, storage_options=opts)
        fs.invalidate_cache()
        if overwrite and fs.exists(remote):
            fs.rm(remote, recursive=True)
        _copy_metadata_last(fs, tmp.rstrip("/"), remote)
    finally:
        fs.invalidate_cache()
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
    return path


def _put_once(fs: Any, remote: str, data: bytes, overwrite: bool, url: str) -> None:
    """One object; on s3:// created with If-None-Match unless overwriting, so a racing writer cannot be replaced."""
    if overwrite or "s3" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        fs.pipe_file(remote, data)
        return
    try:
        fs.pipe_file(remote, data, mode="create")
    except FileExistsError:
        raise _exists_error(url) from None


def _copy_metadata_last(fs: Any, src: str, dest: str) -> None:
    """Copy every object under src to dest: chunks first, then zarr.json files deepest first, the root's last."""
    files = sorted(fs.find(src))
    meta = sorted((f for f in files if posixpath.basename(f) == "zarr.json"), key=lambda f: -f.count("/"))
    data = [f for f in files if posixpath.basename(f) != "zarr.json"]
    for group in (data, meta):
        if group:
            fs.copy(group, [dest + f[len(src):] for f in group])


def check_output_not_input(out: str, inputs: Sequence[str]) -> None:
    """Raise ValueError when `out` is, lies inside or contains one of `inputs` (writing there could destroy it).

    Local paths are compared resolved (symlinks, '..', relative to the working folder); URLs normalised (scheme
    and host lower case, s3a -> s3, repeated and trailing slashes and '.'/'..' segments removed).
    """
    target = _location(out)
    for inp in inputs:
        src = _location(inp)
        if target[0] != src[0]:
            continue
        if target[1] == src[1]:
            relation = "the same location as"
        elif target[1].startswith(src[1].rstrip("/") + "/"):
            relation = "inside"
        elif src[1].startswith(target[1].rstrip("/") + "/"):
            relation = "a folder holding"
        else:
            continue
        raise ValueError(f"forecast output {out} is {relation} input {inp}; write the forecast to a new path")


def _location(path: str) -> tuple[str, str]:
    """(scheme and host, normalised path) of a local path or URL, for comparing locations."""
    path = str(path)
    if not _is_remote(path):
        return "file", str(Path(path.removeprefix("file://")).expanduser().resolve())
    parts = urlsplit(path)
    scheme = {"s3a": "s3", "gcs": "gs"}.get(parts.scheme.lower(), parts.scheme.lower())
    return f"{scheme}://{parts.netloc.lower()}", posixpath.normpath("/" + parts.path.lstrip("/"))


def open_forecast(path: str, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open a written forecast (Zarr or NetCDF, local or remote), lazily."""
    path = str(path)
    opts = dict(storage_options or {})
    fmt = output_format(path)
    if fmt == "grib2":
        raise ValueError(f"{path}: a GRIB2 forecast holds products only; read it with eccodes or cfgrib")
    if fmt == "zarr":
        return xr.open_zarr(path, zarr_format=3, consolidated=False,
                            storage_options=opts if _is_remote(path) else None)
    if _is_remote(path):
        import fsspec

        fs, remote = fsspec.core.url_to_fs(path, **opts)
        with fs.open(remote, "rb") as f:
            data = f.read()
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "forecast.nc"
            local.write_bytes(data)
            return xr.load_dataset(local, engine="netcdf4")
    return xr.open_dataset(path.removeprefix("file://"), engine="netcdf4")
