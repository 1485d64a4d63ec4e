"""Reliability against KNOWN probabilities (synthetic scenes), not only against outcomes.

On the synthetic process the probability that reflectivity exceeds a threshold one hour ahead is known exactly
(def_ray.data.synthetic.true_exceedance_probability).  A calibrated forecast's probability, binned, must then match
the mean true probability in each bin; this needs far fewer cases than outcome-based reliability, because the
binomial noise of the outcomes is gone.

Against outcomes (real radar), two yardsticks say how much of a deviation the few cases verified explain: a
bootstrap of the cases (`deviation_interval`) and what a calibrated ensemble would show on the same cases, each
member scored as the truth against the others (`member_as_truth`, `calibrated_deviation`).
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from def_ray.verify.metrics import equal_probability_bins
from def_ray.verify.significance import resample_weights


def _bin_of(p: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bin edges on [0, 1] and each probability's bin (the last bin includes 1)."""
    edges = equal_probability_bins(bins)
    return edges, np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)


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
    edges, which = _bin_of(f, bins)
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


def deviation_interval(forecast_probability: np.ndarray, true_probability: np.ndarray, bins: int = 10,
                       min_count: int = 50, level: float = 0.9, n_boot: int = 1000, seed: int = 0,
                       groups: np.ndarray | None = None) -> xr.Dataset:
    """How much a bin's deviation owes to the few cases verified: a case bootstrap of forecast - true per bin.

    Points of one case are strongly correlated (a storm fills many pixels), so the cases, axis 0 of both arrays,
    are what is resampled; `groups` (one label per case) resamples whole groups instead, e.g. cases a few hours
    apart that share their storms.  Bins are fixed by the full sample, as in `reliability_against_truth`.  Returns
    per bin the signed difference (mean forecast - mean true) and its `level` interval, and, as attributes, the
    interval of the largest |difference| over populated bins.  An interval wholly above a tolerance says the
    miscalibration is real; one that straddles it says more cases are needed to tell.
    """
    f = np.asarray(forecast_probability, dtype="float64")
    t = np.asarray(true_probability, dtype="float64")
    if f.shape != t.shape or f.ndim < 2:
        raise ValueError(f"need equal (case, ...) arrays, got {f.shape} and {t.shape}")
    n_case = f.shape[0]
    f, t = f.reshape(n_case, -1), t.reshape(n_case, -1)
    ok = np.isfinite(f) & np.isfinite(t)
    edges, which = _bin_of(f[ok], bins)
    index = np.broadcast_to(np.arange(n_case)[:, None], f.shape)[ok] * bins + which  # case * bins + bin
    sums = np.stack([np.bincount(index, weights=w, minlength=n_case * bins).reshape(n_case, bins)
                     for w in (None, f[ok], t[ok])])  # (count / forecast sum / true sum, case, bin)
    populated = sums[0].sum(0) >= min_count
    groups = np.arange(n_case) if groups is None else np.asarray(groups).ravel()
    if groups.size != n_case:
        raise ValueError(f"groups needs one label per case: {groups.size} labels for {n_case} cases")
    n_unit = np.unique(groups).size
    weights = resample_weights(groups, n_boot, seed)  # (boot, case)
    boot = np.einsum("bc,sck->sbk", weights, sums)  # (3, boot, bin)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (sums[1].sum(0) - sums[2].sum(0)) / sums[0].sum(0)
        boot_diff = (boot[1] - boot[2]) / boot[0]  # a bin empty in a resample is nan there
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    with warnings.catch_warnings():  # bins that no point falls in stay nan
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = (np.nanquantile(boot_diff, q, axis=0) for q in (lo_q, hi_q))
        boot_max = np.nanmax(np.abs(boot_diff[:, populated]), axis=1) if populated.any() else np.full(n_boot, np.nan)
    ds = xr.Dataset({"difference": ("bin", diff), "lower": ("bin", lo), "upper": ("bin", hi),
                     "populated": ("bin", populated)},
                    coords={"bin_lower": ("bin", edges[:-1]), "bin_upper": ("bin", edges[1:])})
    ds.attrs.update(level=level, cases=n_case, units=n_unit,
                    max_deviation_lower=float(np.nanquantile(boot_max, lo_q)),
                    max_deviation_upper=float(np.nanquantile(boot_max, hi_q)))
    return ds


