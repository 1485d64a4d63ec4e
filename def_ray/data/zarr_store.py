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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from def_ray.data.lexicon import LEXICON

__all__ = ["ZarrStore", "StoreError", "to_seconds", "to_datetime64"]

_STATS = ("sum", "sumsq", "count")


class StoreError(RuntimeError):
    pass


def to_seconds(t: Any) -> int:
    return int(np.datetime64(t, "s").astype("int64"))


def to_datetime64(seconds: Iterable[int] | int) -> np.ndarray:
    return np.asarray(seconds, dtype="int64").astype("datetime64[s]")


@dataclass
class _Stats:
    mean: float
    std: float


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
        if "://" in self.url and not self.url.startswith("file://"):
            return {"storage_options": self.storage_options}
        return {}

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

    @classmethod
    def create(cls, url: str, *, variables: Sequence[str], latitude: np.ndarray, longitude: np.ndarray,
               t0: Any, dt_seconds: int, n_times: int = 0, tile: int = 256, shard: bool = False,
               projection: Mapping[str, Any] | None = None, source: str = "",
               storage_options: Mapping[str, Any] | None = None) -> ZarrStore:
        """Create an empty store (fails if one exists: open it with mode='a' to continue it)."""
        self = cls(url, storage_options, mode="a")
        if self.exists():
            raise StoreError(f"a store already exists at {url}")
        ny, nx = latitude.shape
        g = zarr.open_group(self.url, mode="w", zarr_format=3, **self._open_kwargs())
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
        g.attrs.update(def_ray_store=1, variables=list(variables), t0=to_seconds(t0), dt_seconds=int(dt_seconds),
                       tile=int(tile), projection=dict(projection or {}), source=source, stats={})
        # last: `exists()` looks for this array, so a create that crashed before here is redone by the next one
        g.create_array("committed", shape=(n_times,), chunks=(1,), dtype="uint8", fill_value=0,
                       dimension_names=("time",))
        self._group = None
        return self

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
        """Grow the time axis so that it covers `times` (call from one process before parallel writes)."""
        idx = [self.index_of(t) for t in times]
        if not idx:
            return
        if min(idx) < 0:
            raise StoreError(f"time {to_datetime64(int(self.group.attrs['t0']) + min(idx) * self.dt_seconds)} is "
                             f"before the store's first time {self.t0}; ingest it into a new store")
        n_old = self.shape[0]
        n_new = max(idx) + 1
        if n_new <= n_old:
            return
        g = self.group
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
        summary = {v: {"mean": s.mean, "std": s.std} for v, s in self.stats().items()}
        self.group.attrs.update(stats=summary)
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
