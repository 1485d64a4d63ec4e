"""Forecast maps: real image files; the grid's own projection; borders from installed data with the network and
cartopy's data folder out of reach; NWS palette with no-echo masked; probabilities white at zero in 10 % steps;
valid time in UTC; an observed panel; nothing overlapping."""

import socket
import urllib.request

import matplotlib.colors as mcolors
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import def_ray.viz.maps as maps
from def_ray.data.grid import HRRR_GRID, LambertGrid
from def_ray.forecast.ensemble import build_forecast_dataset
from def_ray.viz.maps import forecast_maps
from def_ray.viz.palettes import palette_for, probability_palette

# 20 x 30 points of 60 km: the central US (Texas to the Great Lakes), in HRRR's Lambert conformal projection
COARSE = LambertGrid(ny=20, nx=30, dx_m=60000, dy_m=60000, first_lat=30.0, first_lon=260.0)


def _dataset(grid=COARSE, members=3, leads=1, thresholds=(20, 35), seed=0, attrs=None, values=None):
    lat, lon = grid.latlon()
    ens = np.random.default_rng(seed).normal(20, 15, (members, leads, 1, grid.ny, grid.nx)).astype(np.float32)
    if values is not None:
        ens[:] = values
    return build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01T18", step_seconds=3600, latitude=lat,
                                  longitude=lon, projection=grid.attrs(), thresholds=list(thresholds),
                                  attrs=attrs)


@pytest.fixture
def figures(monkeypatch):
    """The figures forecast_maps draws, kept (drawn and saved as usual) for inspection."""
    kept = []
    save = maps._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(maps, "_save", keep)
    return kept


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and cartopy's data folders empty: anything cartopy would download or read from there fails."""
    import cartopy

    empty = tmp_path / "cartopy_data"
    empty.mkdir()
    monkeypatch.setitem(cartopy.config, "data_dir", str(empty))
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", str(empty))

    def refuse(*args, **kwargs):
        raise OSError("network access refused in this test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return empty


def _outline_vertices_inside(ax, which):
    x0, x1 = sorted(ax.get_xlim())
    y0, y1 = sorted(ax.get_ylim())
    for c in ax.collections:
        if c.get_label() == f"outline:{which}":
            v = np.concatenate([p.vertices for p in c.get_paths()]) if c.get_paths() else np.zeros((0, 2))
            return int(((v[:, 0] >= x0) & (v[:, 0] <= x1) & (v[:, 1] >= y0) & (v[:, 1] <= y1)).sum())
    return 0


def test_maps_written_for_probability_mean_spread_members(tmp_path):
    grid = HRRR_GRID.crop(400, 900, 12, 16)
    lat, lon = grid.latlon()
    ens = np.random.default_rng(0).normal(30, 12, (6, 2, 1, 12, 16)).astype(np.float32)
    ds = build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01T18", step_seconds=3600, latitude=lat,
                                longitude=lon, projection=grid.attrs(), thresholds=[20, 35, 40, 50], quantiles=[0.5])
    paths = forecast_maps(ds, tmp_path / "maps", "refc", members=3)
    assert [p.name for p in paths] == ["refc_probability_lead2h.png", "refc_mean_lead2h.png",
                                       "refc_spread_lead2h.png", "refc_members_lead2h.png"]
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 5, f"{p.name} looks blank"
    # the probability figure has four panels, so it is wider than the one-panel spread map
    assert Image.open(paths[0]).size[0] > 2 * Image.open(paths[2]).size[0]


def test_lambert_projection_with_borders_offline(tmp_path, figures, offline):
    forecast_maps(_dataset(), tmp_path, "refc", members=1, observed=None)
    assert list(offline.iterdir()) == [], "cartopy wrote (downloaded) something into its data folder"
    fig = figures[-1]
    ax = fig.axes[0]
    import cartopy.crs as ccrs

    assert isinstance(ax.projection, ccrs.LambertConformal)
    params = ax.projection.proj4_params
    assert params["proj"] == "lcc" and params["lon_0"] == pytest.approx(-97.5) and params["lat_1"] == 38.5
    # the map's extent is the grid's, in projection metres
    x, _ = COARSE.projection_xy()
    assert min(ax.get_xlim()) == pytest.approx(x[0] - 30000, abs=1) and np.ptp(ax.get_xlim()) == pytest.approx(
        30 * 60000, rel=1e-6)
    # state borders (Texas, Oklahoma, Kansas, ...) and the Gulf coast are drawn inside the map
    assert _outline_vertices_inside(ax, "states") > 200
    assert _outline_vertices_inside(ax, "coastlines") > 50


