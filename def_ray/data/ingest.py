"""GRIB2 files (local or URLs) -> one Zarr store, one time step per valid time, in parallel Ray tasks.

How a run goes:
1. every source is scanned (headers only, one Ray task per file): its valid time, variables and grid;
2. sources are grouped by valid time, so files holding different variables of one time (HRRR byte-range
   fetches give one file per field) make one step; two files holding the same variable at the same time are a
   caller error, raised before anything is written;
3. the driver creates the store (or opens it to continue) and grows its time axis once (`ensure_times`); a
   path holding anything else is refused unless overwrite=True, and runs into one store may overlap in time
   (the store's lock serialises creating and growing it: see def_ray.data.zarr_store);
4. one Ray task per step not yet committed decodes its files and calls `ZarrStore.write_step` (all variables,
   then the committed flag), so a crash leaves no half-written step visible and a re-run redoes only what is
   missing;
5. the normalisation statistics are refreshed (`finalize`).

A file that cannot be decoded (GribDecodeError, wrong grid, off the time axis) is recorded in `report.failed`
with the file, the message number and the reason; the other files still ingest.  `format_report` gives the
summary the CLI prints before exiting non-zero when anything failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from def_ray.data.grib import GribDecodeError, GribInventory, decode_grib, scan_grib
from def_ray.data.grid import LambertGrid
from def_ray.data.lexicon import check_variables
from def_ray.data.fetch import storage_options_for
from def_ray.data.zarr_store import ForeignPathError, StoreError, StoreExistsError, ZarrStore

__all__ = ["IngestError", "FailedSource", "IngestReport", "ingest", "ingest_dataset", "format_report"]

_GRID_FIELDS = ("ny", "nx", "dx_m", "dy_m", "lat_0", "lat_1", "lat_2", "lon_0", "first_lat", "first_lon")
# GRIB2 stores angles in micro-degrees and lengths in millimetres: a grid read back from GRIB2 differs from the
# same grid computed in floating point by up to half of that
_GRID_TOLERANCE = {"dx_m": 1e-3, "dy_m": 1e-3}
_DEGREE_TOLERANCE = 1e-6
# a dataset may carry the projection flat in its attrs (as def_ray.data.synthetic does) instead of attrs["projection"]
_PROJECTION_KEYS = tuple(LambertGrid().attrs())


class IngestError(RuntimeError):
    """A run that cannot start as asked (conflicting sources, a store of other variables or grid)."""


@dataclass(frozen=True)
class FailedSource:
    source: str
    reason: str
    message: int | None = None  # 1-based GRIB message number where the file broke, if known
    valid_time: np.datetime64 | None = None
    offset: int | None = None  # byte offset of that message

    @classmethod
    def from_error(cls, err: GribDecodeError, valid_time: np.datetime64 | None = None,
                   note: str = "") -> FailedSource:
        return cls(err.source, err.problem + note, err.message, valid_time, err.offset)


@dataclass
class IngestReport:
    store: str
    variables: list[str]
    written: list[np.datetime64] = field(default_factory=list)  # steps committed by this run
    skipped: list[np.datetime64] = field(default_factory=list)  # steps already committed before the run
    failed: list[FailedSource] = field(default_factory=list)
    bytes_in: int = 0  # bytes of input read by the scan
    seconds: float = 0.0
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def format_report(report: IngestReport, max_failures: int = 10) -> str:
    """Human summary of a run; failures last, one line each (file, message, reason), at most `max_failures`."""
    lines = [f"ingest into {report.store} ({', '.join(report.variables)}): {len(report.written)} step(s) written, "
             f"{len(report.skipped)} already committed, {len(report.failed)} failure(s) "
             f"[{report.bytes_in / 1e6:.1f} MB in {report.seconds:.1f} s]"]
    if report.written:
        lines.append(f"  written: {min(report.written)} .. {max(report.written)}")
    shown = report.failed if len(report.failed) <= max_failures else report.failed[:max_failures - 1]
    for f in shown:
        where = f" (message {f.message} at byte {f.offset})" if f.message is not None else ""
        when = f" [step {f.valid_time}]" if f.valid_time is not None else ""
        lines.append(f"  FAILED {f.source}{where}{when}: {f.reason}")
    if len(shown) < len(report.failed):
        lines.append(f"  ... and {len(report.failed) - len(shown)} more failure(s)")
    return "\n".join(lines)


# -- work done in Ray tasks (plain functions, also called in-process when parallel=False) -----------------------
def _scan(source: str, storage_options: Mapping[str, Any] | None) -> GribInventory | FailedSource:
    try:
        return scan_grib(source, storage_options_for(source, storage_options))
    except GribDecodeError as err:
        return FailedSource.from_error(err)


def _write_fields(store: ZarrStore, t: np.datetime64, fields: Mapping[str, np.ndarray],
                  sources: str = "") -> tuple[np.datetime64, list[FailedSource]]:
    try:
        store.write_step(t, fields)
    except StoreError as err:
        return t, [FailedSource(sources or store.url, str(err), None, t)]
    return t, []


def _write_step(store: ZarrStore, t: np.datetime64, parts: Sequence[tuple[str, list[str]]],
                storage_options: Mapping[str, Any] | None, step_range: str | None
                ) -> tuple[np.datetime64, list[FailedSource]]:
    """Decode the files of one valid time and write them as one step; on a failure nothing is written."""
    fields: dict[str, np.ndarray] = {}
    for source, variables in parts:
        try:
            ds = decode_grib(source, variables, storage_options_for(source, storage_options), valid_time=t,
                             step_range=step_range)
        except GribDecodeError as err:
            others = [s for s, _ in parts if s != source]
            note = f" (step not written; its other files {others} are fine)" if others else ""
            return t, [FailedSource.from_error(err, t, note)]
        fields.update({v: ds[v].values for v in variables})
    return _write_fields(store, t, fields, ", ".join(s for s, _ in parts))


class _StepFields(Mapping):
    """The variables of one time index of a dataset, read only when accessed."""

    def __init__(self, ds: xr.Dataset, k: int, variables: Sequence[str]):
        self._ds, self._k, self._vars = ds, k, list(variables)

    def __getitem__(self, v: str) -> np.ndarray:
        if v not in self._vars:
            raise KeyError(v)
        return self._ds[v].isel(time=self._k).values

    def __iter__(self) -> Iterator[str]:
        return iter(self._vars)

    def __len__(self) -> int:
        return len(self._vars)


# -- driver helpers ---------------------------------------------------------------------------------------------
def _absolute(src: str) -> str:
    """Ray workers may run elsewhere than the driver's working folder: pass local paths absolute."""
    if "://" in src and not src.startswith("file://"):
        return src
    return str(Path(src.removeprefix("file://")).resolve())


