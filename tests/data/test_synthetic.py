"""Synthetic scenes: reproducible, decodable GRIB2 on the HRRR grid, and probabilities that are what they claim."""

from __future__ import annotations

from datetime import datetime

# pyproj before eccodes/cfgrib (eccodeslib bundles its own libproj; the other order crashes the interpreter)
import pyproj  # noqa: F401  isort: skip
import eccodes
import numpy as np
import pytest
import xarray as xr

from def_ray.config import ConfigError, SynthConfig, config_from_dict
from def_ray.data import synthetic as syn
from def_ray.data.grib_writer import GribWriteError, write_grib2
from def_ray.data.grid import HRRR_GRID
from def_ray.data.lexicon import find_by_identity

SMALL = dict(seed=3, hours=3, ny=16, nx=24, y0=500, x0=850, start=datetime(2024, 6, 1, 20))


def _messages(path) -> list[dict]:
    """Every message of a GRIB2 file: identity, grid keys, values and coordinates, through eccodes directly."""
    out = []
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                m = {k: eccodes.codes_get(h, k) for k in (
                    "centre", "shortName", "discipline", "parameterCategory", "parameterNumber", "typeOfLevel",
                    "level", "gridType", "Nx", "Ny", "shapeOfTheEarth", "LaDInDegrees", "LoVInDegrees",
                    "Latin1InDegrees", "Latin2InDegrees", "DxInMetres", "DyInMetres", "jScansPositively",
                    "iScansNegatively", "dataDate", "dataTime", "validityDate", "validityTime", "stepRange",
                    "packingType")}
                ny, nx = m["Ny"], m["Nx"]
                m["values"] = eccodes.codes_get_values(h).reshape(ny, nx)
                m["lat"] = eccodes.codes_get_array(h, "latitudes").reshape(ny, nx)
                m["lon"] = eccodes.codes_get_array(h, "longitudes").reshape(ny, nx)
            finally:
                eccodes.codes_release(h)
            out.append(m)
    return out


# --- reproducibility --------------------------------------------------------------------------------------------

def test_same_seed_same_scenes_other_seed_differs():
    busy = {**SMALL, "ny": 32, "nx": 32, "hours": 4, "init_rate": 0.02}
    a = syn.generate_scenes(SynthConfig(**busy))
    b = syn.generate_scenes(SynthConfig(**busy))
    c = syn.generate_scenes(SynthConfig(**{**busy, "seed": 4}))
    assert set(a.data_vars) == set(syn.CHANNELS)
    assert (a.prate > 0).any() and (c.prate > 0).any()  # cells in both, so every channel can differ
    for name in syn.CHANNELS:
        assert a[name].dtype == np.float32 and a[name].dims == ("time", "y", "x")
        np.testing.assert_array_equal(a[name].values, b[name].values)
        assert not np.array_equal(a[name].values, c[name].values), name


def test_same_seed_same_grib_bytes(tmp_path):
    pa = syn.write_synthetic_grib(SynthConfig(**SMALL, out_dir=str(tmp_path / "a")))
    pb = syn.write_synthetic_grib(SynthConfig(**SMALL, out_dir=str(tmp_path / "b")))
    assert [p.relative_to(tmp_path / "a") for p in pa] == [p.relative_to(tmp_path / "b") for p in pb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(pa, pb))


def test_grib_files_named_like_hrrr_analyses(tmp_path):
    cfg = SynthConfig(**{**SMALL, "start": datetime(2024, 6, 1, 22)}, out_dir=str(tmp_path))
    paths = syn.write_synthetic_grib(cfg)
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert rel == ["hrrr.20240601/conus/hrrr.t22z.wrfsfcf00.grib2", "hrrr.20240601/conus/hrrr.t23z.wrfsfcf00.grib2",
                   "hrrr.20240602/conus/hrrr.t00z.wrfsfcf00.grib2"]
    assert not list(tmp_path.rglob("*.part"))  # no temporary files left behind


# --- GRIB2 round trip ---------------------------------------------------------------------------------------------

