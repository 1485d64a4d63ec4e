"""Colour scales forecasters read at a glance.

- Reflectivity (dBZ): the NWS reflectivity colour table from MetPy (``NWSReflectivity``), 5 dBZ steps from 5 to 75 dBZ;
  no echo (< 5 dBZ) is masked, i.e. transparent over a white map.
- Rain rate (mm h-1) and accumulation (mm): pysteps' plotting colour scale ("pysteps" intensity / depth levels);
  below 0.1 mm h-1 (mm) is masked.
- Exceedance probabilities: 10 % steps on a BoundaryNorm, white at zero (P < 1 %), then one colour per 10 % step.
- Anything else: a continuous scale, nothing masked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import matplotlib.colors as mcolors
import numpy as np

__all__ = ["Palette", "palette_for", "probability_palette", "PROBABILITY_LEVELS"]

# 0 | 1 % | 10 % | 20 % ... | 100 %: the first bin (P < 1 %) is white, then 10 % steps
PROBABILITY_LEVELS = np.array([0.0, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
# light to dark, blue -> green -> yellow -> red -> magenta, as probability charts (SPC/HREF) are read
_PROBABILITY_COLOURS = ["#ffffff", "#c6dbef", "#6baed6", "#41ab5d", "#006d2c", "#fed976", "#fd8d3c", "#e31a1c",
                        "#99000d", "#dd3497", "#7a0177"]


@dataclass
class Palette:
    cmap: mcolors.Colormap
    norm: mcolors.Normalize | None
    floor: float | None = None       # values below (and NaN) are masked: no echo / no rain
    extend: str = "neither"
    ticks: list[float] | None = None
    tick_labels: list[str] | None = None
    kw: dict = field(default_factory=dict)

    def mask(self, values: np.ndarray) -> np.ma.MaskedArray:
        values = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(values)
        if self.floor is not None:
            bad |= np.where(np.isfinite(values), values, -np.inf) < self.floor
        return np.ma.masked_array(values, mask=bad)

    def mesh_kwargs(self) -> dict:
        return {"cmap": self.cmap, "norm": self.norm, **self.kw}


def _transparent_bad(cmap: mcolors.Colormap) -> mcolors.Colormap:
    return cmap.with_extremes(bad=(1.0, 1.0, 1.0, 0.0))


@lru_cache(maxsize=1)
def _nws_reflectivity() -> tuple[mcolors.BoundaryNorm, mcolors.Colormap]:
    from metpy.plots import ctables

    norm, cmap = ctables.registry.get_with_steps("NWSReflectivity", 5, 5)  # 5, 10, ... 80 dBZ
    return norm, cmap


@lru_cache(maxsize=2)
def _pysteps(ptype: str) -> tuple[mcolors.Colormap, mcolors.Normalize, list[float]]:
    from def_ray.data.advection import quiet_pysteps

    with quiet_pysteps():  # pysteps announces its configuration file on import
        from pysteps.visualization.precipfields import get_colormap
    units = "mm/h" if ptype == "intensity" else "mm"
    with warnings.catch_warnings():  # pysteps still calls Colormap.set_over/set_bad/set_under
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        cmap, norm, clevs, _ = get_colormap(ptype, units, "pysteps")
    return cmap, norm, list(clevs)


def reflectivity_palette() -> Palette:
    norm, cmap = _nws_reflectivity()
    ticks = [float(b) for b in norm.boundaries[::2]]
    return Palette(_transparent_bad(cmap), norm, floor=5.0, extend="max", ticks=ticks)


def rain_palette(accumulation: bool = False) -> Palette:
    cmap, norm, clevs = _pysteps("depth" if accumulation else "intensity")
    ticks = [c for c in clevs if c >= 0.1]
    return Palette(_transparent_bad(cmap), norm, floor=0.1, extend="max", ticks=ticks[::2],
                   tick_labels=[f"{t:g}" for t in ticks[::2]])


def probability_palette() -> Palette:
    cmap = mcolors.ListedColormap(_PROBABILITY_COLOURS, name="def_ray_probability")
    norm = mcolors.BoundaryNorm(PROBABILITY_LEVELS, cmap.N)
    ticks = [float(t) for t in PROBABILITY_LEVELS if t == 0 or t >= 0.1]
    return Palette(_transparent_bad(cmap), norm, floor=None, ticks=ticks,
                   tick_labels=[f"{round(100 * t)}" for t in ticks])


def spread_palette() -> Palette:
    import matplotlib

    cmap = matplotlib.colormaps["Purples"]
    return Palette(_transparent_bad(cmap), None, floor=None)


def palette_for(variable: str, units: str) -> Palette:
    """The palette of a field in `units`: NWS reflectivity for dBZ, pysteps for rain rates and depths."""
    u = (units or "").strip()
    if u.lower() == "dbz":
        return reflectivity_palette()
    if u in ("mm h-1", "mm/h", "mm hr-1"):
        return rain_palette(accumulation=False)
    if u in ("mm", "kg m-2") and variable not in ("vil",):
        return rain_palette(accumulation=True)
    import matplotlib

    return Palette(_transparent_bad(matplotlib.colormaps["viridis"]), None, floor=None)