def _run(fn: Callable, args: list[tuple], parallel: bool, label: str, progress: bool) -> Iterator[Any]:
    """Results of fn(*a) for every a, as they finish: Ray tasks (1 CPU each) or an in-process loop."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=len(args))
        if not parallel:
            for a in args:
                yield fn(*a)
                bar.advance(task)
            return
        import ray

        remote = ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(*a) for a in args]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
            bar.advance(task)


def _ensure_ray() -> bool:
    """Start a local Ray unless one is running (or reachable via RAY_ADDRESS); True if started here."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, log_to_driver=False)
    return True


def _same(key: str, a: Any, b: Any) -> bool:
    """Grid parameters equal up to the precision GRIB2 stores them with."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= _GRID_TOLERANCE.get(key, _DEGREE_TOLERANCE)
    return a == b


def _open_or_create(out: str, storage_options: Mapping[str, Any] | None, variables: Sequence[str],
                    lat: np.ndarray, lon: np.ndarray, t0: np.datetime64, dt_seconds: int, tile: int, shard: bool,
                    projection: Mapping[str, Any], source: str, overwrite: bool) -> ZarrStore:
    """A new store at `out`, or the def_ray store there checked to fit the data (another run may be creating it)."""
    try:
        return ZarrStore.create(out, variables=variables, latitude=lat, longitude=lon, t0=t0, dt_seconds=dt_seconds,
                                tile=tile, shard=shard, projection=projection, source=source,
                                storage_options=storage_options, overwrite=overwrite)
    except StoreExistsError:
        store = ZarrStore(out, storage_options, mode="a")
    except (ForeignPathError, ValueError) as err:
        raise IngestError(str(err)) from None
    if sorted(store.variables) != sorted(variables):
        raise IngestError(f"store {out} holds variables {store.variables}, not {list(variables)}; "
                          f"ingest these into a new store")
    if store.dt_seconds != dt_seconds:
        raise IngestError(f"store {out} has a {store.dt_seconds} s time step, not {dt_seconds} s")
    if store.shape[1:] != lat.shape:
        raise IngestError(f"store {out} has a {store.shape[1]} x {store.shape[2]} grid, the data "
                          f"{lat.shape[0]} x {lat.shape[1]}")
    have = store.projection
    differ = [k for k in _GRID_FIELDS if k in have and k in projection and not _same(k, have[k], projection[k])]
    if differ:
        raise IngestError(f"store {out} lies on another grid than the data ({', '.join(differ)} differ)")
    return store


def _check_numbers(**values: int | None) -> None:
    """Sizes that must be whole numbers >= 1 (None: a default chosen later), checked before any work starts."""
    bad = [f"{k}={v!r}" for k, v in values.items()
           if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1)]
    if bad:
        raise IngestError(f"{', '.join(bad)}: expected a whole number >= 1")


def _check_target(out: str, store_options: Mapping[str, Any] | None, overwrite: bool) -> None:
    """Refuse a path holding something else before the sources are read (ZarrStore.create checks it again)."""
    try:
        ZarrStore.check_target(out, store_options, overwrite)
    except ForeignPathError as err:
        raise IngestError(str(err)) from None


def _plan(inventories: Iterable[GribInventory], variables: Sequence[str], failed: list[FailedSource]
          ) -> tuple[dict[np.datetime64, list[tuple[str, list[str]]]], dict[np.datetime64, LambertGrid]]:
    """Group files by valid time; record files that cannot contribute; raise on conflicting files."""
    steps: dict[np.datetime64, list[tuple[str, list[str]]]] = {}
    grids: dict[np.datetime64, LambertGrid] = {}
    for inv in inventories:
        mine = [m for m in inv.messages if m.variable in variables]
        if not mine:
            held = "; ".join(m.describe() for m in inv.messages)
            failed.append(FailedSource(inv.source, f"holds none of {list(variables)}; it holds: {held}"))
            continue
        times = sorted({m.valid_time for m in mine})
        if len(times) > 1:
            failed.append(FailedSource(inv.source, f"holds {len(times)} valid times {[str(t) for t in times]}; "
                                                   f"one time per file is the contract"))
            continue
        bad_grid = next((m for m in mine if m.grid is None), None)
        if bad_grid is not None:
            failed.append(FailedSource(inv.source, bad_grid.grid_error, bad_grid.number, None, bad_grid.offset))
            continue
        t = times[0]
        held_vars = sorted({m.variable for m in mine})
        for other, other_vars in steps.get(t, []):
            both = sorted(set(held_vars) & set(other_vars))
            if both:
                raise IngestError(f"{inv.source} and {other} both hold {both} valid at {t}; give one file per "
                                  f"variable and time (e.g. one forecast cycle)")
        grid = mine[0].grid
        if t in grids and grids[t] != grid:
            failed.append(FailedSource(inv.source, f"grid differs from the other files valid at {t}"))
            continue
        steps.setdefault(t, []).append((inv.source, held_vars))
        grids[t] = grid
    for t in list(steps):
        got = {v for _, vs in steps[t] for v in vs}
        missing = sorted(set(variables) - got)
        if missing:
            files = [s for s, _ in steps.pop(t)]
            grids.pop(t)
            failed.append(FailedSource(", ".join(files), f"step {t}: no file holds {missing}", None, t))
    return steps, grids


# -- public entry points --------------------------------------------------------------------------------------
def ingest(sources: Sequence[str], out: str, variables: Sequence[str], *,
           storage_options: Mapping[str, Any] | None = None, store_options: Mapping[str, Any] | None = None,
           tile: int = 256, shard: bool = False, dt_seconds: int = 3600, step_range: str | None = None,
           parallel: bool = True, progress: bool = True, overwrite: bool = False) -> IngestReport:
    """Ingest GRIB2 files into the store at `out` (created if absent, else continued); see the module doc.

    storage_options are for reading the sources, store_options for the store (default: storage_options); each
    source and the store get only the options of their own filesystem.  step_range picks among accumulation
    messages of one variable (see def_ray.data.grib).  A path holding anything but a def_ray store is refused
    (IngestError) unless overwrite=True, which also replaces an existing store.
    """
    started = time.perf_counter()
    variables = list(variables)
    check_variables(variables)
    if not sources:
        raise IngestError("no sources given")
    if len(set(variables)) != len(variables):
        raise IngestError(f"duplicate variables in {variables}")
    _check_numbers(tile=tile, dt_seconds=dt_seconds)
    store_options = storage_options_for(out, storage_options if store_options is None else store_options)
    out = _absolute(out)
    _check_target(out, store_options, overwrite)
    sources = list(dict.fromkeys(_absolute(s) for s in sources))
    report = IngestReport(store=out, variables=variables)
    started_ray = parallel and _ensure_ray()
    try:
        inventories = []
        for res in _run(_scan, [(s, storage_options) for s in sources], parallel, "scan GRIB2", progress):
            if isinstance(res, FailedSource):
                report.failed.append(res)
            else:
                inventories.append(res)
                report.bytes_in += res.size
        steps, grids = _plan(inventories, variables, report.failed)
        if not steps:
            report.seconds = time.perf_counter() - started
            return report
        times = sorted(steps)
        grid = grids[times[0]]
        lat, lon = grid.latlon()
        store = _open_or_create(out, store_options, variables, lat, lon, times[0], dt_seconds, tile, shard,
                                grid.attrs(), "GRIB2 via def_ray.data.ingest", overwrite)
        todo = []
        for t in times:
            if grids[t] != grid:
                report.failed.extend(FailedSource(s, "grid differs from the store's", None, t) for s, _ in steps[t])
                continue
            try:
                if store.is_committed(t):
                    report.skipped.append(t)
                    continue
                if store.index_of(t) < 0:
                    raise StoreError(f"time {t} is before the store's first time {store.t0}")
            except StoreError as err:
                report.failed.extend(FailedSource(s, str(err), None, t) for s, _ in steps[t])
                continue
            todo.append(t)
        store.ensure_times(todo)
        args = [(store, t, steps[t], storage_options, step_range) for t in todo]
        for t, problems in _run(_write_step, args, parallel, "ingest steps", progress):
            if problems:
                report.failed.extend(problems)
            else:
                report.written.append(t)
        report.written.sort()
        if store.committed_mask().any():
            report.stats = store.finalize()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    report.seconds = time.perf_counter() - started
    return report


def ingest_dataset(ds: xr.Dataset, out: str, variables: Sequence[str] | None = None, *,
                   storage_options: Mapping[str, Any] | None = None, tile: int = 256, shard: bool = False,
                   dt_seconds: int | None = None, progress: bool = True, overwrite: bool = False) -> IngestReport:
    """Write an in-memory (time, y, x) dataset (synthetic scenes, MRMS series) through the same step writes.

    `ds` needs 2-D latitude/longitude coordinates; its attrs["projection"] is stored if present.  dt_seconds
    defaults to the smallest spacing of ds.time; every time must lie on that axis.  Committed steps are skipped.
    `overwrite` as for `ingest`.
    """
    started = time.perf_counter()
    _check_numbers(tile=tile, dt_seconds=dt_seconds)
    if "time" not in ds.dims or "latitude" not in ds.coords or "longitude" not in ds.coords:
        raise IngestError(f"ingest_dataset needs dims (time, y, x) and 2-D latitude/longitude coordinates; "
                          f"got dims {dict(ds.sizes)} and coords {list(ds.coords)}")
    variables = [v for v in ds.data_vars if ds[v].dims == ("time", "y", "x")] if variables is None \
        else list(variables)
    bad = [v for v in variables if v not in ds.data_vars or ds[v].dims != ("time", "y", "x")]
    if bad or not variables:
        raise IngestError(f"variables {bad or variables} are not (time, y, x) data variables of the dataset "
                          f"(has {[f'{v}{ds[v].dims}' for v in ds.data_vars]})")
    times = ds["time"].values.astype("datetime64[s]")
    if len(set(times.tolist())) != times.size:
        raise IngestError("the dataset has repeated times")
    if dt_seconds is None:
        gaps = np.diff(np.sort(times)).astype("int64")
        if gaps.size == 0:
            raise IngestError("one time step: pass dt_seconds")
        dt_seconds = int(gaps.min())
    out = _absolute(out)
    _check_target(out, storage_options_for(out, storage_options), overwrite)
    report = IngestReport(store=out, variables=variables)
    lat, lon = ds["latitude"].values, ds["longitude"].values
    projection = ds.attrs.get("projection") or {k: ds.attrs[k] for k in _PROJECTION_KEYS if k in ds.attrs}
    store = _open_or_create(out, storage_options_for(out, storage_options), variables, lat, lon, times.min(),
                            dt_seconds, tile, shard, dict(projection), str(ds.attrs.get("source", "xarray dataset")),
                            overwrite)
    todo = []
    for k, t in enumerate(times):
        if store.is_committed(t):
            report.skipped.append(t)
        else:
            todo.append(k)
    store.ensure_times(times[todo])
    args = [(store, times[k], _StepFields(ds, k, variables)) for k in todo]  # each step loaded when written
    for t, problems in _run(_write_fields, args, False, "write steps", progress):
        if problems:
            report.failed.extend(problems)
        else:
            report.written.append(t)
    if store.committed_mask().any():
        report.stats = store.finalize()
    report.seconds = time.perf_counter() - started
    return report
