"""The HRRR CONUS Lambert conformal grid, and crops of it.

HRRR: 1799 x 1059 points at 3 km, Latin1 = Latin2 = LaD = 38.5, LoV = 262.5 (-97.5), first point (south-west
corner, j scanning northwards) at 21.138123N 237.280472E, spherical earth of radius 6371229 m (GRIB shape 6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyproj

HRRR_NY, HRRR_NX = 1059, 1799
EARTH_RADIUS_M = 6371229.0


@dataclass(frozen=True)
class LambertGrid:
    ny: int = HRRR_NY
    nx: int = HRRR_NX
    dx_m: float = 3000.0
    dy_m: float = 3000.0
    lat_0: float = 38.5
    lat_1: float = 38.5
    lat_2: float = 38.5
    lon_0: float = 262.5
    first_lat: float = 21.138123
    first_lon: float = 237.280472

    @property
    def crs(self) -> pyproj.CRS:
        return pyproj.CRS.from_dict({
            "proj": "lcc", "lat_0": self.lat_0, "lat_1": self.lat_1, "lat_2": self.lat_2,
            "lon_0": self.lon_0 - 360 if self.lon_0 > 180 else self.lon_0, "R": EARTH_RADIUS_M, "units": "m"})

    def _origin_xy(self) -> tuple[float, float]:
        to_xy = pyproj.Transformer.from_crs("+proj=longlat +R=6371229 +no_defs", self.crs, always_xy=True)
        return to_xy.transform(self.first_lon - 360 if self.first_lon > 180 else self.first_lon, self.first_lat)

    def projection_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Projection coordinates (m) of the x and y axes."""
        x0, y0 = self._origin_xy()
        return x0 + self.dx_m * np.arange(self.nx), y0 + self.dy_m * np.arange(self.ny)

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D latitude and longitude (degrees, longitude in -180..180), shape (ny, nx)."""
        xs, ys = self.projection_xy()
        xx, yy = np.meshgrid(xs, ys)
        to_ll = pyproj.Transformer.from_crs(self.crs, "+proj=longlat +R=6371229 +no_defs", always_xy=True)
        lon, lat = to_ll.transform(xx, yy)
        return lat, lon

    def crop(self, y0: int, x0: int, ny: int, nx: int) -> LambertGrid:
        """The sub-grid of ny x nx points starting at index (y0, x0) of this grid."""
        if y0 < 0 or x0 < 0 or y0 + ny > self.ny or x0 + nx > self.nx:
            raise ValueError(f"crop y0={y0} x0={x0} ny={ny} nx={nx} outside the {self.ny} x {self.nx} grid")
        xs, ys = self.projection_xy()
        to_ll = pyproj.Transformer.from_crs(self.crs, "+proj=longlat +R=6371229 +no_defs", always_xy=True)
        lon, lat = to_ll.transform(xs[x0], ys[y0])
        return LambertGrid(ny=ny, nx=nx, dx_m=self.dx_m, dy_m=self.dy_m, lat_0=self.lat_0, lat_1=self.lat_1,
                           lat_2=self.lat_2, lon_0=self.lon_0, first_lat=float(lat), first_lon=float(lon) % 360)

    def attrs(self) -> dict:
        """Projection attributes stored with data (CF grid_mapping names plus the GRIB-style parameters)."""
        d = asdict(self)
        d.update(grid_mapping_name="lambert_conformal_conic", standard_parallel=[self.lat_1, self.lat_2],
                 longitude_of_central_meridian=self.lon_0 - 360 if self.lon_0 > 180 else self.lon_0,
                 latitude_of_projection_origin=self.lat_0, earth_radius=EARTH_RADIUS_M, crs_wkt=self.crs.to_wkt())
        return d


HRRR_GRID = LambertGrid()


def grid_spacing_km(lat: np.ndarray, lon: np.ndarray) -> float:
    """Geometric mean of the great-circle distances (km) between neighbouring points in y and in x at the centre
    of a 2-D lat/lon grid (the spacing a motion in grid points per step converts to km with)."""
    lat, lon = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    cy, cx = lat.shape[0] // 2, lat.shape[1] // 2

    def dist(a: tuple[int, int], b: tuple[int, int]) -> float:
        dlat, dlon = lat[b] - lat[a], lon[b] - lon[a]
        h = np.sin(dlat / 2) ** 2 + np.cos(lat[a]) * np.cos(lat[b]) * np.sin(dlon / 2) ** 2
        return float(2 * 6371.0 * np.arcsin(np.sqrt(h)))

    dy = dist((cy - 1, cx), (cy, cx)) if lat.shape[0] > 1 else float("nan")
    dx = dist((cy, cx - 1), (cy, cx)) if lat.shape[1] > 1 else float("nan")
    return float(np.sqrt(dy * dx))

