"""Probability products of an ensemble: exceedance probabilities, mean, spread and quantiles.

Each function takes either an ``xarray.DataArray`` with a "member" dimension (the result keeps the other
dimensions and their coordinates) or a NumPy array whose axis 0 is the member axis.  The batch job and the Serve
app both compute their products here, from the same float32 members, so their numbers agree to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import xarray as xr

__all__ = ["exceedance_probability", "ensemble_mean", "ensemble_spread", "ensemble_quantiles"]

A = TypeVar("A", np.ndarray, xr.DataArray)


def _check(ens: np.ndarray | xr.DataArray) -> None:
    if isinstance(ens, xr.DataArray):
        if "member" not in ens.dims:
            raise ValueError(f"the ensemble needs a 'member' dimension, got dims {ens.dims}")
        n = ens.sizes["member"]
    else:
        if np.ndim(ens) < 1:
            raise ValueError("the ensemble needs a member axis (axis 0)")
        n = np.shape(ens)[0]
    if n < 1:
        raise ValueError("the ensemble has no members")


def _values(ens: np.ndarray | xr.DataArray) -> np.ndarray:
    if isinstance(ens, xr.DataArray):
        return ens.transpose("member", ...).values
    return np.asarray(ens)


_CELL_METHODS = {"mean": "realization: mean", "spread": "realization: standard_deviation"}


def _attrs(ens: xr.DataArray, name: str) -> tuple[dict, dict]:
    """(attributes of the product, attributes of its new coordinate), CF style, from the ensemble's attributes."""
    units, long_name = ens.attrs.get("units"), ens.attrs.get("long_name", ens.name or "the variable")
    keep = {k: v for k, v in ens.attrs.items() if k in ("units", "standard_name", "long_name", "grid_mapping")}
    if name == "probability":
        attrs = {"units": "1", "long_name": f"probability that {long_name} >= threshold"
                                            + (f" ({units})" if units else "")}
        if "grid_mapping" in keep:
            attrs["grid_mapping"] = keep["grid_mapping"]
        coord = {"long_name": f"exceedance threshold of {ens.name or 'the variable'}",
                 "spp__relative_to_threshold": "greater_than_or_equal_to"}
        if units:
            coord["units"] = units
        if "standard_name" in keep:
            coord["standard_name"] = keep["standard_name"]
        return attrs, coord
    if name == "quantile":
        return {**keep, "long_name": f"ensemble quantiles of {long_name}"}, {
            "units": "1", "long_name": "ensemble quantile (probability level)"}
    what = {"mean": "ensemble mean", "spread": "ensemble standard deviation (ddof=1)"}[name]
    return {**keep, "long_name": f"{what} of {long_name}", "cell_methods": _CELL_METHODS[name]}, {}


def _wrap(ens: A, values: np.ndarray, dim: str | None, labels: Sequence[float] | None, name: str) -> A:
    """Put `values` (new leading axis `dim` if given, member axis removed) back into ens's type; a DataArray result
    carries CF attributes (units, standard_name, long_name, cell_methods; probabilities in units "1" and a threshold
    coordinate in the variable's units)."""
    if not isinstance(ens, xr.DataArray):
        return values
    rest = ens.transpose("member", ...)
    dims = tuple(d for d in rest.dims if d != "member")
    coords = {k: c for k, c in rest.coords.items() if "member" not in c.dims}
    attrs, coord_attrs = _attrs(ens, name)
    if dim is not None:
        dims = (dim, *dims)
        coords[dim] = xr.Variable(dim, np.asarray(labels, dtype=np.float64), coord_attrs)
    return xr.DataArray(values, dims=dims, coords=coords, name=f"{ens.name}_{name}" if ens.name else name,
                        attrs=attrs)


def exceedance_probability(ens: A, thresholds: Sequence[float]) -> A:
    """P(x >= threshold): the fraction of members at or above each threshold, float32, new leading dim "threshold".

    NaN members count as not exceeding (the ensemble size stays the denominator).
    """
    _check(ens)
    thr = np.asarray(list(thresholds), dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError(f"thresholds must be a non-empty list of finite numbers, got {list(thresholds)}")
    v = _values(ens)
    n = v.shape[0]
    counts = np.stack([(v >= t).sum(axis=0) for t in thr])
    return _wrap(ens, (counts / n).astype(np.float32), "threshold", thr, "probability")


def ensemble_mean(ens: A) -> A:
    """Member mean (float32, accumulated in float64)."""
    _check(ens)
    return _wrap(ens, _values(ens).mean(axis=0, dtype=np.float64).astype(np.float32), None, None, "mean")


def ensemble_spread(ens: A) -> A:
    """Member standard deviation with ddof=1 (the unbiased variance estimate); 0 for a one-member ensemble."""
    _check(ens)
    v = _values(ens)
    if v.shape[0] < 2:
        return _wrap(ens, np.zeros(v.shape[1:], dtype=np.float32), None, None, "spread")
    return _wrap(ens, v.std(axis=0, ddof=1, dtype=np.float64).astype(np.float32), None, None, "spread")


def ensemble_quantiles(ens: A, quantiles: Sequence[float]) -> A:
    """Member quantiles (linear interpolation between order statistics), new leading dim "quantile"."""
    _check(ens)
    q = np.asarray(list(quantiles), dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any((q < 0) | (q > 1)) or not np.all(np.isfinite(q)):
        raise ValueError(f"quantiles must be a non-empty list of numbers in [0, 1], got {list(quantiles)}")
    values = np.quantile(_values(ens).astype(np.float64), q, axis=0).astype(np.float32)
    return _wrap(ens, values, "quantile", q, "quantile")
