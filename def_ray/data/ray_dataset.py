"""Ray Data streams of training windows read from a def_ray Zarr store (local path or s3://).

`prepare_windows(data_cfg)` opens the store once on the driver, splits its committed steps by time
(def_ray.data.windows) and computes the normalisation statistics from the frames of the TRAIN windows only.
`WindowData.dataset(split, ...)` then gives a lazy `ray.data.Dataset` (a custom Datasource; Ray's read_zarr
refuses zarr 3) whose read tasks each cover a run of consecutive windows and read its time range once per
variable, so reading is parallel and streaming: a task holds at most about `block_bytes` of frames, and nothing
reads the whole store.

Rows: ``cond`` float32 (n_past * n_vars [+ static], h, w), frames oldest -> newest, each with all variables in
config order, then the static fields; ``target`` float32 (n_targets, h, w); ``time`` int64, valid time of the
target in seconds since 1970.  Values are normalised ((x - mean) / std per variable); NaN (missing) becomes 0.

Training datasets are shuffled (task order and rows within a block; the trainer adds a local shuffle buffer) and
cropped at random; both draw from ``numpy.random.default_rng((seed, pass, task))`` where `pass` counts how often
this dataset object has been planned, i.e. once per epoch of iteration.  A restarted worker group re-plans from
pass 0, so its crops repeat those of the first epochs: random, reproducible, but not tied to the epoch number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from def_ray.data.layout import ChannelLayout
from def_ray.data.normalise import Normaliser, static_fields, static_scaling, transform
from def_ray.data.windows import Splits, WindowError, frame_offsets, split_windows, window_times
from def_ray.data.zarr_store import StoreError, ZarrStore

if TYPE_CHECKING:
    from def_ray.config import DataConfig

__all__ = ["WindowSpec", "WindowReader", "WindowData", "WindowDatasource", "prepare_windows",
           "training_normaliser", "resolve_storage_options"]


@dataclass(frozen=True)
class WindowSpec:
    """Everything a read task needs; small and picklable (the store handle re-opens lazily)."""

    url: str
    storage_options: dict[str, Any]
    variables: tuple[str, ...]
    target_variables: tuple[str, ...]
    n_past: int
    dt_steps: int
    normaliser: Normaliser  # the training split's statistics
    times: np.ndarray  # int64 seconds of every store index
    shape: tuple[int, int]  # (ny, nx)
    static_names: tuple[str, ...] = ()
    static: np.ndarray | None = None  # (n_static, ny, nx) already normalised
    first_guess: bool = False  # conditioning holds the extrapolation first guess; targets are residuals over it

    @property
    def layout(self) -> ChannelLayout:
        return ChannelLayout.of(self.n_past, self.variables, self.target_variables, self.static_names,
                                self.first_guess)

    @property
    def cond_channels(self) -> int:
        return self.layout.cond_channels

    @property
    def target_channels(self) -> int:
        return self.layout.target_channels

    def bytes_per_window(self, crop: int | None) -> int:
        h, w = (crop, crop) if crop else self.shape
        return 4 * h * w * (self.cond_channels + self.target_channels)


class WindowReader:
    """Reads normalised windows from the store; used by the read tasks and by plain (non-Ray) loops."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        self.store = ZarrStore(spec.url, spec.storage_options)
        self._offsets = frame_offsets(spec.n_past, spec.dt_steps)
        self._held: tuple[int, int, dict[str, np.ndarray]] | None = None

    def hold(self, starts: Sequence[int]) -> None:
        """Read the whole grid of the time range of `starts` once and cut every later read from it (many crops
        of few windows: one read instead of one per crop)."""
        need = window_times(np.asarray(starts, dtype=np.int64), self.spec.n_past, self.spec.dt_steps)
        lo, hi = int(need.min()), int(need.max()) + 1
        self._held = (lo, hi, {v: self.store.read(v, slice(lo, hi)) for v in self.spec.variables})

    def _read(self, v: str, t: slice, y: slice, x: slice) -> np.ndarray:
        if self._held is not None and self._held[0] <= t.start and t.stop <= self._held[1]:
            lo = self._held[0]
            return self._held[2][v][t.start - lo:t.stop - lo, y, x]
        return self.store.read(v, t, y, x)

    def read_block(self, starts: Sequence[int], region: tuple[int, int, int, int] | None = None,
                   crop: int | None = None, crops: Sequence[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
        """Windows at `starts` from ONE read per variable of their time range inside `region` (y0, x0, h, w;
        None = the whole grid).  With `crop`, window i is the crop x crop square at crops[i] inside the region."""
        s = self.spec
        starts = np.asarray(starts, dtype=np.int64)
        need = window_times(starts, s.n_past, s.dt_steps)
        lo, hi = int(need[0]), int(need[-1]) + 1
        ry, rx, rh, rw = region if region is not None else (0, 0, *s.shape)
        if crop is not None and (crops is None or len(crops) != len(starts)):
            raise ValueError("a cropped read needs one (y0, x0) per window")
        raw = [self._read(v, slice(lo, hi), slice(ry, ry + rh), slice(rx, rx + rw)) for v in s.variables]
        frames = [s.normaliser.normalise_variable(r, v) for r, v in zip(raw, s.variables)]
        layout = s.layout
        conds, targets = [], []
        for i, st in enumerate(starts):
            rel = st - lo + self._offsets
            cy, cx = crops[i] if crop is not None else (0, 0)
            h, w = (crop, crop) if crop is not None else (rh, rw)
            local = (slice(None), slice(cy, cy + h), slice(cx, cx + w))
            past = np.stack([f[rel[:-1]] for f in frames], axis=1)  # (n_past, n_vars, region)
            guide = None
            if layout.first_guess:  # the motion of the whole region read, then the crop
                fg, motion = layout.guide(np.stack([r[rel[:-1]] for r in raw], axis=1), past)
                guide = (fg[local], motion[local])
            static = None if s.static is None else s.static[:, ry + cy:ry + cy + h, rx + cx:rx + cx + w]
            conds.append(layout.assemble(past[(slice(None), *local)], static, guide))
            target = np.stack([frames[k][rel[-1]][local[1:]] for k in layout.target_idx], axis=0)
            targets.append(target - guide[0] if guide is not None else target)
        return {"cond": np.stack(conds), "target": np.stack(targets),
                "time": s.times[starts + int(self._offsets[-1])].astype(np.int64)}

    def read(self, starts: Sequence[int], crops: Sequence[tuple[int, int]] | None = None,
             crop: int | None = None, context: int = 0) -> dict[str, np.ndarray]:
        """Windows at `starts`, in that order; with `crop`, window i is the square at crops[i] = (y0, x0) of the
        grid, read with `context` points around it (clipped to the grid) for the first guess's motion.  Full-frame
        windows close in time share their reads."""
        starts = np.asarray(starts, dtype=np.int64)
        if crop is not None:
            if crops is None or len(crops) != len(starts):
                raise ValueError("a cropped read needs one (y0, x0) per window")
            ny, nx = self.spec.shape
            parts = []
            for st, (y0, x0) in zip(starts, crops):
                ry, rx = max(0, int(y0) - context), max(0, int(x0) - context)
                rh, rw = min(ny, int(y0) + crop + context) - ry, min(nx, int(x0) + crop + context) - rx
                parts.append(self.read_block([st], (ry, rx, rh, rw), crop, [(int(y0) - ry, int(x0) - rx)]))
            order = np.arange(len(starts))
        else:
            order = np.argsort(starts, kind="stable")
            parts = [self.read_block(run) for run in _runs(starts[order], int(self._offsets[-1]) + 1)]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in ("cond", "target", "time")}
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return {k: v[back] for k, v in merged.items()}

    def random_crops(self, rng: np.random.Generator, n: int, crop: int,
                     region: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """n random (y0, x0) of a crop inside a region of shape `region` (default the grid)."""
        ny, nx = region if region is not None else self.spec.shape
        return list(zip(rng.integers(0, ny - crop + 1, n).tolist(), rng.integers(0, nx - crop + 1, n).tolist()))


def _runs(sorted_starts: np.ndarray, span: int, max_len: int | None = None) -> list[np.ndarray]:
    """Split ascending starts where windows stop overlapping (a gap of `span` or more) or a run reaches max_len."""
    if sorted_starts.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(sorted_starts) >= span) + 1
    runs = np.split(sorted_starts, cuts)
    if max_len:
        runs = [r[i:i + max_len] for r in runs for i in range(0, len(r), max_len)]
    return runs


CLASS_EDGES = (0.005, 0.05, 0.2)  # rain classes of a crop: the fraction of it at or above the event threshold


def event_threshold(variable: str) -> float:
    """What counts as rain when crops are classed: 1 mm (h-1) for precipitation, else 20 (dBZ)."""
    from def_ray.data.lexicon import lookup

    return 1.0 if lookup(variable).precipitation else 20.0


@dataclass(frozen=True)
class CropPlan:
    """Candidate crops of each window's target frame by rain class (LDCast-style oversampling of rain): a draw
    picks a non-empty class uniformly, then a candidate, then shifts it by up to half the stride.  Candidates lie
    where at least `min_coverage` of the crop holds data (never outside radar coverage)."""

    crop: int
    stride: int
    shape: tuple[int, int]
    candidates: dict[int, tuple[np.ndarray, ...]]  # window start -> per class an (n, 2) array of (y0, x0)

    def draw(self, start: int, rng: np.random.Generator) -> tuple[int, int]:
        classes = [c for c in self.candidates[int(start)] if len(c)]
        if not classes:  # no covered crop at all: anywhere
            ny, nx = self.shape
            return int(rng.integers(0, ny - self.crop + 1)), int(rng.integers(0, nx - self.crop + 1))
        pool = classes[int(rng.integers(len(classes)))]
        y0, x0 = pool[int(rng.integers(len(pool)))]
        j = self.stride // 2
        return (int(np.clip(y0 + rng.integers(-j, j + 1), 0, self.shape[0] - self.crop)),
                int(np.clip(x0 + rng.integers(-j, j + 1), 0, self.shape[1] - self.crop)))

    def class_counts(self) -> np.ndarray:
        return np.sum([[len(c) for c in per] for per in self.candidates.values()], axis=0)


def _box_sums(a: np.ndarray, crop: int, stride: int) -> np.ndarray:
    """Sums of `a` over crop x crop squares at every stride-th position (integral image)."""
    ii = np.pad(np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1), ((1, 0), (1, 0)))
    y = np.arange(0, a.shape[0] - crop + 1, stride)
    x = np.arange(0, a.shape[1] - crop + 1, stride)
    return (ii[np.ix_(y + crop, x + crop)] - ii[np.ix_(y, x + crop)] - ii[np.ix_(y + crop, x)] + ii[np.ix_(y, x)])


