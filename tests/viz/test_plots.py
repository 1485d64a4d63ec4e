"""Verification plots name the verified variable and its units in their titles."""

import numpy as np
import xarray as xr

from def_ray.viz.plots import _event


def test_event_names_the_variable_and_units():
    qpe = xr.DataArray(np.zeros(3), name="qpe_01h", attrs={"units": "mm"})
    assert _event(qpe, 2.5) == "qpe_01h ≥ 2.5 mm"
    assert _event(xr.DataArray(np.zeros(3), name="refc"), 35.0) == "refc ≥ 35"
    assert _event(xr.DataArray(np.zeros(3)), 1.0) == "value ≥ 1"