def test_latlon_grid_maps_in_platecarree(tmp_path, figures, offline):
    import cartopy.crs as ccrs

    lat1, lon1 = np.linspace(30, 40, 11), np.linspace(-100, -85, 16)
    lon, lat = np.meshgrid(lon1, lat1)
    ens = np.random.default_rng(1).normal(1, 2, (2, 1, 1, 11, 16)).astype(np.float32)
    ds = build_forecast_dataset(ens, targets=["preciprate"], init_time="2024-06-01T18:04", step_seconds=600,
                                latitude=lat, longitude=lon,
                                projection={"grid_mapping_name": "latitude_longitude"}, thresholds=[1.0])
    forecast_maps(ds, tmp_path, "preciprate", members=1, observed=None)
    ax = figures[-1].axes[0]
    assert isinstance(ax.projection, ccrs.PlateCarree)
    assert _outline_vertices_inside(ax, "states") > 50
    assert "lead +10 min" in figures[-1]._suptitle.get_text()


def test_probability_zero_is_white_in_ten_percent_steps(tmp_path, figures):
    pal = probability_palette()
    assert mcolors.to_hex(pal.cmap(pal.norm(0.0))) == "#ffffff"
    assert mcolors.to_hex(pal.cmap(pal.norm(0.005))) == "#ffffff"
    steps = [mcolors.to_hex(pal.cmap(pal.norm(p))) for p in (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85,
                                                              0.95)]
    assert "#ffffff" not in steps and len(set(steps)) == 10
    assert mcolors.to_hex(pal.cmap(pal.norm(0.11))) == mcolors.to_hex(pal.cmap(pal.norm(0.19)))
    assert mcolors.to_hex(pal.cmap(pal.norm(1.0))) == steps[-1]
    # drawn: a forecast with no member above the threshold is white everywhere in the probability panel
    forecast_maps(_dataset(values=0.0, thresholds=(50,)), tmp_path, "refc", members=0, observed=None)
    fig = figures[0]
    mesh = next(c for c in fig.axes[0].collections if c.get_label() == "field")
    rgba = mesh.to_rgba(mesh.get_array())
    assert np.allclose(rgba[..., :3], 1.0)
    img = np.asarray(Image.open(tmp_path / "refc_probability_lead1h.png").convert("RGB"))
    assert img.shape[0] > 100


def test_no_echo_is_masked(tmp_path, figures):
    values = np.full((3, 1, 1, 20, 30), 0.0, np.float32)
    values[:, :, :, 5:10, 5:10] = 42.0
    forecast_maps(_dataset(values=values), tmp_path, "refc", members=1, observed=None)
    members = figures[-1]
    mesh = next(c for c in members.axes[0].collections if c.get_label() == "field")
    arr = mesh.get_array()
    assert arr.mask.sum() == 20 * 30 - 25  # only the 42 dBZ block is drawn
    rgba = mesh.to_rgba(arr)
    assert np.all(rgba[..., 3][arr.mask.reshape(rgba.shape[:-1])] == 0)  # transparent where no echo
    # the NWS reflectivity colours: 5 dBZ steps from 5 dBZ, nothing below
    pal = palette_for("refc", "dBZ")
    assert pal.floor == 5.0 and list(pal.norm.boundaries[:3]) == [5, 10, 15]
    rain = palette_for("preciprate", "mm h-1")
    assert rain.floor == 0.1 and rain.mask(np.array([0.05, 0.2])).mask.tolist() == [True, False]