def test_grib_decodes_to_the_hrrr_crop_and_the_same_values(tmp_path):
    cfg = SynthConfig(**SMALL, out_dir=str(tmp_path))
    ds = syn.generate_scenes(cfg)
    paths = syn.write_synthetic_grib(cfg)
    grid = HRRR_GRID.crop(cfg.y0, cfg.x0, cfg.ny, cfg.nx)
    lat, lon = grid.latlon()
    for i, path in enumerate(paths):
        msgs = _messages(path)
        assert sorted(m["shortName"] for m in msgs) == sorted(["refc", "2t", "2d", "10u", "10v", "cape", "cin",
                                                               "prate"])
        valid = ds.time.values[i].astype("datetime64[s]").item()
        for m in msgs:
            var = find_by_identity(m["discipline"], m["parameterCategory"], m["parameterNumber"], m["typeOfLevel"],
                                   m["level"])
            assert var is not None, m["shortName"]
            assert (m["gridType"], m["Ny"], m["Nx"], m["shapeOfTheEarth"]) == ("lambert", cfg.ny, cfg.nx, 6)
            assert (m["LaDInDegrees"], m["Latin1InDegrees"], m["Latin2InDegrees"], m["LoVInDegrees"]) == (
                38.5, 38.5, 38.5, 262.5)
            assert (m["DxInMetres"], m["DyInMetres"], m["jScansPositively"], m["iScansNegatively"]) == (
                3000.0, 3000.0, 1, 0)
            # an analysis: reference time = valid time, step 0
            assert (m["dataDate"], m["dataTime"]) == (int(f"{valid:%Y%m%d}"), int(f"{valid:%H%M}"))
            assert (m["validityDate"], m["validityTime"], m["stepRange"]) == (m["dataDate"], m["dataTime"], "0")
            # GRIB stores the first point in micro-degrees: 1e-5 degrees (about 1 m) covers that rounding
            np.testing.assert_allclose(m["lat"], lat, atol=1e-5)
            np.testing.assert_allclose((m["lon"] + 180) % 360 - 180, lon, atol=1e-5)
            # IEEE 32-bit packing: float32 fields come back bit for bit
            assert m["packingType"] == "grid_ieee"
            np.testing.assert_array_equal(m["values"].astype(np.float32), ds[var.name].values[i])


def test_refc_is_ncep_refc_and_cfgrib_reads_every_channel(tmp_path):
    cfg = SynthConfig(**{**SMALL, "hours": 1}, out_dir=str(tmp_path))
    (path,) = syn.write_synthetic_grib(cfg)
    ds = syn.generate_scenes(cfg)
    refc = [m for m in _messages(path) if m["shortName"] == "refc"]
    assert len(refc) == 1 and refc[0]["centre"] == "kwbc"
    assert (refc[0]["discipline"], refc[0]["parameterCategory"], refc[0]["parameterNumber"]) == (0, 16, 196)
    seen = {}
    for level in ("atmosphere", "heightAboveGround", "surface"):
        for lvl in ([2, 10] if level == "heightAboveGround" else [None]):
            keys = {"typeOfLevel": level, **({"level": lvl} if lvl is not None else {})}
            with xr.open_dataset(path, engine="cfgrib",
                                 backend_kwargs={"indexpath": "", "filter_by_keys": keys}) as g:
                assert g.attrs["GRIB_centre"] == "kwbc"
                assert g.valid_time.values == ds.time.values[0]
                for name in g.data_vars:
                    seen[name] = g[name].values
    assert set(seen) == set(syn.CHANNELS)
    for name in syn.CHANNELS:
        np.testing.assert_array_equal(seen[name], ds[name].values[0])


@pytest.mark.realdata
def test_grid_matches_a_real_hrrr_file(shared_data, tmp_path):
    """Our crop's coordinates, decoded by eccodes, equal the same crop of a real NOAA HRRR file's coordinates."""
    cfg = SynthConfig(**{**SMALL, "hours": 1}, out_dir=str(tmp_path))
    (path,) = syn.write_synthetic_grib(cfg)
    ours = _messages(path)[0]
    with open(shared_data / "hrrr" / "hrrr.t06z.wrfsfcf01-UGRD.grib2", "rb") as f:
        h = eccodes.codes_grib_new_from_file(f)
        try:
            shape = (eccodes.codes_get(h, "Ny"), eccodes.codes_get(h, "Nx"))
            lat = eccodes.codes_get_array(h, "latitudes").reshape(shape)
            lon = eccodes.codes_get_array(h, "longitudes").reshape(shape)
        finally:
            eccodes.codes_release(h)
    window = np.s_[cfg.y0:cfg.y0 + cfg.ny, cfg.x0:cfg.x0 + cfg.nx]
    np.testing.assert_allclose(ours["lat"], lat[window], atol=1e-5)  # micro-degree rounding of the first point
    np.testing.assert_allclose(ours["lon"], lon[window], atol=1e-5)


# --- bad input ------------------------------------------------------------------------------------------------------

