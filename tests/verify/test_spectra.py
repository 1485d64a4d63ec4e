"""Radially averaged power spectra: known peaks, pysteps on square grids, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pysteps.utils.spectral import rapsd

from def_ray.verify import radial_power_spectrum


def wave(ny: int, nx: int, ky: int, kx: int) -> np.ndarray:
    """cos with ky cycles along y over ny points and kx cycles along x over nx points."""
    y, x = np.mgrid[0:ny, 0:nx]
    return np.cos(2 * np.pi * (ky * y / ny + kx * x / nx))


@pytest.mark.parametrize("n", [32, 33])
def test_pure_sinusoid_peaks_at_its_wavenumber(n: int) -> None:
    spectrum = radial_power_spectrum(xr.DataArray(wave(n, n, 0, 5), dims=("y", "x")), grid_spacing_km=3.0)
    peak = spectrum.isel(wavenumber=int(np.argmax(spectrum.values)))
    assert int(peak.wavenumber) == 5
    assert float(peak.wavelength) == pytest.approx(n / 5)
    assert float(peak.wavelength_km) == pytest.approx(3 * n / 5)
    # all the power sits on that ring: n^2/4 per coefficient at (0, +-5), ring mean = that total over ring size
    assert float(spectrum.drop_sel(wavenumber=5).max()) < 1e-20


def test_wave_along_the_short_axis_of_a_rectangular_grid() -> None:
    # 40 x 80 grid, 4 cycles along y: wavelength 10 grid lengths = wavenumber 8 in cycles per max(ny, nx) = 80
    spectrum = radial_power_spectrum(xr.DataArray(wave(40, 80, 4, 0), dims=("y", "x")))
    peak = spectrum.isel(wavenumber=int(np.argmax(spectrum.values)))
    assert float(peak.wavelength) == pytest.approx(10.0)


@pytest.mark.parametrize("n", [24, 25])
def test_matches_pysteps_rapsd_and_averages_over_members_and_time(n: int) -> None:
    fields = np.random.default_rng(20).gamma(1.5, size=(3, 2, n, n))
    da = xr.DataArray(fields, dims=("member", "time", "y", "x"))
    expected = np.mean([rapsd(f, fft_method=np.fft) for f in fields.reshape(-1, n, n)], axis=0)
    np.testing.assert_allclose(radial_power_spectrum(da).values, expected, rtol=1e-6)
    per_time = radial_power_spectrum(da, dim="member")
    assert per_time.dims == ("wavenumber", "time")
    np.testing.assert_allclose(per_time.isel(time=1).values,
                               np.mean([rapsd(f, fft_method=np.fft) for f in fields[:, 1]], axis=0), rtol=1e-6)


def test_nan_is_refused_unless_filled() -> None:
    values = np.ones((8, 8))
    values[2, 3] = np.nan
    da = xr.DataArray(values, dims=("y", "x"))
    with pytest.raises(ValueError, match=r"1 non-finite values \(first at y=2, x=3\)"):
        radial_power_spectrum(da)
    filled = radial_power_spectrum(da, fill_value=1.0)
    assert float(filled.sel(wavenumber=0)) == pytest.approx(64.0)  # constant 1: all power at k = 0, |64|^2 / 64
    with pytest.raises(ValueError, match="spatial dims"):
        radial_power_spectrum(da.rename(x="lon"))
