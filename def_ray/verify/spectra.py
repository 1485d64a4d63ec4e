"""Radially averaged power spectra of 2-D fields: do the ensemble members keep the small scales of the truth?

The power |FFT|^2 / (ny nx) is averaged over rings of width one wavenumber, as ``pysteps.utils.spectral.rapsd``
does. pysteps measures ring radii in array-index offsets, which on a non-square grid (HRRR is 1059 x 1799) puts a
wave along the short axis on the wrong ring; here radii are physical wavenumbers, sqrt(kx^2 + ky^2) in cycles per
L = max(ny, nx) grid lengths, which equals pysteps on square grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["radial_power_spectrum"]

_CHUNK = 8  # fields transformed at once: bounds the complex FFT buffers on full HRRR grids


def _rings(ny: int, nx: int) -> tuple[np.ndarray, int]:
    """Ring (integer wavenumber) of every Fourier coefficient, in numpy FFT order, and the number of rings kept."""
    size = max(ny, nx)
    ky = np.fft.fftfreq(ny) * size
    kx = np.fft.fftfreq(nx) * size
    ring = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int64)
    return ring.ravel(), size // 2 + (size % 2)


def _ring_means(fields: np.ndarray, ring: np.ndarray, n_rings: int) -> np.ndarray:
    """(F, ny, nx) fields -> (F, n_rings) mean power per ring."""
    order = np.argsort(ring, kind="stable")
    sorted_ring = ring[order]
    kept = sorted_ring < n_rings
    order, sorted_ring = order[kept], sorted_ring[kept]
    starts = np.searchsorted(sorted_ring, np.arange(n_rings))
    counts = np.bincount(sorted_ring, minlength=n_rings)
    out = np.empty((fields.shape[0], n_rings))
    for i in range(0, fields.shape[0], _CHUNK):
        block = fields[i:i + _CHUNK]
        power = np.abs(np.fft.fft2(block)) ** 2 / (block.shape[-2] * block.shape[-1])
        power = power.reshape(block.shape[0], -1)[:, order]
        out[i:i + _CHUNK] = np.add.reduceat(power, starts, axis=1) / counts
    return out


def radial_power_spectrum(field: xr.DataArray, spatial_dims: tuple[str, str] = ("y", "x"),
                          grid_spacing_km: float = 3.0, dim: str | Sequence[str] | None = None,
                          fill_value: float | None = None) -> xr.DataArray:
    """Radially averaged power spectrum, averaged over ``dim`` (default: every non-spatial dim, e.g. member, time).

    Returns dims (wavenumber, remaining...) with coordinates ``wavenumber`` (cycles per L = max(ny, nx) grid
    lengths, 0 .. L/2), ``wavelength`` (grid lengths, L / wavenumber; inf at 0) and ``wavelength_km``.
    The spectrum needs complete fields: NaN is an error unless ``fill_value`` says what to put there.
    """
    who = "radial_power_spectrum"
    if not isinstance(field, xr.DataArray):
        raise TypeError(f"{who}: field must be an xarray.DataArray, got {type(field).__name__}")
    missing = [d for d in spatial_dims if d not in field.dims]
    if missing:
        raise ValueError(f"{who}: spatial dims {missing} not in field dims {field.dims}")
    if not grid_spacing_km > 0:
        raise ValueError(f"{who}: grid_spacing_km must be positive, got {grid_spacing_km}")
    others = [d for d in field.dims if d not in spatial_dims]
    if dim is None:
        dims = others
    else:
        dims = [dim] if isinstance(dim, str) else list(dim)
        bad = [d for d in dims if d not in others]
        if bad:
            raise ValueError(f"{who}: cannot average over {bad}: not non-spatial dims of field {field.dims}")
    values = field.transpose(*others, *spatial_dims).values.astype(np.float64)
    nan = ~np.isfinite(values)
    if nan.any():
        if fill_value is None:
            where = np.argwhere(nan)[0]
            at = ", ".join(f"{d}={i}" for d, i in zip((*others, *spatial_dims), where))
            raise ValueError(f"{who}: field has {int(nan.sum())} non-finite values (first at {at}); crop to the "
                             f"covered region or pass fill_value")
        values = np.where(nan, fill_value, values)
    ny, nx = values.shape[-2:]
    ring, n_rings = _rings(ny, nx)
    flat = values.reshape(-1, ny, nx)
    spectra = _ring_means(flat, ring, n_rings).reshape(*values.shape[:-2], n_rings)
    out = xr.DataArray(spectra, dims=(*others, "wavenumber"),
                       coords={d: field.coords[d] for d in others if d in field.coords})
    out = out.mean(dims) if dims else out
    wavenumber = np.arange(n_rings)
    with np.errstate(divide="ignore"):
        wavelength = max(ny, nx) / wavenumber.astype(float)
    return (out.transpose("wavenumber", ...)
            .assign_coords(wavenumber=wavenumber, wavelength=("wavenumber", wavelength),
                           wavelength_km=("wavenumber", wavelength * grid_spacing_km))
            .rename("power_spectrum"))
