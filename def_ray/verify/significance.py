"""How sure a difference between two methods is: intervals from resampling the init times.

The tiles of one init time share their weather, so the cases are resampled in whole init times (a block bootstrap),
as the reliability intervals are (def_ray.verify.calibration).  Scores pooled over the cases are made of per-case
sums (CRPS: a mean over every point; FSS: one minus a ratio of sums), so a resample is a reweighting of those sums
and the two methods are always compared on the same resampled cases (a paired comparison): weather that is hard
for both moves both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from def_ray.verify import metrics
from def_ray.verify.report import json_number

__all__ = ["resample_weights", "interval", "compare_to_baselines", "comparison_section"]

SPATIAL = ("y", "x")


def resample_weights(groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, case) weights: how often each resample draws each case, cases of one group drawn together."""
    unit = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    n_unit = int(unit.max()) + 1 if unit.size else 0
    if n_unit == 0:
        raise ValueError("no cases to resample")
    counts = np.random.default_rng(seed).multinomial(n_unit, np.full(n_unit, 1.0 / n_unit), size=n_boot)
    return counts[:, unit].astype("float64")


def interval(samples: np.ndarray, level: float = 0.9) -> list[float | None]:
    """The central `level` interval of resampled values (NaN resamples left out); None where there are none."""
    finite = np.asarray(samples, dtype="float64")
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return [None, None]
    return [float(np.quantile(finite, (1 - level) / 2)), float(np.quantile(finite, (1 + level) / 2))]


def _crps_sums(a: xr.DataArray, b: xr.DataArray) -> np.ndarray:
    """(case, 2): two methods' sums of pointwise CRPS (NaN where invalid) over the points valid for both."""
    both = a.notnull() & b.notnull()
    return np.stack([x.where(both).sum(SPATIAL).values for x in (a, b)], axis=1)


def _fss_parts(forecast: xr.DataArray, truth: xr.DataArray, thresholds: Sequence[float], scale: int) -> np.ndarray:
    """(threshold, case, 2): each case's FSS numerator and denominator."""
    sums = metrics.fss_sums(forecast, truth, list(thresholds), scale, dim=list(SPATIAL))
    return np.stack([sums["numerator"].transpose("threshold", "case").values,
                     sums["denominator"].transpose("threshold", "case").values], axis=-1)


def _fss(sums: np.ndarray) -> np.ndarray:
    """FSS from (..., numerator, denominator) sums."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - sums[..., 0] / np.where(sums[..., 1] > 0, sums[..., 1], np.nan)


def compare_to_baselines(forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray, baselines: Sequence[str],
                         thresholds: Sequence[float], scale: int, groups: np.ndarray, level: float = 0.9,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every method that is not a baseline against every baseline present, per lead: the CRPS ratio (method /
    baseline, on the points valid for both) and the FSS difference (method - baseline) per threshold at one
    neighbourhood `scale`, each as [value, lower, upper] with the `level` interval of the paired resamples.

    Returns {method: {lead: {baseline: {"crps_ratio": [...], "fss_difference": {threshold: [...]}}}}}."""
    weights = resample_weights(groups, n_boot, seed)
    present = [b for b in baselines if b in forecasts]
    models = [name for name in forecasts if name not in present] if present else []
    out: dict[str, Any] = {name: {} for name in models}
    for lead in truth.lead.values if models else []:
        t = truth.sel(lead=lead)
        # each method's pointwise CRPS and per-case FSS sums, once a lead
        parts = {name: (metrics.crps_pointwise(fc.sel(lead=lead), t), _fss_parts(fc.sel(lead=lead), t, thresholds,
                                                                                   scale))
                 for name, fc in forecasts.items()}
        for name in models:
            crps, fss_parts = parts[name]
            rows = {}
            for base in present:
                base_crps, theirs = parts[base]
                sums = _crps_sums(crps, base_crps)  # (case, 2)
                totals = weights @ sums  # (boot, 2)
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio, boot_ratio = sums[:, 0].sum() / sums[:, 1].sum(), totals[:, 0] / totals[:, 1]
                fss = {}
                for k, thr in enumerate(thresholds):
                    diff = _fss(fss_parts[k].sum(0)) - _fss(theirs[k].sum(0))
                    boot = (_fss(np.einsum("bc,cs->bs", weights, fss_parts[k]))
                            - _fss(np.einsum("bc,cs->bs", weights, theirs[k])))
                    fss[str(thr)] = [json_number(diff), *interval(boot, level)]
                rows[base] = {"crps_ratio": [json_number(ratio), *interval(boot_ratio, level)],
                              "fss_difference": fss}
            out[name][int(lead)] = rows
    return {"level": level, "scale": int(scale), "resamples": n_boot, "units": int(np.unique(groups).size),
            "methods": out}


def comparison_section(comparison: Mapping[str, Any], scale_label: str) -> str:
    """The report's section: one row per method, lead and baseline."""
    methods = comparison["methods"]
    thresholds = next((list(rows[b]["fss_difference"]) for per in methods.values() for rows in per.values()
                       for b in rows), [])
    if not thresholds:
        return ""
    pct = f"{comparison['level']:.0%}"
    lines = ["## Differences against the baselines", "",
             f"CRPS ratio (method / baseline, on the points valid for both) and FSS difference (method - baseline) at "
             f"{scale_label}, each with its {pct} interval from resampling the {comparison['units']} init times "
             f"(the tiles of one hour together, both methods on the same resamples). An interval that holds 1 (ratio) "
             f"or 0 (difference) is a difference these cases cannot tell from chance.", "",
             "| method | lead | baseline | CRPS ratio | " + " | ".join(f"FSS≥{t} difference" for t in thresholds) + " |",
             "|---|---|---|---|" + "---|" * len(thresholds)]

    def cell(v: list[float | None], signed: bool = False) -> str:
        if v[0] is None:
            return "–"
        fmt = "{:+.3f}" if signed else "{:.3f}"
        rng = "" if v[1] is None else f" ({fmt.format(v[1])} .. {fmt.format(v[2])})"
        return fmt.format(v[0]) + rng

    for name, per in methods.items():
        for lead, rows in per.items():
            for base, r in rows.items():
                lines.append(f"| {name} | {lead} | {base} | {cell(r['crps_ratio'])} | "
                             + " | ".join(cell(r["fss_difference"][t], signed=True) for t in thresholds) + " |")
    return "\n".join(lines) + "\n"