def test_titles_valid_time_utc_model_run_members(tmp_path, figures):
    ds = _dataset(leads=2, attrs={"model_run_id": "0123456789abcdef", "sampler": "ddim", "steps": 8,
                                  "checkpoint": "runs/demo/best.pt"})
    forecast_maps(ds, tmp_path, "refc", members=2, observed=None)
    title = figures[0]._suptitle.get_text()
    assert "valid 20:00 UTC Sat 01 Jun 2024" in title  # init 18 UTC + lead 2 h
    assert "init 18:00 UTC Sat 01 Jun 2024, lead +2 h" in title
    assert "best.pt" in title and "run 0123456789ab" in title and "3 members" in title
    assert maps.valid_title(ds, 0) == "valid 19:00 UTC Sat 01 Jun 2024"


def test_observed_panel_beside_the_forecast(tmp_path, figures):
    obs = np.random.default_rng(3).normal(25, 10, (20, 30))
    forecast_maps(_dataset(), tmp_path, "refc", members=2, observed=obs)
    prob, mean, spread, members = figures
    titles = [ax.get_title() for ax in members.axes if ax.get_title()]
    assert titles[:3] == ["observed refc", "member 0", "member 1"]
    assert [ax.get_title() for ax in mean.axes if ax.get_title()] == ["observed refc", "ensemble mean"]
    assert prob.axes[0].get_title() == "observed refc"
    with pytest.raises(ValueError, match="grid"):
        forecast_maps(_dataset(), tmp_path, "refc", observed=np.zeros((3, 3)))


def test_observed_panel_read_from_the_store(tmp_path, figures):
    from def_ray.data.zarr_store import ZarrStore

    lat, lon = COARSE.latlon()
    store = ZarrStore.create(str(tmp_path / "store.zarr"), variables=["refc"], latitude=lat, longitude=lon,
                             t0=np.datetime64("2024-06-01T18"), dt_seconds=3600, n_times=2,
                             projection=COARSE.attrs())
    truth = np.full((20, 30), 33.0, np.float32)
    store.write_step(np.datetime64("2024-06-01T19"), {"refc": truth})
    ds = _dataset(attrs={"store": store.url})
    assert np.array_equal(maps.observed_field(ds, "refc", 0), truth)
    forecast_maps(ds, tmp_path / "maps", "refc", members=1)
    assert figures[-1].axes[0].get_title() == "observed refc"
    # a valid time the store does not hold: no observed panel, the maps still drawn
    ds2 = build_forecast_dataset(np.zeros((2, 1, 1, 20, 30), np.float32), targets=["refc"],
                                 init_time="2024-06-03T00", step_seconds=3600, latitude=lat, longitude=lon,
                                 projection=COARSE.attrs(), attrs={"store": store.url})
    assert maps.observed_field(ds2, "refc", 0) is None


def test_nothing_overlaps(tmp_path, figures):
    forecast_maps(_dataset(thresholds=(20, 35, 40, 50), attrs={"model_run_id": "x" * 32, "checkpoint": "a" * 60}),
                  tmp_path, "refc", members=1, observed=np.zeros((20, 30)))
    for fig in figures:
        FigureCanvasAgg(fig).draw()  # (closed after saving: a canvas to lay it out again, as saved)
        renderer = fig.canvas.get_renderer()
        fb = fig.bbox
        boxes = [fig._suptitle.get_window_extent(renderer)]
        boxes += [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
        for b in boxes:  # inside the figure
            assert b.x0 >= fb.x0 - 1 and b.x1 <= fb.x1 + 1 and b.y1 <= fb.y1 + 1, fig._suptitle.get_text()
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)
        # panels do not overlap each other or the colour bars
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        for i, a in enumerate(panels):
            for b in panels[i + 1:]:
                assert not a.overlaps(b)


def test_unknown_variable_is_named(tmp_path):
    ens = np.zeros((2, 1, 1, 4, 4), np.float32)
    ds = build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01", step_seconds=3600)
    with pytest.raises(ValueError, match="'t2m'"):
        forecast_maps(ds, tmp_path, "t2m")


def test_grid_without_coordinates_still_maps(tmp_path):
    ens = np.random.default_rng(0).normal(20, 10, (2, 1, 1, 4, 4)).astype(np.float32)
    ds = build_forecast_dataset(ens, targets=["refc"], init_time="2024-06-01", step_seconds=3600)
    assert len(forecast_maps(ds, tmp_path, "refc", members=1)) == 3
