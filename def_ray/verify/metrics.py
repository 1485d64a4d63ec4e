"""Verification metrics for ensemble forecasts held as xarray objects.

Conventions shared by every function here:

- ``forecast`` is an ensemble with a member dimension (``member_dim``, default ``"member"``); ``truth`` has the same
  dimensions minus the member one, on the same coordinates (checked; a mismatch is an error naming both).
- NaN in ``truth`` means "no coverage" (e.g. outside the radar mosaic): such points are left out of every score, and so
  are points where any member is NaN.
- ``dim`` names the dimensions to reduce over; ``None`` means all of ``truth``'s dimensions, ``[]`` means none
  (a point-wise score). Scores are means over the valid points of the reduced dimensions, so a DataArray with the
  remaining dimensions comes back (0-d when all are reduced: ``float(result)`` gives the number).
- An event is ``value >= threshold`` (the convention of the ensemble's exceedance probabilities, e.g.
  P(refc >= 35 dBZ)).
- Probability scores accept either an ensemble (the event probability is the fraction of members at or above the
  threshold) or a probability field without a member dimension, with values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scoringrules
import xarray as xr
from scipy.ndimage import uniform_filter

Dims = str | Sequence[str] | None

__all__ = [
    "brier_decomposition",
    "brier_score",
    "contingency_scores",
    "crps",
    "crps_skill_score",
    "ensemble_mean_rmse",
    "ensemble_spread",
    "exceedance_probability",
    "fractions_skill_score",
    "fss_sums",
    "crps_pointwise",
    "equal_probability_bins",
    "rank_histogram",
    "reliability_diagram",
    "roc_auc",
    "roc_curve",
    "spread_skill_ratio",
]


# ----------------------------------------------------------------------------------------------------------- inputs
def _checked(who: str, forecast: xr.DataArray, truth: xr.DataArray, member_dim: str,
             ensemble: bool) -> tuple[xr.DataArray, xr.DataArray]:
    """Validate and align forecast and truth; ``ensemble`` demands the member dimension."""
    for name, obj in (("forecast", forecast), ("truth", truth)):
        if not isinstance(obj, xr.DataArray):
            raise TypeError(f"{who}: {name} must be an xarray.DataArray, got {type(obj).__name__}")
    if ensemble and member_dim not in forecast.dims:
        raise ValueError(f"{who}: forecast has no ensemble dimension {member_dim!r} (its dims: {forecast.dims})")
    if member_dim in truth.dims:
        raise ValueError(f"{who}: truth must not have the ensemble dimension {member_dim!r} (its dims: {truth.dims})")
    want = set(forecast.dims) - {member_dim}
    if set(truth.dims) != want:
        raise ValueError(f"{who}: truth dims {truth.dims} differ from forecast dims {forecast.dims} "
                         f"minus {member_dim!r}")
    try:
        forecast, truth = xr.align(forecast, truth, join="exact")
    except ValueError as err:
        raise ValueError(f"{who}: forecast and truth are not on the same coordinates: {err}") from err
    return forecast, truth


def _dims(who: str, dim: Dims, truth: xr.DataArray) -> list[str]:
    if dim is None:
        return list(truth.dims)
    dims = [dim] if isinstance(dim, str) else list(dim)
    unknown = [d for d in dims if d not in truth.dims]
    if unknown:
        raise ValueError(f"{who}: cannot reduce over {unknown}: not dimensions of truth {truth.dims}")
    return dims


def _valid(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str) -> xr.DataArray:
    """True where truth has coverage and every member is finite."""
    ok = truth.notnull()
    if member_dim in forecast.dims:
        return ok & forecast.notnull().all(member_dim)
    return ok & forecast.notnull()


def _as_list(values: float | Sequence[float]) -> tuple[list, bool]:
    """(values as a list, whether a single scalar was given: its dimension is then dropped from the result)."""
    if np.ndim(values) == 0:
        return [values], True
    return list(values), False


def _members(forecast: xr.DataArray, member_dim: str) -> int:
    return forecast.sizes[member_dim]


# ------------------------------------------------------------------------------------------------ continuous scores
def crps_pointwise(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "member") -> xr.DataArray:
    """Fair CRPS at every point (NaN where invalid); a deterministic forecast scores its absolute error."""
    if member_dim not in forecast.dims:
        return abs(forecast - truth)
    if _members(forecast, member_dim) == 1:
        # The fair estimator's spread term is a sum over member pairs i != j: empty for one member, so CRPS = MAE.
        return abs(forecast.squeeze(member_dim, drop=True) - truth)
    score = xr.apply_ufunc(_fair_crps, truth, forecast, input_core_dims=[[], [member_dim]])
    return score.where(_valid(forecast, truth, member_dim))


_CRPS_BLOCK = 1 << 17  # points per block: bounds the (points, members) float64 temporaries to ~50 MB at M = 50


def _fair_crps(obs: np.ndarray, fct: np.ndarray) -> np.ndarray:
    """Fair CRPS with scoringrules' probability-weighted-moment estimator, block by block.

    The PWM form E|X - y| + b0 - 2 b1 (b0 = mean, b1 = sum_i (i - 1) x_(i) / (M (M - 1)) over the sorted members)
    is algebraically the fair estimator E|X - y| - sum_{i != j} |x_i - x_j| / (2 M (M - 1)), but needs O(M) memory
    per point where scoringrules' "fair" builds the M x M pair matrix (38 GB for 50 members on the HRRR grid).
    """
    flat_obs = obs.reshape(-1).astype(np.float64)
    flat_fct = fct.reshape(-1, fct.shape[-1])
    out = np.empty(flat_obs.shape)
    for start in range(0, flat_obs.size, _CRPS_BLOCK):
        block = slice(start, start + _CRPS_BLOCK)
        out[block] = scoringrules.crps_ensemble(flat_obs[block], flat_fct[block].astype(np.float64), m_axis=-1,
                                                estimator="pwm", backend="numpy")
    return out.reshape(obs.shape)


def crps(forecast: xr.DataArray, truth: xr.DataArray, dim: Dims = None,
         member_dim: str = "member") -> xr.DataArray:
    """Mean fair CRPS (unbiased in the number of members M; Ferro 2014), computed with scoringrules."""
    forecast, truth = _checked("crps", forecast, truth, member_dim, ensemble=True)
    dims = _dims("crps", dim, truth)
    return crps_pointwise(forecast, truth, member_dim).mean(dims, skipna=True)


def crps_skill_score(forecast: xr.DataArray, truth: xr.DataArray, reference: xr.DataArray, dim: Dims = None,
                     member_dim: str = "member") -> xr.DataArray:
    """CRPSS = 1 - CRPS(forecast) / CRPS(reference), both averaged over the points valid for both.

    ``reference`` is an ensemble (fair CRPS) or a deterministic field such as persistence (its CRPS is the MAE).
    """
    forecast, truth = _checked("crps_skill_score", forecast, truth, member_dim, ensemble=True)
    reference, _ = _checked("crps_skill_score (reference)", reference, truth, member_dim,
                            ensemble=False)
    dims = _dims("crps_skill_score", dim, truth)
    both = _valid(forecast, truth, member_dim) & _valid(reference, truth, member_dim)
    score = crps_pointwise(forecast, truth, member_dim).where(both).mean(dims, skipna=True)
    ref = crps_pointwise(reference, truth, member_dim).where(both).mean(dims, skipna=True)
    return 1.0 - score / ref


def ensemble_mean_rmse(forecast: xr.DataArray, truth: xr.DataArray, dim: Dims = None,
                       member_dim: str = "member") -> xr.DataArray:
    """RMSE of the ensemble mean: sqrt(mean over ``dim`` of (mean_m x_m - y)^2)."""
    forecast, truth = _checked("ensemble_mean_rmse", forecast, truth, member_dim, ensemble=True)
    dims = _dims("ensemble_mean_rmse", dim, truth)
    err = (forecast.mean(member_dim) - truth).where(_valid(forecast, truth, member_dim))
    return np.sqrt((err ** 2).mean(dims, skipna=True))


def ensemble_spread(forecast: xr.DataArray, truth: xr.DataArray, dim: Dims = None,
                    member_dim: str = "member") -> xr.DataArray:
    """sqrt(mean over ``dim`` of the ensemble variance with ddof=1), over the points where truth has coverage."""
    forecast, truth = _checked("ensemble_spread", forecast, truth, member_dim, ensemble=True)
    if _members(forecast, member_dim) < 2:
        raise ValueError(f"ensemble_spread: needs at least 2 members along {member_dim!r}, "
                         f"got {_members(forecast, member_dim)}")
    dims = _dims("ensemble_spread", dim, truth)
    var = forecast.var(member_dim, ddof=1).where(_valid(forecast, truth, member_dim))
    return np.sqrt(var.mean(dims, skipna=True))


def spread_skill_ratio(forecast: xr.DataArray, truth: xr.DataArray, dim: Dims = None,
                       member_dim: str = "member") -> xr.DataArray:
    """Spread/skill ratio with the finite-ensemble correction: sqrt((M + 1) / M) * spread / RMSE.

    For M members drawn from the same distribution as the truth (variance s^2), E[(mean_m x - y)^2] = s^2 (1 + 1/M)
    and E[var_m(x), ddof=1] = s^2, so the corrected ratio is 1 for a statistically consistent ensemble;
    below 1 means under-dispersive (over-confident), above 1 over-dispersive (Fortin et al. 2014).
    """
    spread = ensemble_spread(forecast, truth, dim, member_dim)
    rmse = ensemble_mean_rmse(forecast, truth, dim, member_dim)
    m = _members(forecast, member_dim)
    return np.sqrt((m + 1) / m) * spread / rmse


SPREAD_ERROR_MIN_MEMBERS = 4  # the spread-error curve splits the members into two halves of at least 2


def _spread_bins(var: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    """Bin index of every point and the number of bins: the points where all members agree (zero variance, e.g.
    dry in every member) form a bin of their own, the others `bins` equal-count bins.  Plain quantile edges
    collapse when most points tie at zero: the whole domain would fall into one bin."""
    agree = var <= 0
    rest = var[~agree]
    if not rest.size:
        return np.zeros(var.shape, dtype=int), 1
    edges = np.unique(np.quantile(rest, np.linspace(0, 1, bins + 1)))
    n_rest = max(len(edges) - 1, 1)
    which = np.clip(np.searchsorted(edges, var, side="right") - 1, 0, n_rest - 1)
    if not agree.any():
        return which, n_rest
    return np.where(agree, 0, which + 1), n_rest + 1


def spread_error_curve(forecast: xr.DataArray, truth: xr.DataArray, bins: int = 10,
                       member_dim: str = "member", min_share: float = 0.01) -> xr.Dataset:
    """Does the spread mean something: points binned by their ensemble spread (a bin of the points where all
    binning members agree, then equal-count bins), per bin the corrected spread sqrt((M + 1) / M) * sqrt(mean var)
    and the RMSE of the ensemble mean (a consistent ensemble lies on the diagonal), their count, and as attributes
    the correlation of the whole ensemble's spread with |error| over all points and ``max_relative_deviation`` =
    max |spread / RMSE - 1| over bins holding at least `min_share` of the points (a bin where all agree and all
    are right counts as on it).

    Binning by the very members whose spread is then measured selects points whose sample spread came out small:
    the lowest bin holds every point where all members happen to agree (dry in every member: spread exactly 0,
    while the truth still rains there as often as the forecast says), so even a consistent ensemble would leave
    the diagonal there, and its end bins by ~14 % for 20 members.  So the members are split into halves: the
    points are binned by one half's variance, the other half's spread and ensemble-mean error are measured in
    each bin (independent of the binning), the halves swap, and both are pooled.  For a consistent ensemble every
    bin then lies on the diagonal in expectation (tests/verify/test_metrics.py).
    """
    forecast, truth = _checked("spread_error_curve", forecast, truth, member_dim, ensemble=True)
    m = _members(forecast, member_dim)
    if m < SPREAD_ERROR_MIN_MEMBERS:
        raise ValueError(f"spread_error_curve: needs at least {SPREAD_ERROR_MIN_MEMBERS} members along "
                         f"{member_dim!r} (two halves of 2), got {m}")
    halves = [forecast.isel({member_dim: slice(0, m // 2)}), forecast.isel({member_dim: slice(m // 2, m)})]
    var = [h.var(member_dim, ddof=1).values.ravel() for h in halves]
    err = [(h.mean(member_dim) - truth).values.ravel() for h in halves]
    ok = np.isfinite(var[0]) & np.isfinite(var[1]) & np.isfinite(err[0]) & np.isfinite(err[1])
    var, err = [v[ok] for v in var], [e[ok] for e in err]
    which, n_bins = _spread_bins(np.concatenate(var), bins)
    by = np.split(which, 2)
    count, spread2, se = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    for binning, measured in ((0, 1), (1, 0)):
        size = halves[measured].sizes[member_dim]
        count += np.bincount(by[binning], minlength=n_bins)
        spread2 += (size + 1) / size * np.bincount(by[binning], weights=var[measured], minlength=n_bins)
        se += np.bincount(by[binning], weights=err[measured] ** 2, minlength=n_bins)
    whole_var = forecast.var(member_dim, ddof=1).values.ravel()[ok]
    whole_err = (forecast.mean(member_dim) - truth).values.ravel()[ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        spread, rmse = np.sqrt(spread2 / count), np.sqrt(se / count)
        corr = (float(np.corrcoef(np.sqrt(whole_var), np.abs(whole_err))[0, 1]) if whole_var.size > 1
                else float("nan"))
        dev = np.where((spread == 0) & (rmse == 0), 0.0, np.abs(spread / rmse - 1))
    count = (count / 2).astype(int)  # each point is counted once per half
    big = count >= min_share * max(count.sum(), 1)
    ds = xr.Dataset({"spread": ("bin", spread), "rmse": ("bin", rmse), "count": ("bin", count)})
    ds.attrs.update(correlation=corr, members=m,
                    max_relative_deviation=float(np.nanmax(dev[big])) if big.any() else float("nan"))
    return ds


def rank_histogram(forecast: xr.DataArray, truth: xr.DataArray, dim: Dims = None, member_dim: str = "member",
                   seed: int = 0) -> xr.DataArray:
    """Counts of the rank of the truth among the members (0 = below every member, M = above every member).

    Ties (e.g. zero rain in truth and several members) are broken at random, uniformly over the tied ranks, with a
    generator seeded by ``seed``, so a flat histogram is expected for a consistent ensemble even for such fields.
    """
    forecast, truth = _checked("rank_histogram", forecast, truth, member_dim, ensemble=True)
    dims = _dims("rank_histogram", dim, truth)
    below = (forecast < truth).sum(member_dim)
    tied = (forecast == truth).sum(member_dim)
    u = xr.DataArray(np.random.default_rng(seed).random(truth.shape), dims=truth.dims)
    rank = below + np.floor(u * (tied + 1)).astype(int)
    rank = rank.where(_valid(forecast, truth, member_dim), -1)
    counts = [(rank == r).sum(dims) for r in range(_members(forecast, member_dim) + 1)]
    return xr.concat(counts, dim="rank").assign_coords(rank=np.arange(len(counts))).rename("rank_histogram")


# ----------------------------------------------------------------------------------------------- probability scores
def exceedance_probability(forecast: xr.DataArray, threshold: float, member_dim: str = "member") -> xr.DataArray:
    """Fraction of members with value >= threshold (NaN where any member is NaN)."""
    if member_dim not in forecast.dims:
        raise ValueError(f"exceedance_probability: forecast has no ensemble dimension {member_dim!r} "
                         f"(its dims: {forecast.dims})")
    prob = (forecast >= threshold).mean(member_dim)
    return prob.where(forecast.notnull().all(member_dim))


def _event_probability(who: str, forecast: xr.DataArray, truth: xr.DataArray, threshold: float, dim: Dims,
                       member_dim: str) -> tuple[xr.DataArray, xr.DataArray, list[str]]:
    """(forecast probability, observed event as 0/1), both NaN where invalid, and the dims to reduce."""
    forecast, truth = _checked(who, forecast, truth, member_dim, ensemble=False)
    dims = _dims(who, dim, truth)
    valid = _valid(forecast, truth, member_dim)
    if member_dim in forecast.dims:
        prob = exceedance_probability(forecast, threshold, member_dim)
    else:
        bad = forecast.where((forecast < 0) | (forecast > 1))
        if bad.notnull().any():
            raise ValueError(f"{who}: forecast has no {member_dim!r} dimension so it must be a probability in "
                             f"[0, 1], but it ranges over [{float(forecast.min())}, {float(forecast.max())}]")
        prob = forecast
    event = (truth >= threshold).astype(float)
    return prob.where(valid), event.where(valid), dims


def brier_score(forecast: xr.DataArray, truth: xr.DataArray, threshold: float, dim: Dims = None,
                member_dim: str = "member") -> xr.DataArray:
    """Brier score mean((p - o)^2) for the event truth >= threshold."""
    prob, event, dims = _event_probability("brier_score", forecast, truth, threshold, dim, member_dim)
    return ((prob - event) ** 2).mean(dims, skipna=True)


def equal_probability_bins(bins: int) -> np.ndarray:
    """`bins` + 1 equal-width edges on [0, 1], each the double nearest its decimal (linspace gives 0.30000000000000004
    and 0.7000000000000001, so the shares 6 / 20 = 0.3 and 14 / 20 = 0.7 fell into the bin below theirs)."""
    return np.round(np.linspace(0.0, 1.0, bins + 1), 12)


def _bin_edges(who: str, bins: int | Sequence[float] | None, forecast: xr.DataArray, member_dim: str) -> np.ndarray:
    """Probability bin edges; by default one bin per possible ensemble probability k/M (or 10 equal bins)."""
    if bins is None:
        if member_dim in forecast.dims:
            m = _members(forecast, member_dim)
            return np.concatenate([[0.0], (np.arange(m) + 0.5) / m, [1.0]])
        bins = 10
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"{who}: bins must be a positive number of bins, got {bins}")
        return equal_probability_bins(bins)
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or edges[0] > 0 or edges[-1] < 1:
        raise ValueError(f"{who}: bin edges must increase strictly and cover [0, 1], got {list(edges)}")
    return edges


def reliability_diagram(forecast: xr.DataArray, truth: xr.DataArray, threshold: float,
                        bins: int | Sequence[float] | None = None, dim: Dims = None,
                        member_dim: str = "member") -> xr.Dataset:
    """Reliability-diagram data per probability bin: mean forecast probability, observed frequency, count.

    Bins include their left edge and exclude the right one, except the last, which includes 1. Empty bins give NaN
    probability and frequency with count 0.
    """
    who = "reliability_diagram"
    edges = _bin_edges(who, bins, forecast, member_dim)
    prob, event, dims = _event_probability(who, forecast, truth, threshold, dim, member_dim)
    index = xr.apply_ufunc(np.digitize, prob.fillna(-1.0), kwargs={"bins": edges[1:-1]}).where(prob.notnull(), -1)
    counts, psum, osum = [], [], []
    for k in range(edges.size - 1):
        inside = index == k
        counts.append(inside.sum(dims))
        psum.append(prob.where(inside).sum(dims))
        osum.append(event.where(inside).sum(dims))
    count = xr.concat(counts, "bin")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = xr.Dataset({
            "forecast_probability": xr.concat(psum, "bin") / count.where(count > 0),
            "observed_frequency": xr.concat(osum, "bin") / count.where(count > 0),
            "count": count,
        })
    return out.assign_coords(bin=np.arange(edges.size - 1), bin_lower=("bin", edges[:-1]),
                             bin_upper=("bin", edges[1:]))


def brier_decomposition(forecast: xr.DataArray, truth: xr.DataArray, threshold: float,
                        bins: int | Sequence[float] | None = None, dim: Dims = None,
                        member_dim: str = "member") -> xr.Dataset:
    """Murphy (1973) decomposition BS = reliability - resolution + uncertainty over probability bins.

    reliability = sum_k n_k (p_k - o_k)^2 / N, resolution = sum_k n_k (o_k - o)^2 / N, uncertainty = o (1 - o),
    with p_k, o_k the bin's mean probability and observed frequency and o the base rate. The identity is exact when
    the probability is constant within each bin (the default bins for an ensemble: one per k/M); with coarser bins
    the returned ``brier`` differs from reliability - resolution + uncertainty by the within-bin terms.
    """
    diagram = reliability_diagram(forecast, truth, threshold, bins, dim, member_dim)
    prob, event, dims = _event_probability("brier_decomposition", forecast, truth, threshold, dim, member_dim)
    n = diagram["count"].sum("bin")
    base_rate = event.mean(dims, skipna=True)
    weight = diagram["count"] / n
    rel = (weight * (diagram["forecast_probability"] - diagram["observed_frequency"]) ** 2).fillna(0).sum("bin")
    res = (weight * (diagram["observed_frequency"] - base_rate) ** 2).fillna(0).sum("bin")
    return xr.Dataset({
        "brier": ((prob - event) ** 2).mean(dims, skipna=True),
        "reliability": rel,
        "resolution": res,
        "uncertainty": base_rate * (1 - base_rate),
        "base_rate": base_rate,
    })


def roc_curve(forecast: xr.DataArray, truth: xr.DataArray, threshold: float,
              levels: Sequence[float] | None = None, dim: Dims = None, member_dim: str = "member") -> xr.Dataset:
    """Probability of detection and of false detection when warning at forecast probability >= each level.

    Levels default to every ensemble probability k/M, k = 1..M (the exact curve for an ensemble), or 0.01..1 in
    steps of 0.01 for a probability field. The end points (1, 1) and (0, 0) are added (levels 0 and inf).
    Probabilities within 1e-9 below a level count as reaching it, so k/M computed two ways compare equal.
    """
    who = "roc_curve"
    prob, event, dims = _event_probability(who, forecast, truth, threshold, dim, member_dim)
    if levels is None:
        m = _members(forecast, member_dim) if member_dim in forecast.dims else 100
        levels = np.arange(1, m + 1) / m
    levels = np.concatenate([[0.0], np.sort(np.asarray(levels, dtype=float)), [np.inf]])
    events = event.sum(dims)
    non_events = (1 - event).sum(dims)
    pod, pofd = [], []
    for level in levels:
        warned = prob >= level - 1e-9
        pod.append(event.where(warned).sum(dims) / events)
        pofd.append((1 - event).where(warned).sum(dims) / non_events)
    return xr.Dataset({"pod": xr.concat(pod, "level"), "pofd": xr.concat(pofd, "level")}).assign_coords(level=levels)


def roc_auc(forecast: xr.DataArray, truth: xr.DataArray, threshold: float,
            levels: Sequence[float] | None = None, dim: Dims = None, member_dim: str = "member") -> xr.DataArray:
    """Area under the ROC curve (trapezoids), 0.5 for no skill, 1 for perfect discrimination.

    With levels at every distinct forecast probability this equals the Mann-Whitney statistic
    P(p_event > p_non-event) + P(equal) / 2. NaN where the sample has no events or no non-events.
    """
    curve = roc_curve(forecast, truth, threshold, levels, dim, member_dim)
    pod, pofd = curve["pod"], curve["pofd"]
    widths = pofd - pofd.shift(level=-1)
    heights = (pod + pod.shift(level=-1)) / 2
    return (widths * heights).isel(level=slice(None, -1)).sum("level", skipna=False).rename("roc_auc")


# --------------------------------------------------------------------------------------------------- spatial scores
def fractions_skill_score(forecast: xr.DataArray, truth: xr.DataArray, thresholds: float | Sequence[float],
                          scales: int | Sequence[int], dim: Dims = None, spatial_dims: tuple[str, str] = ("y", "x"),
                          member_dim: str = "member") -> xr.DataArray:
    """Fractions Skill Score (Roberts & Lean 2008) for each threshold and square neighbourhood size (grid points).

    Event fractions come from a moving average with zero padding outside the domain, as in
    ``pysteps.verification.spatialscores.fss``, which this equals for one field without missing values. For an
    ensemble the forecast fraction is the neighbourhood ensemble probability (mean of the members' fractions).
    Points where truth has no coverage count as non-events in both fields and are left out of the sums. Sums run over
    the spatial dims and ``dim`` (default: every other dimension), so the result has dims (threshold, scale, rest);
    a scalar threshold or scale drops its dimension. NaN where neither field has an event.
    """
    parts = fss_sums(forecast, truth, thresholds, scales, dim, spatial_dims, member_dim)
    return (1.0 - parts["numerator"] / parts["denominator"].where(parts["denominator"] > 0)).rename(
        "fractions_skill_score")


def fss_sums(forecast: xr.DataArray, truth: xr.DataArray, thresholds: float | Sequence[float],
             scales: int | Sequence[int], dim: Dims = None, spatial_dims: tuple[str, str] = ("y", "x"),
             member_dim: str = "member") -> xr.Dataset:
    """The sums FSS is made of: ``numerator`` = sum (f - o)^2 and ``denominator`` = sum f^2 + sum o^2 of the
    neighbourhood fractions (see `fractions_skill_score`, which is 1 - numerator / denominator).  Being sums, they
    add over cases: summed over the spatial dims only, they give each case's share of a pooled FSS."""
    who = "fractions_skill_score"
    ensemble = member_dim in forecast.dims
    forecast, truth = _checked(who, forecast, truth, member_dim, ensemble=False)
    for d in spatial_dims:
        if d not in truth.dims:
            raise ValueError(f"{who}: spatial dim {d!r} not in truth dims {truth.dims}")
    dims = sorted(set(_dims(who, dim, truth)) | set(spatial_dims), key=truth.dims.index)
    thresholds, one_threshold = _as_list(thresholds)
    scales, one_scale = _as_list(scales)
    if not scales or any(int(s) != s or s < 1 for s in scales):
        raise ValueError(f"{who}: scales must be positive neighbourhood sizes in grid points, got {scales}")
    valid = _valid(forecast, truth, member_dim)
    order = list(truth.dims)
    numerators, denominators = [], []
    for thr in thresholds:
        f_event = forecast >= thr
        f_event = f_event.mean(member_dim) if ensemble else f_event.astype(float)
        f_event = f_event.where(valid, 0.0).transpose(*order)
        o_event = (truth >= thr).astype(float).where(valid, 0.0).transpose(*order)
        per_scale = []
        for scale in scales:
            size = [int(scale) if d in spatial_dims else 1 for d in order]
            sf = f_event.copy(data=uniform_filter(f_event.values, size=size, mode="constant", cval=0.0))
            so = o_event.copy(data=uniform_filter(o_event.values, size=size, mode="constant", cval=0.0))
            sf, so = sf.where(valid), so.where(valid)
            per_scale.append((((sf - so) ** 2).sum(dims), (sf ** 2).sum(dims) + (so ** 2).sum(dims)))
        numerators.append(xr.concat([n for n, _ in per_scale], "scale"))
        denominators.append(xr.concat([d for _, d in per_scale], "scale"))
    out = xr.Dataset({"numerator": xr.concat(numerators, "threshold"),
                      "denominator": xr.concat(denominators, "threshold")})
    out = out.assign_coords(threshold=thresholds, scale=[int(s) for s in scales])
    if one_threshold:
        out = out.squeeze("threshold", drop=True)
    if one_scale:
        out = out.squeeze("scale", drop=True)
    return out


# ----------------------------------------------------------------------------------------------- categorical scores
def contingency_scores(forecast: xr.DataArray, truth: xr.DataArray, thresholds: float | Sequence[float],
                       dim: Dims = None, member_dim: str = "member") -> xr.Dataset:
    """2x2 contingency table of the events value >= threshold, and POD, FAR (false-alarm ratio), CSI, frequency bias.

    ``forecast`` is a deterministic field (e.g. the ensemble mean or one member); if it has ``member_dim``, the
    members are pooled into one table unless ``dim`` leaves ``member_dim`` out (then one table per member).
    Scores whose denominator is zero are NaN. A scalar threshold drops the threshold dimension.
    """
    who = "contingency_scores"
    forecast, truth = _checked(who, forecast, truth, member_dim, ensemble=False)
    if dim is None:
        dims = list(forecast.dims)
    else:
        dims = [dim] if isinstance(dim, str) else list(dim)
        unknown = [d for d in dims if d not in forecast.dims]
        if unknown:
            raise ValueError(f"{who}: cannot reduce over {unknown}: not dimensions of forecast {forecast.dims}")
    thresholds, one_threshold = _as_list(thresholds)
    valid = forecast.notnull() & truth.notnull()
    tables = []
    for thr in thresholds:
        f, o = (forecast >= thr) & valid, (truth >= thr) & valid
        tables.append(xr.Dataset({
            "hits": (f & o).sum(dims),
            "misses": (~f & o).sum(dims),
            "false_alarms": (f & ~o).sum(dims),
            "correct_negatives": (~f & ~o & valid).sum(dims),
        }))
    table = xr.concat(tables, "threshold").assign_coords(threshold=thresholds)
    if one_threshold:
        table = table.squeeze("threshold", drop=True)
    hits, misses, fa = table["hits"], table["misses"], table["false_alarms"]

    def ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
        return num / den.where(den > 0)

    return table.assign(
        pod=ratio(hits, hits + misses),
        far=ratio(fa, hits + fa),
        csi=ratio(hits, hits + misses + fa),
        frequency_bias=ratio(hits + fa, hits + misses),
    )
