"""def_ray: conditional diffusion ensemble forecasts of convection from NOAA HRRR, on Ray."""

__version__ = "0.1.0"
