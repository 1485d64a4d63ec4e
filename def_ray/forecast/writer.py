"""Write a forecast Dataset as Zarr (v3) or NetCDF, chosen by extension, to a local path or an fsspec URL.

What a writer promises (the "nothing lost" rule of the design):
- An existing path is never replaced unless overwrite=True; the default refuses with FileExistsError naming it.
- Local outputs are written beside the destination first and moved into place only once complete (a rename), so
  a crash never leaves a half-written forecast where a reader (or the previous forecast) expects a whole one; of
  two writers racing for one new path, one wins and the other gets FileExistsError.
- Remote Zarr is written under a temporary prefix beside the destination, then copied into place with the
  `zarr.json` metadata last (the root's very last), so an interrupted copy does not open as a forecast; remote
  NetCDF is one object (one PUT), created with If-None-Match on s3:// when not overwriting.
- `check_output_not_input` refuses an output that is, lies inside or contains an input store.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import xarray as xr

__all__ = ["write_forecast", "open_forecast", "netcdf_bytes", "output_format", "check_output_not_input"]

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


def _exists_error(path: str) -> FileExistsError:
    return FileExistsError(f"forecast output {path} already exists; pass --overwrite (overwrite=True) to replace it")


def write_forecast(ds: xr.Dataset, path: str, storage_options: Mapping[str, Any] | None = None, *,
                   overwrite: bool = False) -> str:
    """Write `ds` to `path` (.zarr -> Zarr v3, .nc -> NetCDF-4); returns the path written.

    An existing path is refused (FileExistsError) unless overwrite=True; see the module doc for what a crash or a
    concurrent writer leaves.
    """
    path = str(path)
    fmt = output_format(path)
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
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=_encoding(ds))
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
    if fmt == "netcdf":
        _put_once(fs, remote, netcdf_bytes(ds), overwrite, path)
        return path
    tmp_url = f"{path.rstrip('/').rsplit('/', 1)[0]}/.{posixpath.basename(remote)}.tmp-{uuid.uuid4().hex[:8]}"
    _, tmp = fsspec.core.url_to_fs(tmp_url, **opts)
    try:
        ds.to_zarr(tmp_url, mode="w-", zarr_format=3, consolidated=False, storage_options=opts,
                   encoding=_encoding(ds))
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
