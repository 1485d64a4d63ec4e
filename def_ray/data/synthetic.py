"""Seeded synthetic HRRR-like scenes whose convective probabilities are known exactly.

The process (time step dt = 1 h; positions in grid points of the crop, row 0 = south):

Environment (deterministic given the seed): every field is a diurnal term plus smooth random fields S_i, each a
sum of K plane waves with random wavelengths (80-300 points), directions and phases whose phases drift with
periods of 1-4 days.  The waves are functions of the full-HRRR-grid index, so crops of one seed agree.
    d       = cos(2 pi (local solar hour - 16) / 24)                     (afternoon maximum)
    t2m     = 293 + 6 d + 3 S1  [K]          d2m = t2m - (3 + 8 sigmoid(S2 - 0.5 d))  [K]
    u10     = 4 + 2.5 S3,  v10 = 1.5 + 2.5 S4  [m/s, grid-relative]
    cape    = 3000 sigmoid(1.5 S5 + d - 0.3)  [J/kg]    cin = -(5 + 195 sigmoid(1.5 S6 - 1.2 d))  [J/kg]
    background refc = -10 + 15 sigmoid(1.2 S7)  [dBZ]  (no convection: -10..5 dBZ)

Cells: a cell has a position, a peak amplitude A ~ U(35, 55) dBZ, a width sigma (equally likely one of SIGMAS),
a lifetime L (equally likely one of LIFETIMES, hours) and an age a = 0..L-1.  Its reflectivity is
    A * life(a, L) * exp(-r^2 / (2 sigma^2)),   life(a, L) = sin(pi (a + 1) / (L + 1))   (grow, then decay)
and refc = max(background, all cells).  prate follows from refc by Marshall-Palmer (Z = 200 R^1.6), zero below
15 dBZ.

Hour t -> t+1:
  1. every existing cell moves by (u10, v10) at its position at hour t times dt / grid spacing, ages by one hour
     and disappears once its age reaches its lifetime (or it leaves the simulated area);
  2. independently at every grid point q of the crop widened by MARGIN points on each side, a new cell is born
     with probability  p_init(q) = init_rate * sigmoid((CAPE_t(q) - 1500) / 300) * sigmoid((CIN_t(q) + 75) / 20),
     centred on q at hour t+1 with age 0 and attributes drawn as above.
Step 1 is deterministic; step 2 holds all the randomness.  Hence, given the state at hour t, the probability that
refc >= thr at point p at hour t+1 is exact and closed-form:
    P = 1                                               if background_{t+1}(p) >= thr or an old cell reaches thr,
    P = 1 - prod_q (1 - p_init(q) g(|p - q|))           otherwise, where
    g(r) = mean over (sigma, L) of P_A(A life(0, L) exp(-r^2 / (2 sigma^2)) >= thr)   (uniform A: a clip).
That is `true_exceedance_probability`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from def_ray.config import SynthConfig
from def_ray.data.grib_writer import write_grib2
from def_ray.data.grid import HRRR_GRID, LambertGrid
from def_ray.data.lexicon import LEXICON

__all__ = ["CHANNELS", "SIGMAS", "LIFETIMES", "AMP_RANGE", "MARGIN", "Cells", "SceneState", "Environment",
           "initiation_probability", "life_factor", "initial_state", "step", "render", "simulate",
           "true_exceedance_probability", "true_probabilities", "generate_scenes", "write_synthetic_grib",
           "grib_path"]

CHANNELS: tuple[str, ...] = ("refc", "t2m", "d2m", "u10", "v10", "cape", "cin", "prate")
SIGMAS: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)  # cell widths, grid points
LIFETIMES: tuple[int, ...] = (3, 4, 5, 6)  # hours a cell is visible
AMP_RANGE: tuple[float, float] = (35.0, 55.0)  # peak dBZ at maturity, uniform
MARGIN = 24  # cells are born up to this many points outside the crop (4 x the widest sigma), so none pop in
SPINUP_HOURS = 8  # the process starts empty this many hours before cfg.start (longer than any lifetime)
DT_S = 3600.0
RAIN_DBZ = 15.0
_N_WAVES = 6
_N_SMOOTH = 7
_ENV_STREAM, _CELL_STREAM = 0, 1
_CACHED_GRIDS = 4


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def _grid(cfg: SynthConfig) -> LambertGrid:
    return HRRR_GRID.crop(cfg.y0, cfg.x0, cfg.ny, cfg.nx)


def life_factor(age: np.ndarray | int, lifetime: np.ndarray | int) -> np.ndarray:
    """Fraction of its peak amplitude a cell shows at `age` (0-based hours) in a life of `lifetime` hours."""
    return np.sin(np.pi * (np.asarray(age) + 1.0) / (np.asarray(lifetime) + 1.0))


def initiation_probability(cape: np.ndarray, cin: np.ndarray, init_rate: float) -> np.ndarray:
    """Probability that a cell is born at a grid point within the next hour (logistic in CAPE and CIN)."""
    return init_rate * _sigmoid((np.asarray(cape) - 1500.0) / 300.0) * _sigmoid((np.asarray(cin) + 75.0) / 20.0)


@dataclass(frozen=True)
class Cells:
    """Convective cells, one entry per cell; y, x in grid points of the crop (may lie in the margin)."""

    y: np.ndarray
    x: np.ndarray
    amp: np.ndarray
    sigma: np.ndarray
    lifetime: np.ndarray
    age: np.ndarray

    @classmethod
    def empty(cls) -> Cells:
        f, i = np.zeros(0), np.zeros(0, dtype=np.int64)
        return cls(f, f, f, f, i, i)

    @classmethod
    def of(cls, y: Sequence[float], x: Sequence[float], amp: Sequence[float], sigma: Sequence[float],
           lifetime: Sequence[int], age: Sequence[int]) -> Cells:
        arrs = [np.asarray(v, dtype=np.float64) for v in (y, x, amp, sigma)]
        ints = [np.asarray(v, dtype=np.int64) for v in (lifetime, age)]
        if len({a.shape for a in arrs + ints}) != 1 or arrs[0].ndim != 1:
            raise ValueError("cell attributes must be 1-D arrays of one length")
        return cls(*arrs, *ints)

    def __len__(self) -> int:
        return int(self.y.size)

    def select(self, keep: np.ndarray) -> Cells:
        return Cells(self.y[keep], self.x[keep], self.amp[keep], self.sigma[keep], self.lifetime[keep],
                     self.age[keep])

    def concat(self, other: Cells) -> Cells:
        return Cells(*(np.concatenate([a, b]) for a, b in zip(self._arrays(), other._arrays())))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.y, self.x, self.amp, self.sigma, self.lifetime, self.age)

    def peak(self) -> np.ndarray:
        return self.amp * life_factor(self.age, self.lifetime)


@dataclass(frozen=True)
class SceneState:
    """Everything that determines the future: the config (seed, crop), the hour index since cfg.start, the cells."""

    cfg: SynthConfig
    hour: int
    cells: Cells

    @property
    def valid_time(self) -> datetime:
        return self.cfg.start + timedelta(hours=self.hour)


class Environment:
    """The deterministic environmental fields of one seed, evaluated anywhere on the HRRR grid at any hour."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, _ENV_STREAM])
        shape = (_N_SMOOTH, _N_WAVES)
        wavelength = rng.uniform(80.0, 300.0, shape)
        direction = rng.uniform(0.0, 2 * np.pi, shape)
        self._ky = 2 * np.pi / wavelength * np.sin(direction)
        self._kx = 2 * np.pi / wavelength * np.cos(direction)
        self._phase = rng.uniform(0.0, 2 * np.pi, shape)
        self._omega = 2 * np.pi / rng.uniform(24.0, 96.0, shape) * rng.choice([-1.0, 1.0], shape)
        _, lon = _grid(cfg).latlon()
        self._lon_centre = float(lon[cfg.ny // 2, cfg.nx // 2])
        self._cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def _smooth(self, i: int, gy: np.ndarray, gx: np.ndarray, hour: float) -> np.ndarray:
        """Smooth field S_i (mean 0, std 1) at full-grid indices (gy, gx)."""
        arg = (self._ky[i][:, None] * gy.ravel()[None] + self._kx[i][:, None] * gx.ravel()[None]
               + (self._phase[i] + self._omega[i] * hour)[:, None])
        return (np.sqrt(2.0 / _N_WAVES) * np.cos(arg).sum(axis=0)).reshape(gy.shape)

    def diurnal(self, hour: int) -> float:
        t = self.cfg.start + timedelta(hours=hour)
        local = (t.hour + t.minute / 60 + self._lon_centre / 15.0) % 24
        return float(np.cos(2 * np.pi * (local - 16.0) / 24.0))

    def fields_at(self, hour: int, y: np.ndarray, x: np.ndarray,
                  names: Sequence[str] = ("t2m", "d2m", "u10", "v10", "cape", "cin", "background")
                  ) -> dict[str, np.ndarray]:
        """Environmental fields at crop coordinates (y, x) (any shape, fractional allowed) and hour index."""
        gy, gx = np.asarray(y, dtype=np.float64) + self.cfg.y0, np.asarray(x, dtype=np.float64) + self.cfg.x0
        d = self.diurnal(hour)
        s = {}

        def S(i: int) -> np.ndarray:
            if i not in s:
                s[i] = self._smooth(i, gy, gx, hour)
            return s[i]

        out: dict[str, np.ndarray] = {}
        for name in names:
            if name in ("t2m", "d2m"):
                t2m = 293.0 + 6.0 * d + 3.0 * S(0)
                out[name] = t2m if name == "t2m" else t2m - (3.0 + 8.0 * _sigmoid(S(1) - 0.5 * d))
            elif name == "u10":
                out[name] = 4.0 + 2.5 * S(2)
            elif name == "v10":
                out[name] = 1.5 + 2.5 * S(3)
            elif name == "cape":
                out[name] = 3000.0 * _sigmoid(1.5 * S(4) + d - 0.3)
            elif name == "cin":
                out[name] = -(5.0 + 195.0 * _sigmoid(1.5 * S(5) - 1.2 * d))
            elif name == "background":
                out[name] = -10.0 + 15.0 * _sigmoid(1.2 * S(6))
            else:
                raise KeyError(f"no environmental field {name!r}")
        return out

    def grid_fields(self, hour: int, margin: int = 0, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Fields on the crop widened by `margin` points on each side, shape (ny + 2 m, nx + 2 m); read-only arrays,
        the last few hours cached (a Monte Carlo over one hour's futures asks for the same fields many times)."""
        key = (hour, margin)
        if key not in self._cache:
            yy, xx = np.meshgrid(np.arange(-margin, self.cfg.ny + margin, dtype=np.float64),
                                 np.arange(-margin, self.cfg.nx + margin, dtype=np.float64), indexing="ij")
            fields = self.fields_at(hour, yy, xx)
            for a in fields.values():
                a.flags.writeable = False
            self._cache[key] = fields
            while len(self._cache) > _CACHED_GRIDS:
                self._cache.pop(next(iter(self._cache)))
        fields = self._cache[key]
        return {n: fields[n] for n in (names or fields)}


def initial_state(cfg: SynthConfig) -> SceneState:
    """The empty state SPINUP_HOURS before cfg.start; `simulate` runs it forward."""
    return SceneState(cfg, -SPINUP_HOURS, Cells.empty())


def _advance(state: SceneState, env: Environment) -> Cells:
    """Step 1 of the process (deterministic): move old cells with the wind at hour t, age them, drop the dead."""
    c = state.cells
    if not len(c):
        return c
    w = env.fields_at(state.hour, c.y, c.x, names=("u10", "v10"))
    y = c.y + w["v10"] * DT_S / HRRR_GRID.dy_m
    x = c.x + w["u10"] * DT_S / HRRR_GRID.dx_m
    moved = Cells(y, x, c.amp, c.sigma, c.lifetime, c.age + 1)
    cfg = state.cfg
    inside = ((y >= -MARGIN) & (y <= cfg.ny - 1 + MARGIN) & (x >= -MARGIN) & (x <= cfg.nx - 1 + MARGIN))
    return moved.select((moved.age < moved.lifetime) & inside)


def _birth_probability(state: SceneState, env: Environment) -> np.ndarray:
    f = env.grid_fields(state.hour, MARGIN, names=("cape", "cin"))
    return initiation_probability(f["cape"], f["cin"], state.cfg.init_rate)


def step(state: SceneState, rng: np.random.Generator, env: Environment | None = None) -> SceneState:
    """One hour of the process: deterministic advance of the old cells, then random births (all randomness)."""
    env = env or Environment(state.cfg)
    old = _advance(state, env)
    p = _birth_probability(state, env)
    iy, ix = np.nonzero(rng.random(p.shape) < p)
    n = iy.size
    new = Cells.of(y=iy - MARGIN, x=ix - MARGIN, amp=rng.uniform(*AMP_RANGE, n),
                   sigma=np.asarray(SIGMAS)[rng.integers(0, len(SIGMAS), n)],
                   lifetime=np.asarray(LIFETIMES)[rng.integers(0, len(LIFETIMES), n)], age=np.zeros(n, np.int64))
    return SceneState(state.cfg, state.hour + 1, old.concat(new))


def _cells_max(cells: Cells, ny: int, nx: int) -> np.ndarray:
    """max over cells of their reflectivity on the crop (float64); -inf where there is none."""
    if not len(cells):
        return np.full((ny, nx), -np.inf)
    gy = np.exp(-((np.arange(ny)[None, :] - cells.y[:, None]) ** 2) / (2 * cells.sigma[:, None] ** 2))
    gx = np.exp(-((np.arange(nx)[None, :] - cells.x[:, None]) ** 2) / (2 * cells.sigma[:, None] ** 2))
    return np.einsum("c,cy,cx->cyx", cells.peak(), gy, gx).max(axis=0)


def _prate(refc: np.ndarray) -> np.ndarray:
    """Marshall-Palmer rain rate (kg m-2 s-1) from reflectivity; zero below RAIN_DBZ."""
    rate_mm_h = (10.0 ** (refc / 10.0) / 200.0) ** (1 / 1.6)
    return np.where(refc >= RAIN_DBZ, rate_mm_h / 3600.0, 0.0)


def render(state: SceneState, env: Environment | None = None) -> dict[str, np.ndarray]:
    """All CHANNELS of the scene at the state's hour on the crop, float32 (ny, nx)."""
    env = env or Environment(state.cfg)
    cfg = state.cfg
    f = env.grid_fields(state.hour)
    refc = np.maximum(f.pop("background"), _cells_max(state.cells, cfg.ny, cfg.nx))
    f["refc"] = refc
    f["prate"] = _prate(refc)
    return {name: f[name].astype(np.float32) for name in CHANNELS}


def _chain(cfg: SynthConfig, env: Environment, last_hour: int) -> Iterator[SceneState]:
    """Every state from the empty start of the spin-up to `last_hour`; hour t -> t+1 has its own seeded stream."""
    state = initial_state(cfg)
    yield state
    while state.hour < last_hour:
        rng = np.random.default_rng([cfg.seed, _CELL_STREAM, state.hour + SPINUP_HOURS])
        state = step(state, rng, env)
        yield state


def simulate(cfg: SynthConfig, env: Environment | None = None) -> Iterator[SceneState]:
    """The states at hours 0 .. cfg.hours - 1 (the hours of `generate_scenes`)."""
    for state in _chain(cfg, env or Environment(cfg), cfg.hours - 1):
        if state.hour >= 0:
            yield state


def _newborn_exceedance(r2: np.ndarray, threshold: float) -> np.ndarray:
    """g: probability that a cell born at squared distance r2 reaches `threshold` there in its first hour."""
    lo, hi = AMP_RANGE
    g = np.zeros_like(r2, dtype=np.float64)
    for sigma in SIGMAS:
        for lifetime in LIFETIMES:
            need = threshold * np.exp(r2 / (2 * sigma**2)) / life_factor(0, lifetime)
            g += np.clip((hi - need) / (hi - lo), 0.0, 1.0)
    return g / (len(SIGMAS) * len(LIFETIMES))


def true_exceedance_probability(state: SceneState, threshold_dbz: float,
                                env: Environment | None = None) -> np.ndarray:
    """Exact P(refc >= threshold_dbz) at every crop point one hour after `state`, given `state`; (ny, nx) float64."""
    threshold = float(threshold_dbz)
    if not threshold > 0:
        # cells are positive everywhere, so a threshold <= 0 would need an unbounded kernel
        raise ValueError(f"threshold_dbz must be > 0 dBZ, got {threshold_dbz}")
    env = env or Environment(state.cfg)
    cfg = state.cfg
    old = _advance(state, env)
    background = env.grid_fields(state.hour + 1, names=("background",))["background"]
    certain = (background >= threshold) | (_cells_max(old, cfg.ny, cfg.nx) >= threshold)

    p_birth = _birth_probability(state, env)
    # g vanishes beyond the radius where even the strongest, widest newborn falls below the threshold
    peak_max = AMP_RANGE[1] * float(np.max(life_factor(0, np.asarray(LIFETIMES))))
    radius = max(SIGMAS) * np.sqrt(2 * np.log(peak_max / threshold)) if threshold < peak_max else -1.0
    reach = int(min(np.floor(radius), MARGIN)) if radius >= 0 else -1
    offsets = np.arange(-reach, reach + 1)
    kernel = _newborn_exceedance((offsets[:, None] ** 2 + offsets[None, :] ** 2).astype(np.float64), threshold)
    log_none = np.zeros((cfg.ny, cfg.nx))
    for (i, j), g in np.ndenumerate(kernel):
        if g > 0:
            dy, dx = offsets[i], offsets[j]
            pq = p_birth[MARGIN + dy:MARGIN + dy + cfg.ny, MARGIN + dx:MARGIN + dx + cfg.nx]
            log_none += np.log1p(-pq * g)
    return np.where(certain, 1.0, 0.0 - np.expm1(log_none))  # 0.0 - : no negative zeros


def generate_scenes(cfg: SynthConfig) -> xr.Dataset:
    """cfg.hours hourly scenes as a Dataset (time, y, x) of float32 CHANNELS with 2-D latitude/longitude."""
    env = Environment(cfg)
    frames = [render(s, env) for s in simulate(cfg, env)]
    grid = _grid(cfg)
    lat, lon = grid.latlon()
    times = [cfg.start + timedelta(hours=h) for h in range(cfg.hours)]
    data_vars = {}
    for name in CHANNELS:
        var = LEXICON[name]
        data_vars[name] = (("time", "y", "x"), np.stack([f[name] for f in frames]),
                           {"units": var.units, "long_name": var.long_name})
    ds = xr.Dataset(data_vars, coords={"time": np.array(times, dtype="datetime64[ns]"),
                                       "latitude": (("y", "x"), lat, {"units": "degrees_north"}),
                                       "longitude": (("y", "x"), lon, {"units": "degrees_east"})})
    ds.attrs.update(grid.attrs())
    ds.attrs.update(title="def_ray synthetic HRRR-like scenes", source="def_ray.data.synthetic",
                    synth_config=json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
                    crop_y0=cfg.y0, crop_x0=cfg.x0)
    return ds


def true_probabilities(cfg: SynthConfig, thresholds: Sequence[float]) -> xr.DataArray:
    """Exact P(refc >= threshold) at each hour of `generate_scenes(cfg)` given the state one hour earlier;
    DataArray (time, threshold, y, x)."""
    env = Environment(cfg)
    out = [[true_exceedance_probability(s, thr, env) for thr in thresholds]
           for s in _chain(cfg, env, cfg.hours - 2) if s.hour >= -1]
    times = [cfg.start + timedelta(hours=h) for h in range(cfg.hours)]
    return xr.DataArray(np.asarray(out, dtype=np.float32), dims=("time", "threshold", "y", "x"),
                        coords={"time": np.array(times, dtype="datetime64[ns]"),
                                "threshold": np.asarray(thresholds, dtype=np.float64)},
                        name="true_exceedance_probability", attrs={"units": "1"})


def grib_path(out_dir: str | Path, valid_time: datetime) -> Path:
    """Where an HRRR analysis for `valid_time` lives: <out_dir>/hrrr.YYYYMMDD/conus/hrrr.tHHz.wrfsfcf00.grib2."""
    return Path(out_dir) / f"hrrr.{valid_time:%Y%m%d}" / "conus" / f"hrrr.t{valid_time:%H}z.wrfsfcf00.grib2"


def write_synthetic_grib(cfg: SynthConfig) -> list[Path]:
    """Write one GRIB2 analysis file per hour of `generate_scenes(cfg)` under cfg.out_dir; returns the paths."""
    env = Environment(cfg)
    grid = _grid(cfg)
    paths = []
    for s in simulate(cfg, env):
        paths.append(write_grib2(grib_path(cfg.out_dir, s.valid_time), render(s, env), s.valid_time, grid))
    return paths
