"""Reliability against KNOWN probabilities (synthetic scenes), not only against outcomes.

On the synthetic process the probability that reflectivity exceeds a threshold one hour ahead is known exactly
(def_ray.data.synthetic.true_exceedance_probability).  A calibrated forecast's probability, binned, must then match
the mean true probability in each bin; this needs far fewer cases than outcome-based reliability, because the
binomial noise of the outcomes is gone.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def reliability_against_truth(forecast_probability: np.ndarray | xr.DataArray,
                              true_probability: np.ndarray | xr.DataArray, bins: int = 10,
                              min_count: int = 50) -> xr.Dataset:
    """Per forecast-probability bin: mean forecast probability, mean true probability, count, |difference|.

    Bins are equal-width on [0, 1] (the last includes 1).  `populated` marks bins with at least `min_count`
    points; `max_deviation` (an attribute) is the largest |difference| over populated bins; `mean_forecast` and
    `mean_true` are the overall means.
    """
    f = np.asarray(forecast_probability, dtype="float64").ravel()
    t = np.asarray(true_probability, dtype="float64").ravel()
    if f.shape != t.shape:
        raise ValueError(f"forecast and true probabilities differ in size: {f.size} != {t.size}")
    ok = np.isfinite(f) & np.isfinite(t)
    f, t = f[ok], t[ok]
    if ((f < 0) | (f > 1) | (t < 0) | (t > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(f, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_f = np.bincount(which, weights=f, minlength=bins) / count
        mean_t = np.bincount(which, weights=t, minlength=bins) / count
    deviation = np.abs(mean_f - mean_t)
    populated = count >= min_count
    ds = xr.Dataset(
        {"forecast_probability": ("bin", mean_f), "true_probability": ("bin", mean_t), "count": ("bin", count),
         "deviation": ("bin", deviation), "populated": ("bin", populated)},
        coords={"bin_lower": ("bin", edges[:-1]), "bin_upper": ("bin", edges[1:])})
    ds.attrs["max_deviation"] = float(deviation[populated].max()) if populated.any() else float("nan")
    # overall means: a one-sided (e.g. under-forecasting) bias shows here at once
    ds.attrs["mean_forecast"], ds.attrs["mean_true"] = float(f.mean()), float(t.mean())
    ds.attrs["min_count"] = min_count
    return ds