def plan_rain_crops(spec: WindowSpec, starts: Sequence[int], crop: int, stride: int | None = None,
                    min_coverage: float = 0.95) -> CropPlan:
    """Classify every candidate crop of each window's target frame (first target) by its rain fraction."""
    stride = stride or max(1, crop // 4)
    store = ZarrStore(spec.url, spec.storage_options)
    variable = spec.target_variables[0]
    thr = event_threshold(variable)
    last = int(frame_offsets(spec.n_past, spec.dt_steps)[-1])
    ny, nx = spec.shape
    ys = np.arange(0, ny - crop + 1, stride)
    xs = np.arange(0, nx - crop + 1, stride)
    out = {}
    for st in np.unique(np.asarray(starts, dtype=np.int64)):
        frame = store.read(variable, int(st) + last)
        area = float(crop * crop)
        covered = _box_sums(np.isfinite(frame).astype(np.float32), crop, stride) / area
        rain = _box_sums(np.nan_to_num(frame, nan=-np.inf) >= thr, crop, stride) / area
        cls = np.digitize(rain, CLASS_EDGES)
        ok = covered >= min_coverage
        out[int(st)] = tuple(np.stack([ys[iy], xs[ix]], axis=1) for iy, ix in
                             (np.nonzero(ok & (cls == c)) for c in range(len(CLASS_EDGES) + 1)))
    return CropPlan(crop, stride, (ny, nx), out)


def _augment(batch: dict[str, np.ndarray], layout: ChannelLayout, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each window turned by one of the 8 rotations/flips (all its frames alike, vectors turned with the grid)."""
    from def_ray.data.advection import dihedral

    cond, target = batch["cond"].copy(), batch["target"].copy()
    for i in range(cond.shape[0]):
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        cond[i] = dihedral(cond[i], k, flip, layout.vector_channels)
        target[i] = dihedral(target[i], k, flip, layout.target_vector_channels)
    return {**batch, "cond": cond, "target": target}


def _read_task_fn(spec: WindowSpec, starts: np.ndarray, crop: int | None, region_edge: int | None,
                  shuffle: bool, seed: tuple[int, ...], plan: CropPlan | None = None, augment: bool = False):
    def read() -> list:
        reader = WindowReader(spec)
        rng = np.random.default_rng(seed)
        if plan is not None:  # each window its own rain-classed crop, with context for the first guess's motion
            reader.hold(starts)
            crops = [plan.draw(st, rng) for st in starts]
            batch = reader.read(starts, crops, plan.crop, context=plan.crop // 2 if spec.first_guess else 0)
        else:
            region, crops = None, None
            if crop is not None:
                ny, nx = spec.shape
                rh, rw = min(region_edge, ny), min(region_edge, nx)
                region = (int(rng.integers(0, ny - rh + 1)), int(rng.integers(0, nx - rw + 1)), rh, rw)
                crops = reader.random_crops(rng, len(starts), crop, (rh, rw))
            batch = reader.read_block(starts, region, crop, crops)
        if augment:
            batch = _augment(batch, spec.layout, rng)
        if shuffle:
            perm = rng.permutation(len(starts))
            batch = {k: v[perm] for k, v in batch.items()}
        return [BlockAccessor.batch_to_block(batch)]

    return read


class WindowDatasource(Datasource):
    """Read tasks over runs of consecutive windows: each task reads its time range once per variable.

    Full frames: the task reads the whole grid.  Crops: the task reads one random region of edge
    `region_factor * crop` (at most the grid) and cuts every window's crop at its own random place inside it, so
    reads stay few and large while crops still vary.  Shuffling permutes the tasks and the rows of each block;
    the trainer's local shuffle buffer mixes blocks further.
    """

    MIN_WINDOWS_PER_TASK = 16  # distinct windows (repeats of one are not counted)
    MAX_WINDOWS_PER_TASK = 64

    def __init__(self, spec: WindowSpec, starts: np.ndarray, *, crop: int | None, shuffle: bool, seed: int,
                 block_bytes: int = 64 * 2**20, region_factor: int = 2, plan: CropPlan | None = None,
                 augment: bool = False, same_every_pass: bool = False, repeats: int = 1):
        super().__init__()
        self.repeats = max(1, repeats)
        self.spec, self.crop, self.shuffle, self.seed = spec, crop, shuffle, seed
        self.starts = np.sort(np.repeat(starts, self.repeats))
        self.plan, self.augment, self.same_every_pass = plan, augment, same_every_pass
        self.region_edge = region_factor * crop if crop is not None else None
        ny, nx = spec.shape
        area = ny * nx if crop is None else min(self.region_edge, ny) * min(self.region_edge, nx)
        frame_bytes = 4 * area * len(spec.variables)
        span = spec.n_past * spec.dt_steps + 1
        self.per_task = int(np.clip(block_bytes // frame_bytes - (span - 1), 1, self.MAX_WINDOWS_PER_TASK))
        self._passes = 0

    def estimate_inmemory_data_size(self) -> int:
        return len(self.starts) * self.spec.bytes_per_window(self.crop)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        p = 0 if self.same_every_pass else self._passes
        self._passes += 1
        n = len(self.starts)
        # enough tasks to read in parallel, but not so many that per-task overhead dominates; repeats of a window
        # (crops_per_window) cost almost nothing to read, so the minimum counts distinct windows (measured in
        # benchmarks/bench_trainer.py: 80 tasks an epoch instead of 20 slowed the demo's training by ~5%)
        want = min(max(parallelism, 1), max(1, n // (self.MIN_WINDOWS_PER_TASK * self.repeats)))
        per_task = max(1, min(self.per_task, -(-n // want)))
        runs = _runs(self.starts, self.spec.n_past * self.spec.dt_steps + 1, per_task)
        order = np.random.default_rng((self.seed, p)).permutation(len(runs)) if self.shuffle else range(len(runs))
        tasks = []
        for i in order:
            group = runs[i]
            meta = BlockMetadata(num_rows=int(group.size),
                                 size_bytes=int(group.size) * self.spec.bytes_per_window(self.crop),
                                 exec_stats=None, input_files=None)
            fn = _read_task_fn(self.spec, group, self.crop, self.region_edge, self.shuffle, (self.seed, p, int(i)),
                               self.plan, self.augment)
            tasks.append(ReadTask(fn, meta, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "ZarrWindows"


@dataclass
class WindowData:
    """The splits of one store and the normalisation learned from its train split (`spec.normaliser`)."""

    spec: WindowSpec
    splits: Splits
    static_scaling: dict[str, dict[str, float]] = field(default_factory=dict)  # of the static fields on this grid

    def n_windows(self, split: str) -> int:
        return int(self.splits[split].size)

    def windows(self, split: str, n: int, *, crop: int | None = None, sampling: str = "uniform",
                seed: int = 0) -> dict[str, np.ndarray]:
        """`n` windows of `split` read in this process (the split's windows in turn; crops cut as the datasets cut
        them, reproducibly from `seed`)."""
        starts = self.splits[split]
        if starts.size == 0:
            raise WindowError(f"split {split!r} has no windows")
        starts = np.resize(starts, n)
        reader = WindowReader(self.spec)
        if crop is None:
            return reader.read(starts)
        rng = np.random.default_rng(seed)
        if sampling == "rain":
            plan = plan_rain_crops(self.spec, starts, crop)
            crops = [plan.draw(int(st), rng) for st in starts]
        else:
            crops = reader.random_crops(rng, len(starts), crop)
        return reader.read(starts, crops, crop, context=crop // 2 if self.spec.first_guess else 0)

    def dataset(self, split: str, *, crop: int | None = None, shuffle: bool = False, seed: int = 0,
                limit: int | None = None, block_bytes: int = 64 * 2**20, sampling: str = "uniform",
                augment: bool = False, repeats: int = 1, same_every_pass: bool = False) -> ray.data.Dataset:
        """Lazy dataset of the windows of `split` (optionally only the first `limit` of them, in time order).

        `repeats` crops of each window per pass; `sampling` "rain" classes each window's candidate crops by rain
        (CropPlan); `augment` turns each window by a random rotation/flip; `same_every_pass` gives the same crops
        every epoch (validation).
        """
        starts = self.splits[split]
        if limit is not None:
            starts = starts[:limit]
        if starts.size == 0:
            raise WindowError(f"split {split!r} has no windows")
        ny, nx = self.spec.shape
        if crop is not None and crop > min(ny, nx):
            raise WindowError(f"data.crop={crop} is larger than the store's grid {ny} x {nx}")
        if (augment or sampling == "rain") and crop is None:
            raise WindowError("data.augment and data.crop_sampling 'rain' need square crops (data.crop)")
        plan = plan_rain_crops(self.spec, starts, crop) if sampling == "rain" else None
        ds = WindowDatasource(self.spec, starts, repeats=repeats, crop=crop, shuffle=shuffle, seed=seed,
                              block_bytes=block_bytes, plan=plan, augment=augment, same_every_pass=same_every_pass)
        return ray.data.read_datasource(ds)


def training_normaliser(store: ZarrStore, variables: Sequence[str], time_indices: Sequence[int],
                        transforms: Mapping[str, str]) -> Normaliser:
    """Mean and std of each variable over the given (training) steps, of its transformed values where it has a
    transform (read frame by frame; untransformed variables use the store's per-step sums)."""
    stats = store.stats(list(time_indices))
    mean = {v: stats[v].mean for v in variables}
    std = {v: stats[v].std for v in variables}
    committed = store.committed_mask()
    for v in variables:
        name = transforms.get(v, "none")
        if name == "none":
            continue
        s = ss = n = 0.0
        for i in (int(i) for i in time_indices if committed[int(i)]):
            t = transform(store.read(v, i), name).astype(np.float64)
            t = t[np.isfinite(t)]
            s, ss, n = s + t.sum(), ss + (t * t).sum(), n + t.size
        if n == 0:
            raise WindowError(f"data.transforms: {v} has no finite values in the training steps")
        mean[v] = s / n
        std[v] = float(np.sqrt(max(ss / n - mean[v] ** 2, 0.0))) or 1.0
    transforms = {v: t for v, t in transforms.items() if t != "none" and v in variables}
    return Normaliser(mean, std, f"training split of {store.url}", transforms)


def resolve_storage_options(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """fsspec options for `url`: the given ones for remote URLs, none for local paths.

    Credentials never travel in options (they would sit in Ray task specs and logs): Ray processes take them from
    their own environment or instance role, so start Ray after setting AWS_* (the test fixtures do).
    """
    return dict(options) if "://" in url and not url.startswith("file://") else {}


def prepare_windows(data_cfg: DataConfig, storage_options: Mapping[str, Any] | None = None,
                    first_guess: bool = False) -> WindowData:
    """Open the store of `data_cfg`, split its windows and learn the normalisation (train split only).

    Errors name the config key at fault (data.store, data.variables, data.crop, data.val_fraction ...).
    """
    opts = resolve_storage_options(
        data_cfg.store, storage_options if storage_options is not None else data_cfg.storage.to_fsspec())
    store = ZarrStore(data_cfg.store, opts)
    try:
        have = store.variables
    except StoreError as err:
        raise WindowError(f"data.store: {err}") from None
    missing = [v for v in data_cfg.variables if v not in have]
    if missing:
        raise WindowError(f"data.variables: {missing} not in the store {data_cfg.store} (it has {have})")
    ny, nx = store.shape[1:]
    if data_cfg.crop is not None and data_cfg.crop > min(ny, nx):
        raise WindowError(f"data.crop={data_cfg.crop} is larger than the store's grid {ny} x {nx}")
    try:
        splits = split_windows(store.committed_mask(), data_cfg.n_past, data_cfg.dt_steps, data_cfg.val_fraction,
                               data_cfg.test_fraction, data_cfg.gap)
    except WindowError as err:
        raise WindowError(f"data (store {data_cfg.store}): {err}") from None
    train_times = window_times(splits.train, data_cfg.n_past, data_cfg.dt_steps)
    normaliser = training_normaliser(store, data_cfg.variables, train_times, dict(data_cfg.transforms))
    names = tuple(data_cfg.static_fields)
    lat, lon = store.latlon() if names else (None, None)
    scaling = static_scaling(lat, lon, names) if names else {}
    spec = WindowSpec(
        url=store.url, storage_options=opts, variables=tuple(data_cfg.variables),
        target_variables=tuple(data_cfg.target_variables), n_past=data_cfg.n_past, dt_steps=data_cfg.dt_steps,
        normaliser=normaliser, times=store.group["time"][:].astype(np.int64), shape=(ny, nx), static_names=names,
        static=static_fields(lat, lon, names, scaling) if names else None, first_guess=first_guess)
    return WindowData(spec=spec, splits=splits, static_scaling=scaling)