def test_write_grib2_rejects_bad_fields_and_keeps_the_old_file(tmp_path):
    grid = HRRR_GRID.crop(500, 850, 8, 10)
    path = tmp_path / "x.grib2"
    good = np.zeros((8, 10), np.float32)
    write_grib2(path, {"t2m": good + 290}, datetime(2024, 6, 1), grid)
    before = path.read_bytes()
    with pytest.raises(GribWriteError, match=r"'cape'.*shape \(10, 8\)"):
        write_grib2(path, {"t2m": good, "cape": good.T}, datetime(2024, 6, 1), grid)
    with pytest.raises(GribWriteError, match=r"'cin'.*1 non-finite"):
        write_grib2(path, {"cin": np.where(np.arange(80).reshape(8, 10) == 5, np.nan, good)}, datetime(2024, 6, 1),
                    grid)
    with pytest.raises(KeyError, match="unknown variable 'rain'"):
        write_grib2(path, {"rain": good}, datetime(2024, 6, 1), grid)
    with pytest.raises(GribWriteError, match="no fields"):
        write_grib2(path, {}, datetime(2024, 6, 1), grid)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.grib2"]


def test_config_rejects_a_crop_outside_hrrr_and_bad_thresholds():
    with pytest.raises(ConfigError, match=r"synth.*outside the 1059 x 1799 HRRR grid"):
        config_from_dict({"synth": {"y0": 1050, "ny": 16}})
    with pytest.raises(ConfigError, match=r"synth.init_rate"):
        config_from_dict({"synth": {"init_rate": 1.5}})
    state = next(syn.simulate(SynthConfig(**SMALL)))
    with pytest.raises(ValueError, match="threshold_dbz must be > 0"):
        syn.true_exceedance_probability(state, 0.0)


# --- the process ----------------------------------------------------------------------------------------------------

def test_scene_ranges_match_the_documented_process():
    cfg = SynthConfig(seed=1, hours=24, ny=64, nx=64, start=datetime(2024, 6, 1, 12))
    ds = syn.generate_scenes(cfg)
    refc = ds.refc.values
    assert -10.0 <= refc.min() and refc.max() <= syn.AMP_RANGE[1]
    # the afternoon (18-06 UTC) grows cells beyond 35 dBZ; where no cell is, refc is the -10..5 background
    assert refc.max() >= 35.0
    assert np.median(refc) <= 5.0
    assert (ds.d2m <= ds.t2m - 3.0 + 1e-3).all() and (ds.cape >= 0).all() and (ds.cin <= 0).all()
    assert ((ds.prate > 0) == (ds.refc >= syn.RAIN_DBZ)).all()
    # a few initiations per hour over a 64 x 64 crop, on average over the day
    births = [int(((s.cells.age == 0) & (s.cells.y >= 0) & (s.cells.y < 64) & (s.cells.x >= 0) & (s.cells.x < 64))
                  .sum()) for s in syn.simulate(cfg)]
    assert 1.0 <= np.mean(births) <= 10.0, births