def _scored_points(members: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(members as float64, the points scored: `valid` where given, and every member finite)."""
    x = np.asarray(members, dtype="float64")
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 members to score one against the others, got {x.shape[0]}")
    ok = np.isfinite(x).all(0)
    return x, ok if valid is None else ok & np.asarray(valid, dtype=bool)


def member_as_truth(members: np.ndarray, threshold: float, valid: np.ndarray | None = None, bins: int = 10,
                    min_count: int = 50) -> xr.Dataset:
    """Each member in turn scored as the truth against the share of the other M - 1 reaching `threshold`: the
    reliability a calibrated forecast of these very cases would show, M times (dims draw, bin; the variables of
    `reliability_against_truth`, and `max_deviation` per draw).

    If the ensemble is calibrated the truth is one more draw like any member, so these are draws of what chance
    alone gives on the same cases: their storms, their spatial correlation, the bins of >= `min_count` points and
    the finite ensemble (a share of M members is not on the diagonal even for exchangeable members).  `members` is
    (member, ...) values, `valid` a mask of the points scored (default: finite everywhere).
    """
    x, ok = _scored_points(members, valid)
    m = x.shape[0]
    event = x[:, ok] >= threshold  # (member, point)
    count = event.sum(0)
    draws = []
    for k in range(m):
        rel = reliability_against_truth((count - event[k]) / (m - 1), event[k], bins=bins, min_count=min_count)
        draws.append(rel.assign(max_deviation=rel.attrs["max_deviation"]))
    return xr.concat(draws, "draw", data_vars="all", coords="minimal", compat="override")


def calibrated_deviations(members: np.ndarray, threshold: float, at: np.ndarray, valid: np.ndarray | None = None,
                          bins: int = 10) -> np.ndarray:
    """(draw, len(at)): the signed deviation (observed frequency - probability) each `member_as_truth` draw shows
    at the probabilities `at` (e.g. an M-member diagram's bin means), interpolated between the draw's own bin means.

    The draws are ensembles of M - 1 members, whose shares k / (M - 1) sit a little apart from the M members'
    shares in the same bin; where a calibrated ensemble's diagram is steep (the finite-ensemble part: flat at
    the climatological frequency when every point has the same probability) comparing bin by bin would put that
    offset into the deviation, interpolating at the same probability does not."""
    draws = member_as_truth(members, threshold, valid, bins, min_count=1)
    forecast, truth = draws["forecast_probability"].values, draws["true_probability"].values
    out = np.full((forecast.shape[0], np.size(at)), np.nan)
    for k, (f, t) in enumerate(zip(forecast, truth)):
        seen = np.isfinite(f)
        if seen.any():
            out[k] = np.interp(np.asarray(at, dtype="float64"), f[seen], t[seen] - f[seen])
    return out


def calibrated_deviation(members: np.ndarray, threshold: float, at: np.ndarray, valid: np.ndarray | None = None,
                         bins: int = 10, level: float = 0.9) -> dict[str, float]:
    """What a calibrated ensemble would score on these cases: over the draws of `member_as_truth`, the median and
    `level` quantile of the largest |deviation| at the probabilities `at` (the bin means an observed maximum runs
    over; `calibrated_deviations`).  An observed deviation above the upper is miscalibration, not the few cases
    verified; a tolerance below the median cannot be told from noise on these cases.  Returns {"median", "upper",
    "draws"}.
    """
    x, ok = _scored_points(members, valid)
    nan = {"median": float("nan"), "upper": float("nan"), "draws": x.shape[0]}
    if not ok.any() or np.size(at) == 0:
        return nan
    largest = np.abs(calibrated_deviations(x, threshold, at, ok, bins)).max(axis=1)
    finite = largest[np.isfinite(largest)]
    if finite.size == 0:
        return nan
    return {"median": float(np.median(finite)), "upper": float(np.quantile(finite, level)), "draws": x.shape[0]}
