"""The Zarr v3 store of gridded fields: layout, crash-safe writes of time steps, and reads.

Layout of one store (a Zarr v3 group at a local path or an fsspec URL such as s3://bucket/hrrr.zarr):

    <var>          float32 (time, y, x), chunks (1, tile, tile), NaN where not written; one array per variable
    time           int64   (time,)  seconds since 1970-01-01 (CF attributes, so xarray decodes it)
    latitude       float32 (y, x)   longitude float32 (y, x)
    committed      uint8   (time,)  1 once every variable of that step is written: readers see only these steps
    step_stats     float64 (time, variable, 3)  per step sum, sum of squares and count of finite values
    attrs          variables, dt_seconds, tile, projection, source, stats (summary of step_stats)

The time axis is regular (t0 + i * dt) and grows forward as needed; steps never written stay uncommitted.
Writing a step writes every variable and its statistics first and flips `committed` last, so a crash mid-way leaves
the step invisible and a re-run rewrites it whole.  Every per-step array has one chunk per step, so Ray tasks can
write different steps of one store in parallel.

Creating and growing (the store contract for several writers):
- `create` refuses a path that holds anything but a def_ray store (a local folder with other content, a file, an
  s3 prefix with objects) unless `overwrite=True`, and checks its arguments before it writes anything.  A create
  that was interrupted (the group is marked as ours but `committed` is missing) is redone without asking.
- Writers of one store may run at the same time (processes, hosts, Ray tasks).  Only the changes of shared
  metadata take the store's lock: creating the store, growing the time axis (`ensure_times`) and refreshing the
  summary statistics (`finalize`).  Each re-reads the store under the lock, so the time axis only ever grows and
  ends as long as the longest request; step writes need no lock (each step has chunks of its own, and a step two
  runs both write gets the same values from both).  Every step therefore appears once, and readers never see a
  step that is not whole.
- The lock is `<store>/.def_ray.lock`: on local disk an `fcntl.flock` (the kernel drops it when its holder dies);
  on s3:// a lease object created with a conditional PUT (`If-None-Match: *`), which S3 lets exactly one writer
  create, deleted when released.  A lease older than `LEASE_TTL_S` by the server's clock (its holder died) is taken
  over with `If-Match` on its ETag.  A writer that cannot get the lock within `LOCK_TIMEOUT_S` stops with
  `StoreLockTimeout`, leaving the store valid.  Other fsspec protocols get no lock: one writer at a time there.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import random
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zarr

from def_ray.data.lexicon import LEXICON

__all__ = ["ZarrStore", "StoreError", "StoreExistsError", "ForeignPathError", "StoreLockTimeout", "StoreLock",
           "LOCK_NAME", "LOCK_TIMEOUT_S", "LEASE_TTL_S", "to_seconds", "to_datetime64"]

log = logging.getLogger(__name__)

_STATS = ("sum", "sumsq", "count")
LOCK_NAME = ".def_ray.lock"
LOCK_TIMEOUT_S = 180.0  # the lock is held for seconds (creating or growing); minutes of waiting mean trouble
LEASE_TTL_S = 60.0  # an s3 lease this old belongs to a dead writer


class StoreError(RuntimeError):
    pass


class StoreExistsError(StoreError):
    """`create` found a def_ray store at the path: open it (mode='a') to continue it."""


class ForeignPathError(StoreError):
    """`create` found something else at the path; it is left as it was unless overwrite=True."""


class StoreLockTimeout(StoreError):
    """Another writer held the store's lock for longer than the timeout; nothing was changed by this call."""


def to_seconds(t: Any) -> int:
    return int(np.datetime64(t, "s").astype("int64"))


def to_datetime64(seconds: Iterable[int] | int) -> np.ndarray:
    return np.asarray(seconds, dtype="int64").astype("datetime64[s]")


@dataclass
class _Stats:
    mean: float
    std: float


