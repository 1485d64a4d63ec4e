"""Write a forecast Dataset as Zarr (v3) or NetCDF, chosen by extension, to a local path or an fsspec URL.

Local outputs are written beside the destination first and moved into place only once complete, so a crash never
leaves a half-written forecast where a reader (or the previous forecast) expects a whole one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

__all__ = ["write_forecast", "open_forecast", "netcdf_bytes", "output_format"]

# the HDF5 library under netCDF4 is not thread-safe: one NetCDF write at a time per process (the Serve ingress
# answers several requests from threads)
_NETCDF_LOCK = threading.Lock()

_FORMATS = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf"}


def output_format(path: str) -> str:
    """'zarr' or 'netcdf' from the extension; anything else is an error naming the path."""
    ext = os.path.splitext(str(path).rstrip("/"))[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"forecast output {path!r}: unknown extension {ext!r}; use .zarr or .nc")
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


def netcdf_bytes(ds: xr.Dataset) -> bytes:
    """The Dataset as the bytes of a NetCDF-4 file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forecast.nc"
        with _NETCDF_LOCK:
            ds.to_netcdf(path, engine="netcdf4")
        return path.read_bytes()


def write_forecast(ds: xr.Dataset, path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write `ds` to `path` (.zarr -> Zarr v3, .nc -> NetCDF-4), replacing what was there; returns the path."""
    path = str(path)
    fmt = output_format(path)
    opts = dict(storage_options or {})
    if _is_remote(path):
        if fmt == "zarr":
            ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, storage_options=opts,
                       encoding=_encoding(ds))
        else:
            import fsspec

            fs, remote = fsspec.core.url_to_fs(path, **opts)
            with fs.open(remote, "wb") as f:
                f.write(netcdf_bytes(ds))
        return path
    dest = Path(path.removeprefix("file://")).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if fmt == "zarr":
            ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=_encoding(ds))
        else:
            with _NETCDF_LOCK:
                ds.to_netcdf(tmp, engine="netcdf4")
        if dest.is_dir():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return str(dest)


def open_forecast(path: str, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open a written forecast (Zarr or NetCDF, local or remote), lazily."""
    path = str(path)
    opts = dict(storage_options or {})
    if output_format(path) == "zarr":
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
