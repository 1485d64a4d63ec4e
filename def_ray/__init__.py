"""def_ray: conditional diffusion ensemble forecasts of convection from NOAA HRRR, on Ray."""

# pyproj must be loaded before eccodes/cfgrib: eccodes' bundled libraries carry another libproj, and loading that
# one first crashes the interpreter ("double free or corruption") as soon as pyproj is used.
import pyproj  # noqa: F401

__version__ = "0.1.0"