def test_a_cell_moves_with_the_wind_and_grows_then_decays():
    cfg = SynthConfig(seed=2, hours=1, ny=48, nx=48, init_rate=0.0)
    env = syn.Environment(cfg)
    y, x, amp, lifetime = 18.3, 15.6, 50.0, 5
    state = syn.SceneState(cfg, 0, syn.Cells.of([y], [x], [amp], [4.0], [lifetime], [0]))
    rng = np.random.default_rng(0)
    path, peaks, true = [], [], []
    while len(state.cells):
        true.append((state.cells.y[0], state.cells.x[0]))
        f = syn.render(state, env)
        w = np.clip(f["refc"] - 15.0, 0.0, None)  # the cell alone: the background never reaches 15 dBZ
        yy, xx = np.indices(w.shape)
        path.append((float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum()), f["u10"], f["v10"]))
        peaks.append(float(f["refc"].max()))
        state = syn.step(state, rng, env)
    assert len(path) == lifetime  # the cell lives exactly its lifetime
    # the grid's maximum is the life-cycle peak A life(a, L) seen at the grid point nearest the centre
    yy, xx = np.indices((cfg.ny, cfg.nx))
    expected = [amp * syn.life_factor(a, lifetime)
                * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2)).max() for a, (cy, cx) in enumerate(true)]
    np.testing.assert_allclose(peaks, expected, rtol=1e-6)  # float32 rendering
    assert peaks[0] < peaks[lifetime // 2] > peaks[-1]
    for (y0, x0, u, v), (y1, x1, _, _) in zip(path, path[1:]):
        # wind at the cell's position at the start of the hour, bilinear from the written u10/v10 fields
        iy, ix, fy, fx = int(y0), int(x0), y0 - int(y0), x0 - int(x0)

        def at(a):
            return ((1 - fy) * (1 - fx) * a[iy, ix] + (1 - fy) * fx * a[iy, ix + 1] + fy * (1 - fx) * a[iy + 1, ix]
                    + fy * fx * a[iy + 1, ix + 1])

        px_per_ms = 3600.0 / 3000.0
        # 0.02 px: centroid of a sampled, clipped Gaussian (~1e-3 px) plus bilinear error of a wind field
        # whose shortest wavelength is 80 px (~3e-3 px)
        assert abs((y1 - y0) - at(v) * px_per_ms) < 0.02
        assert abs((x1 - x0) - at(u) * px_per_ms) < 0.02
        assert np.hypot(y1 - y0, x1 - x0) > 1.0  # the test is not vacuous: it did move


@pytest.mark.slow
def test_true_probability_matches_monte_carlo_frequencies():
    # a busy afternoon crop (init_rate 0.02) so that many points have probabilities well inside (0, 1)
    cfg = SynthConfig(seed=5, hours=3, ny=32, nx=32, init_rate=0.02, start=datetime(2024, 6, 1, 19))
    env = syn.Environment(cfg)
    state = list(syn.simulate(cfg, env))[-1]
    thresholds = (20.0, 35.0)
    truth = np.stack([syn.true_exceedance_probability(state, t, env) for t in thresholds])
    uncertain = (truth > 0) & (truth < 1)
    assert ((truth > 0.05) & uncertain).sum() >= 100 and (truth == 1).any()  # a non-trivial scene
    n = 3000
    hits = np.zeros(truth.shape)
    fraction = np.zeros((n, len(thresholds)))  # per draw: share of the uncertain points that exceed
    for i in range(n):
        refc = syn.render(syn.step(state, np.random.default_rng([99, i]), env), env)["refc"]
        hit = np.stack([refc >= t for t in thresholds])
        hits += hit
        fraction[i] = [hit[k][uncertain[k]].mean() for k in range(len(thresholds))]
    freq = hits / n
    # where the answer is certain, the simulation must agree every time
    assert (freq[truth == 1.0] == 1.0).all() and (freq[truth == 0.0] == 0.0).all()
    # each point's count is Binomial(n, p): allow 5 standard deviations plus 5 counts (so that rare p, where the
    # count is nearly Poisson with a mean far below 1, is covered); a correct process fails a point with
    # probability < 1e-5, all ~800 points together < 1%, and the seeds are fixed
    p = truth[uncertain]
    tol = (5 * np.sqrt(n * p * (1 - p)) + 5) / n
    worst = np.max(np.abs(freq[uncertain] - p) / tol)
    assert worst < 1.0, worst
    # no bias on average: the draws are independent, so the mean of the per-draw fractions is normal around the
    # mean probability with the draws' own standard error (4.5 of them: a 1-in-150000 false alarm); this catches
    # errors of a few percent in the probabilities that the per-point test is too coarse to see
    for k in range(len(thresholds)):
        z = (fraction[:, k].mean() - truth[k][uncertain[k]].mean()) / (fraction[:, k].std(ddof=1) / np.sqrt(n))
        assert abs(z) < 4.5, (thresholds[k], z)


def test_true_probabilities_agree_with_the_scenes_where_certain():
    """true_probabilities walks the same seeded chain as generate_scenes: where it says 0 or 1, the scene agrees."""
    cfg = SynthConfig(seed=7, hours=8, ny=32, nx=32, start=datetime(2024, 6, 1, 19))
    ds = syn.generate_scenes(cfg)
    prob = syn.true_probabilities(cfg, [20.0, 35.0])
    assert prob.dims == ("time", "threshold", "y", "x") and (prob.time.values == ds.time.values).all()
    for k, thr in enumerate(prob.threshold.values):
        p, hit = prob.values[:, k], ds.refc.values >= thr
        assert hit[p == 1.0].all() and not hit[p == 0.0].any()
        assert (p == 1.0).sum() > 0 and ((p > 0) & (p < 1)).sum() > 0
    one = syn.true_exceedance_probability(list(syn.simulate(cfg))[3], 35.0)
    np.testing.assert_allclose(prob.sel(threshold=35.0).values[4], one, rtol=1e-6)
