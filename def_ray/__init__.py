"""def_ray: conditional diffusion ensemble forecasts of convection from NOAA HRRR, on Ray."""

# Load order matters: eccodes' wheel bundles its own libproj and an old libsqlite3 (3.26) under the system names.
# - pyproj first, or the process crashes ("double free or corruption") as soon as pyproj is used;
# - sqlite3 first, or the stdlib module binds to eccodes' sqlite and MLflow's sqlite store refuses it (needs 3.31).
import sqlite3  # noqa: F401  (isort: skip)

import pyproj  # noqa: F401  (isort: skip)

__version__ = "0.1.0"
