"""PNG maps of an ensemble forecast: P(V >= threshold), ensemble mean, spread and a few members.

Drawn with matplotlib (Agg) as pcolormesh on the 2-D latitude/longitude of the grid; with cartopy installed the
maps get coastlines and state borders (PlateCarree axes), without it plain lon/lat axes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["forecast_maps"]


def _cartopy():
    try:
        import cartopy.crs as ccrs
        import cartopy.feature as cfeature
    except ImportError:
        return None
    return ccrs, cfeature


def _axes(n: int, title: str):
    cp = _cartopy()
    kw = {"subplot_kw": {"projection": cp[0].PlateCarree()}} if cp else {}
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.6, 4), squeeze=False, **kw)
    fig.suptitle(title)
    for ax in axes[0]:
        if cp:
            ax.add_feature(cp[1].STATES, linewidth=0.4, edgecolor="0.3")
            ax.coastlines(linewidth=0.5)
        else:
            ax.set(xlabel="longitude (°E)", ylabel="latitude (°N)")
    return fig, axes[0]


def _lonlat(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    if "latitude" in ds.coords and "longitude" in ds.coords:
        return ds["longitude"].values, ds["latitude"].values
    yy, xx = np.meshgrid(np.arange(ds.sizes["y"]), np.arange(ds.sizes["x"]), indexing="ij")
    return xx, yy


def _panel(ax, lon, lat, field, **kw):
    extra = {"transform": _cartopy()[0].PlateCarree()} if _cartopy() else {}
    return ax.pcolormesh(lon, lat, field, shading="auto", **kw, **extra)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def forecast_maps(ds: xr.Dataset, out_dir: str | Path, variable: str = "refc", members: int = 4,
                  lead_index: int = -1) -> list[Path]:
    """Write the maps of `variable` at one lead (default: the last) into `out_dir`; returns the PNG paths."""
    if variable not in ds:
        raise ValueError(f"forecast has no variable {variable!r} (has {[v for v in ds.data_vars]})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lon, lat = _lonlat(ds)
    lead = ds["lead_time"].values[lead_index]
    hours = lead.astype("timedelta64[m]").astype(int) / 60
    sel = ds.isel(lead_time=lead_index)
    init = ds.attrs.get("init_time", "")
    units = ds[variable].attrs.get("units", "")
    when = f"init {init}, lead +{hours:g} h"
    paths: list[Path] = []

    prob = f"{variable}_probability"
    if prob in ds:
        thr = ds["threshold"].values
        fig, axes = _axes(len(thr), f"P({variable} ≥ threshold), {when}")
        for ax, t in zip(axes, thr):
            im = _panel(ax, lon, lat, sel[prob].sel(threshold=t).values, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"≥ {t:g} {units}")
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="probability")
        paths.append(_save(fig, out / f"{variable}_probability_lead{hours:g}h.png"))

    for product, cmap, label in (("mean", "turbo", f"ensemble mean ({units})"),
                                 ("spread", "magma", f"ensemble spread ({units})")):
        name = f"{variable}_{product}"
        if name in ds:
            fig, axes = _axes(1, f"{variable} {product}, {when}")
            im = _panel(axes[0], lon, lat, sel[name].values, cmap=cmap)
            fig.colorbar(im, ax=list(axes), shrink=0.8, label=label)
            paths.append(_save(fig, out / f"{variable}_{product}_lead{hours:g}h.png"))

    n = min(members, ds.sizes.get("member", 0))
    if n:
        field = sel[variable].isel(member=slice(0, n))
        vmin, vmax = float(np.nanmin(field.values)), float(np.nanmax(field.values))
        fig, axes = _axes(n, f"{variable} members 0-{n - 1}, {when}")
        for k, ax in enumerate(axes):
            im = _panel(ax, lon, lat, field.isel(member=k).values, vmin=vmin, vmax=vmax, cmap="turbo")
            ax.set_title(f"member {int(field['member'].values[k])}")
        fig.colorbar(im, ax=list(axes), shrink=0.8, label=units)
        paths.append(_save(fig, out / f"{variable}_members_lead{hours:g}h.png"))
    if not paths:
        raise ValueError(f"nothing to draw for {variable!r}")
    return paths


def forecast_map_set(ds: xr.Dataset, out_dir: str | Path, members: int = 4) -> list[Path]:
    """The maps of every forecast variable (the Dataset's `targets` attribute), as the batch job draws them."""
    targets = ds.attrs.get("targets", [])
    targets = [targets] if isinstance(targets, str) else list(targets)
    return [p for v in targets for p in forecast_maps(ds, out_dir, v, members=members)]