# -- the store's lock -------------------------------------------------------------------------------------------
def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _filesystem(url: str, storage_options: Mapping[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) of a store URL; local paths made absolute."""
    if _is_local(url):
        return fsspec.filesystem("file"), str(Path(url.removeprefix("file://")).absolute())
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs, path.rstrip("/")


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"


class _FileLease:
    """fcntl.flock on the lock file; the kernel drops it when its holder dies, so it never goes stale."""

    def __init__(self, root: str):
        self.where = str(Path(root) / LOCK_NAME)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        path = Path(self.where)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.stat(path)
            mine = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except (BlockingIOError, FileNotFoundError):
            mine = False
        if not mine:  # held, or the holder removed the file between our open and our flock: try again later
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, _holder().encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return Path(self.where).read_text().strip() or "an unknown writer"
        except OSError:
            return "nobody (released meanwhile)"

    def release(self) -> None:
        import fcntl

        Path(self.where).unlink(missing_ok=True)  # still locked: a waiter that opened it re-checks the inode
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _precondition_failed(err: OSError) -> bool:
    """s3fs's translation of 412 PreconditionFailed (and 409 ConditionalRequestConflict: a race, try again)."""
    code = (getattr(err.__cause__, "response", None) or {}).get("Error", {}).get("Code")
    return isinstance(err, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict") \
        or "pre-condition" in str(err) or "precondition" in str(err).lower()


class _S3Lease:
    """A lease object created with a conditional PUT (If-None-Match: *): S3 lets exactly one writer create it.

    A lease older than ttl_s by the server's clock is taken over with If-Match on its ETag (one taker wins); every
    lease body holds a random token, so two leases never share an ETag.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, ttl_s: float):
        self.fs, self.ttl_s = fs, ttl_s
        self.bucket, self.key, _ = fs.split_path(f"{root}/{LOCK_NAME}")
        self.where = f"s3://{self.bucket}/{self.key}"
        self._etag: str | None = None

    def _call(self, method: str, **kw) -> dict:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kw)

    def _put(self, body: bytes, **condition: str) -> str | None:
        try:
            return self._call("put_object", Body=body, **condition)["ETag"]
        except OSError as err:
            if _precondition_failed(err):
                return None
            raise

    def try_acquire(self) -> bool:
        body = json.dumps({"holder": _holder(), "token": uuid.uuid4().hex}).encode()
        self._etag = self._put(body, IfNoneMatch="*") or self._take_over_if_stale(body)
        return self._etag is not None

    def _take_over_if_stale(self, body: bytes) -> str | None:
        try:
            head = self._call("head_object")
        except FileNotFoundError:
            return None  # released meanwhile: the next try creates it
        date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
        age = (now - head["LastModified"]).total_seconds()
        if age <= self.ttl_s:
            return None
        log.warning("%s is %.0f s old (lease time %.0f s): its holder is gone, taking it over", self.where, age,
                    self.ttl_s)
        return self._put(body, IfMatch=head["ETag"])

    def holder(self) -> str:
        try:
            return json.loads(self.fs.cat_file(f"{self.bucket}/{self.key}")).get("holder", "an unknown writer")
        except FileNotFoundError:
            return "nobody (released meanwhile)"
        except (OSError, ValueError):
            return "an unknown writer"

    def release(self) -> None:
        try:
            self._call("delete_object", IfMatch=self._etag)
        except FileNotFoundError:
            log.warning("%s was gone at release: it was held past its %.0f s lease time", self.where, self.ttl_s)
        except OSError as err:
            if not _precondition_failed(err):
                raise
            log.warning("%s was taken over before release: it was held past its %.0f s lease time", self.where,
                        self.ttl_s)
        self._etag = None


class _NoLease:
    """Protocols without a conditional create: no lock (one writer at a time is the caller's duty)."""

    warned: set[str] = set()

    def __init__(self, url: str):
        self.where = url
        if url not in self.warned:
            self.warned.add(url)
            log.warning("%s: no store lock on this protocol; run one writer at a time", url)

    def try_acquire(self) -> bool:
        return True

    def holder(self) -> str:
        return "nobody"

    def release(self) -> None:
        pass


class StoreLock:
    """The store's lock (see the module doc), as a context manager; held only around metadata changes."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *,
                 timeout_s: float | None = None, ttl_s: float | None = None):
        self.url = str(url)
        self.timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
        fs, root = _filesystem(self.url, dict(storage_options or {}))
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if _is_local(self.url):
            self._lease = _FileLease(root)
        elif protocol in ("s3", "s3a"):
            self._lease = _S3Lease(fs, root, LEASE_TTL_S if ttl_s is None else ttl_s)
        else:
            self._lease = _NoLease(self.url)

    @property
    def where(self) -> str:
        return self._lease.where

    def __enter__(self) -> StoreLock:
        deadline = time.monotonic() + self.timeout_s
        pause = 0.02
        while not self._lease.try_acquire():
            if time.monotonic() >= deadline:
                raise StoreLockTimeout(f"{self.url}: lock {self.where} still held by {self._lease.holder()} after "
                                       f"{self.timeout_s:.0f} s; another writer is changing the store, retry later")
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._lease.release()


def _probe(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """What lies at root: 'absent', 'store', 'partial' (an interrupted create of ours) or 'foreign'."""
    fs.invalidate_cache()
    if not fs.exists(root):
        return "absent"
    if fs.isfile(root):
        return "foreign"
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
    if not [n for n in names if n != LOCK_NAME]:
        return "absent"
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
    except (FileNotFoundError, ValueError):
        # beside our lock, a group document not (yet) readable is a create of ours under way (a racing writer is
        # writing it: local files are not written atomically) or interrupted; without the lock it is someone else's
        return "partial" if LOCK_NAME in names else "foreign"
    if meta.get("node_type") != "group" or "def_ray_store" not in meta.get("attributes", {}):
        return "foreign"
    return "store" if fs.exists(f"{root}/committed/zarr.json") else "partial"


def _foreign(url: str) -> ForeignPathError:
    return ForeignPathError(f"{url} exists and is not a def_ray store; pass --overwrite (overwrite=True) to "
                            f"replace it")


def _clear(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Remove what lies under root, except the lock we hold there."""
    for p in fs.ls(root, detail=False):
        if posixpath.basename(p.rstrip("/")) != LOCK_NAME:
            fs.rm(p, recursive=True)
    fs.invalidate_cache()


def _check_layout(url: str, variables: Sequence[str], latitude: np.ndarray, longitude: np.ndarray,
                  dt_seconds: int, n_times: int, tile: int) -> None:
    """Arguments of `create` that would fail half-way through it fail here, before anything is written."""
    problems = []
    if not variables or len(set(variables)) != len(variables):
        problems.append(f"variables must be distinct and at least one, got {list(variables)}")
    if np.ndim(latitude) != 2 or np.shape(latitude) != np.shape(longitude):
        problems.append(f"latitude {np.shape(latitude)} and longitude {np.shape(longitude)} must be one 2-D shape")
    if not isinstance(tile, (int, np.integer)) or tile < 1:
        problems.append(f"tile must be a whole number of grid points >= 1, got {tile!r}")
    if not isinstance(dt_seconds, (int, np.integer)) or dt_seconds < 1:
        problems.append(f"dt_seconds must be a whole number >= 1, got {dt_seconds!r}")
    if n_times < 0:
        problems.append(f"n_times must be >= 0, got {n_times}")
    if problems:
        raise ValueError(f"store {url}: " + "; ".join(problems))


class ZarrStore:
    """A handle on one store; cheap to create, picklable (re-opens lazily in each process)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, mode: str = "r"):
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.mode = mode
        self._group: zarr.Group | None = None

    # -- opening and creating -------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        return {"url": self.url, "storage_options": self.storage_options, "mode": self.mode, "_group": None}

    def _open_kwargs(self) -> dict[str, Any]:
        return {} if _is_local(self.url) else {"storage_options": self.storage_options}

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            try:
                self._group = zarr.open_group(self.url, mode="r" if self.mode == "r" else "r+",
                                              zarr_format=3, **self._open_kwargs())
            except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
                raise StoreError(f"no def_ray store at {self.url}: {err}") from None
            if "committed" not in self._group:
                raise StoreError(f"{self.url} is a Zarr group but not a def_ray store (no 'committed' array)")
        return self._group

    def exists(self) -> bool:
        try:
            self.group
            return True
        except StoreError:
            return False

    def lock(self, timeout_s: float | None = None) -> StoreLock:
        """The store's lock, for changes of shared metadata (see the module doc)."""
        return StoreLock(self.url, self.storage_options, timeout_s=timeout_s)

    def _fresh_group(self) -> zarr.Group:
        """The group as it is now on storage (another writer may have changed it since `group` was opened)."""
        return zarr.open_group(self.url, mode="r+", zarr_format=3, **self._open_kwargs())

    @staticmethod
    def check_target(url: str, storage_options: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        """Raise ForeignPathError if `url` holds anything but a def_ray store (cheap: run it before long work)."""
        if not overwrite and _probe(*_filesystem(str(url), dict(storage_options or {}))) == "foreign":
            raise _foreign(url)

    @classmethod
    def create(cls, url: str, *, variables: Sequence[str], latitude: np.ndarray, longitude: np.ndarray,
               t0: Any, dt_seconds: int, n_times: int = 0, tile: int = 256, shard: bool = False,
               projection: Mapping[str, Any] | None = None, source: str = "",
               storage_options: Mapping[str, Any] | None = None, overwrite: bool = False) -> ZarrStore:
        """Create an empty store, under the store's lock.

        Raises StoreExistsError where a def_ray store is (open it with mode='a' to continue it) and
        ForeignPathError where anything else is, unless overwrite=True replaces either.
        """
        _check_layout(url, variables, latitude, longitude, dt_seconds, n_times, tile)
        self = cls(url, storage_options, mode="a")
        fs, root = _filesystem(self.url, self.storage_options)
        if overwrite and fs.isfile(root):  # no lock can live inside a file
            fs.rm_file(root)
        cls.check_target(url, storage_options, overwrite)  # refuse before the lock creates a folder
        with self.lock():
            found = _probe(fs, root)
            if found == "store" and not overwrite:
                raise StoreExistsError(f"a store already exists at {url}")
            if found == "foreign" and not overwrite:
                raise _foreign(url)
            if found != "absent":
                _clear(fs, root)
            self._write_layout(list(variables), latitude, longitude, t0, int(dt_seconds), n_times, int(tile),
                               shard, projection, source)
        self._group = None
        return self

    def _write_layout(self, variables: list[str], latitude: np.ndarray, longitude: np.ndarray, t0: Any,
                      dt_seconds: int, n_times: int, tile: int, shard: bool, projection: Mapping[str, Any] | None,
                      source: str) -> None:
        # the group is marked as ours in its first write, so an interrupted create is recognised and redone
        g = zarr.open_group(self.url, mode="a", zarr_format=3, attributes={"def_ray_store": 1},
                            **self._open_kwargs())
        ny, nx = latitude.shape
        tile_y, tile_x = min(tile, ny), min(tile, nx)
        shards = (1, -(-ny // tile_y) * tile_y, -(-nx // tile_x) * tile_x) if shard else None
        for v in variables:
            a = g.create_array(v, shape=(n_times, ny, nx), chunks=(1, tile_y, tile_x), shards=shards,
                               dtype="float32", fill_value=np.nan, dimension_names=("time", "y", "x"))
            meta = LEXICON.get(v)
            if meta is not None:
                a.attrs.update(units=meta.units, long_name=meta.long_name, grib_key=meta.idx_key,
                               coordinates="latitude longitude")
        t = g.create_array("time", shape=(n_times,), chunks=(1024,), dtype="int64", fill_value=0,
                           dimension_names=("time",))
        t.attrs.update(units="seconds since 1970-01-01 00:00:00", calendar="proleptic_gregorian",
                       standard_name="time")
        if n_times:
            t[:] = to_seconds(t0) + dt_seconds * np.arange(n_times)
        for name, arr, attrs in (("latitude", latitude, {"units": "degrees_north", "standard_name": "latitude"}),
                                 ("longitude", longitude, {"units": "degrees_east", "standard_name": "longitude"})):
            a = g.create_array(name, shape=arr.shape, chunks=(tile_y, tile_x), dtype="float32",
                               dimension_names=("y", "x"))
            a[:] = arr.astype("float32")
            a.attrs.update(attrs)
        g.create_array("step_stats", shape=(n_times, len(variables), 3), chunks=(1, len(variables), 3),
                       dtype="float64", fill_value=0.0, dimension_names=("time", "variable", "stat"))
        g.attrs.update(def_ray_store=1, variables=variables, t0=to_seconds(t0), dt_seconds=dt_seconds,
                       tile=tile, projection=dict(projection or {}), source=source, stats={})
        # last: `exists()` looks for this array, so a create that crashed before here is redone by the next one
        g.create_array("committed", shape=(n_times,), chunks=(1,), dtype="uint8", fill_value=0,
                       dimension_names=("time",))

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def variables(self) -> list[str]:
        return list(self.group.attrs["variables"])

    @property
    def dt_seconds(self) -> int:
        return int(self.group.attrs["dt_seconds"])

    @property
    def t0(self) -> np.datetime64:
        return to_datetime64(self.group.attrs["t0"])

    @property
    def shape(self) -> tuple[int, int, int]:
        # the time length is the committed array's: it grows last, so an interrupted ensure_times does not count
        return (self.group["committed"].shape[0], *self.group[self.variables[0]].shape[1:])

    @property
    def projection(self) -> dict:
        return dict(self.group.attrs.get("projection", {}))

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        return self.group["latitude"][:], self.group["longitude"][:]

    def all_times(self) -> np.ndarray:
        return to_datetime64(self.group["time"][:self.shape[0]])

    def committed_mask(self) -> np.ndarray:
        return self.group["committed"][:].astype(bool)

    def committed_times(self) -> np.ndarray:
        return self.all_times()[self.committed_mask()]

    def index_of(self, t: Any) -> int:
        """Index of time t on the regular axis (may be beyond the current end)."""
        offset = to_seconds(t) - int(self.group.attrs["t0"])
        if offset % self.dt_seconds:
            raise StoreError(f"time {np.datetime64(t, 's')} is not on the store's {self.dt_seconds} s axis "
                             f"starting {self.t0}")
        return offset // self.dt_seconds

    # -- writing ----------------------------------------------------------------------------------------------
    def ensure_times(self, times: Iterable[Any]) -> None:
        """Grow the time axis so that it covers `times`; safe while other writers grow or write the store."""
        idx = [self.index_of(t) for t in times]
        if not idx:
            return
        if min(idx) < 0:
            raise StoreError(f"time {to_datetime64(int(self.group.attrs['t0']) + min(idx) * self.dt_seconds)} is "
                             f"before the store's first time {self.t0}; ingest it into a new store")
        if max(idx) + 1 > self.shape[0]:
            with self.lock():
                self._grow(max(idx) + 1)

    def _grow(self, n_new: int) -> None:
        """Grow every per-step array to n_new (never shrink), `committed` last; call under the lock."""
        g = self._fresh_group()
        n_old = g["committed"].shape[0]
        if n_new <= n_old:  # another writer grew it meanwhile
            return
        for name in (*self.variables, "step_stats", "time"):  # arrays a crashed earlier call grew stay as they are
            if g[name].shape[0] < n_new:
                g[name].resize((n_new, *g[name].shape[1:]))
        g["time"][n_old:n_new] = int(g.attrs["t0"]) + self.dt_seconds * np.arange(n_old, n_new)
        g["committed"].resize((n_new,))  # last: only now does the axis count as grown

    def is_committed(self, t: Any) -> bool:
        i = self.index_of(t)
        return 0 <= i < self.shape[0] and bool(self.group["committed"][i])

    def write_step(self, t: Any, fields: Mapping[str, np.ndarray]) -> None:
        """Write every variable of one time step, then mark it committed (the last write)."""
        missing = [v for v in self.variables if v not in fields]
        if missing:
            raise StoreError(f"step {np.datetime64(t, 's')}: no data for {missing}; the step stays uncommitted")
        i = self.index_of(t)
        if not 0 <= i < self.shape[0]:
            raise StoreError(f"step {np.datetime64(t, 's')} outside the time axis; call ensure_times first")
        g = self.group
        ny, nx = self.shape[1:]
        stats = np.zeros((len(self.variables), 3))
        for k, v in enumerate(self.variables):
            a = np.asarray(fields[v], dtype="float32")
            if a.shape != (ny, nx):
                raise StoreError(f"step {np.datetime64(t, 's')} variable {v}: shape {a.shape} != store {(ny, nx)}")
            g[v][i] = a
            finite = a[np.isfinite(a)].astype("float64")
            stats[k] = finite.sum(), np.square(finite).sum(), finite.size
        g["step_stats"][i] = stats
        g["committed"][i] = 1

    def finalize(self) -> dict[str, dict[str, float]]:
        """Refresh the summary statistics in the group attributes from the committed steps."""
        with self.lock():  # under the lock: of two writers finishing together, the later one sees all steps
            summary = {v: {"mean": s.mean, "std": s.std} for v, s in self.stats().items()}
            self._fresh_group().attrs.update(stats=summary)
        self._group = None
        return summary

    # -- reading ----------------------------------------------------------------------------------------------
    def stats(self, time_indices: Sequence[int] | None = None) -> dict[str, _Stats]:
        """Per-variable mean and standard deviation over committed steps (optionally only `time_indices`)."""
        committed = self.committed_mask()
        sel = np.flatnonzero(committed) if time_indices is None else np.asarray(
            [i for i in time_indices if committed[i]], dtype=int)
        if sel.size == 0:
            raise StoreError(f"{self.url}: no committed steps to compute statistics from")
        total = self.group["step_stats"].get_orthogonal_selection((sel, slice(None), slice(None))).sum(axis=0)
        out = {}
        for k, v in enumerate(self.variables):
            s, ss, n = total[k]
            if n == 0:
                raise StoreError(f"{self.url}: variable {v} has no finite values in the selected steps")
            mean = s / n
            std = float(np.sqrt(max(ss / n - mean * mean, 0.0)))
            out[v] = _Stats(float(mean), std if std > 1e-6 else 1.0)
        return out

    def read(self, variable: str, time_index: int | slice | Sequence[int], y: slice = slice(None),
             x: slice = slice(None)) -> np.ndarray:
        if variable not in self.variables:
            raise StoreError(f"variable {variable!r} not in store {self.url} (has {self.variables})")
        arr = self.group[variable]
        if isinstance(time_index, (int, np.integer, slice)):
            return arr[time_index, y, x]
        return arr.get_orthogonal_selection((np.asarray(time_index), y, x))

    def read_frames(self, variables: Sequence[str], time_indices: Sequence[int], y: slice = slice(None),
                    x: slice = slice(None)) -> np.ndarray:
        """Array (len(time_indices), len(variables), ny, nx) of raw values."""
        return np.stack([self.read(v, list(time_indices), y, x) for v in variables], axis=1)

    def to_xarray(self, committed_only: bool = True):
        """The store as an xarray Dataset (time decoded, lat/lon coords)."""
        import xarray as xr

        ds = xr.open_zarr(self.url, zarr_format=3, consolidated=False,
                          storage_options=self.storage_options if self._open_kwargs() else None)
        ds = ds.set_coords([c for c in ("latitude", "longitude") if c in ds])
        if committed_only:
            ds = ds.isel(time=np.flatnonzero(ds["committed"].values))
        return ds
