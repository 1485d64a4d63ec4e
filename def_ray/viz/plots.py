"""Verification plots: reliability diagram, rank histogram, spread/skill, FSS vs scale, power spectra, CRPS by lead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from def_ray.verify import metrics  # noqa: E402
from def_ray.verify.calibration import calibrated_deviations  # noqa: E402
from def_ray.verify.spectra import radial_power_spectrum  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure(nrows: int, ncols: int, w: float, h: float, **kw):
    return plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained", **kw)


def _ensembles(forecasts: Mapping[str, xr.DataArray], min_members: int = 2) -> dict[str, xr.DataArray]:
    return {k: v for k, v in forecasts.items() if v.sizes["member"] >= min_members}


def _event(truth: xr.DataArray, thr: float) -> str:
    """'qpe_01h ≥ 2.5 mm': the verified variable, not a fixed one."""
    units = truth.attrs.get("units")
    return f"{truth.name or 'value'} ≥ {thr:g}" + (f" {units}" if units else "")


def _leads(truth: xr.DataArray, most: int = 4) -> list:
    """The leads the data is for (at most `most`, first and last always among them)."""
    leads = list(truth["lead"].values) if "lead" in truth.coords else [1]
    if len(leads) <= most:
        return leads
    pick = np.unique(np.round(np.linspace(0, len(leads) - 1, most)).astype(int))
    return [leads[k] for k in pick]


def lead_label(lead, step_minutes: float | None = None) -> str:
    """'lead 2' (steps), or 'lead +2 h' / 'lead +20 min' given the step's length."""
    if step_minutes is None:
        return f"lead {int(lead) if float(lead).is_integer() else lead}"
    minutes = float(lead) * float(step_minutes)
    return f"lead +{minutes / 60:g} h" if minutes % 60 == 0 else f"lead +{minutes:g} min"


def _at(da: xr.DataArray, lead) -> xr.DataArray:
    return da.sel(lead=lead) if "lead" in da.dims else da


def climatology(truth: xr.DataArray, thr: float) -> float:
    """Observed base rate of the event (points without coverage left out)."""
    t = truth.values
    ok = np.isfinite(t)
    return float((t[ok] >= thr).mean()) if ok.any() else float("nan")


def reliability_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray,
                     thresholds: Sequence[float], lead=None, step_minutes: float | None = None) -> Path:
    """Reliability diagram per threshold at one lead (default: the first of the data): diagonal, climatology
    (horizontal and vertical) and the no-skill line halfway between climatology and the diagonal (points above it
    add to the Brier skill score), and below it the sharpness histogram: how often each probability was forecast.

    Each ensemble's points carry a bar: where 90 % of the observed frequencies would fall if that ensemble were
    calibrated, on the same cases (each member scored as the truth against the others,
    def_ray.verify.calibration.member_as_truth). A point outside its bar is miscalibration, not the few cases."""
    lead = _leads(truth)[0] if lead is None else lead
    t = _at(truth, lead)
    fig, axes = _figure(2, len(thresholds), 4.2, 2.4, gridspec_kw={"height_ratios": [2.2, 1]}, sharex="col")
    for col, thr in enumerate(thresholds):
        ax, hx = axes[0, col], axes[1, col]
        clim = climatology(t, thr)
        ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
        if np.isfinite(clim):
            ax.axhline(clim, color="0.5", lw=0.8, ls="--", label=f"climatology ({clim:.3f})")
            ax.axvline(clim, color="0.5", lw=0.8, ls="--")
            ax.plot([0, 1], [clim / 2, (1 + clim) / 2], color="0.3", lw=0.8, ls="-.", label="no skill")
            # where a point adds to the Brier skill score: below the no-skill line left of climatology, above it right
            ax.fill_between([0, clim], [0, 0], [clim / 2, clim], color="0.92", zorder=0)
            ax.fill_between([clim, 1], [clim, (1 + clim) / 2], [1, 1], color="0.92", zorder=0)
        edges = None
        for name, fc in _ensembles(forecasts).items():
            rd = metrics.reliability_diagram(_at(fc, lead), t, thr, bins=10)
            ok = rd["count"].values > 0
            x = rd["forecast_probability"].values
            line, = ax.plot(x[ok], rd["observed_frequency"].values[ok], "o-", ms=4, label=name)
            if fc.sizes["member"] >= 3:  # scoring a member against the others needs two others
                lo, hi = _calibrated_band(_at(fc, lead), t, thr, np.where(ok, x, 0.0), rd.sizes["bin"])
                bar = ok & np.isfinite(lo)
                ax.vlines(x[bar], (x + lo)[bar].clip(0, 1), (x + hi)[bar].clip(0, 1), color=line.get_color(), lw=3,
                          alpha=0.3, label=f"{name}: 90 % if calibrated")
            edges = np.append(rd["bin_lower"].values, rd["bin_upper"].values[-1])
            hx.stairs(rd["count"].values, edges, color=line.get_color(), lw=1.2, label=name)
        ax.set(title=f"{_event(truth, thr)}, {lead_label(lead, step_minutes)}", ylabel="observed frequency",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="upper left")
        hx.set_yscale("log")
        hx.set(xlabel="forecast probability", ylabel="count (sharpness)", xlim=(0, 1))
    return _save(fig, path)


def _calibrated_band(forecast: xr.DataArray, truth: xr.DataArray, threshold: float, at: np.ndarray,
                     bins: int) -> tuple[np.ndarray, np.ndarray]:
    """At the probabilities `at`, the 5 % and 95 % of (observed frequency - forecast probability) over the
    member-as-truth draws (def_ray.verify.calibration.calibrated_deviations)."""
    import warnings

    members = forecast.transpose("member", *truth.dims).values
    signed = calibrated_deviations(members, threshold, at, valid=np.isfinite(truth.values), bins=bins)
    with warnings.catch_warnings():  # no draw with a point: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(signed, 0.05, axis=0), np.nanquantile(signed, 0.95, axis=0)


def rank_histogram_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    ens = _ensembles(forecasts)
    fig, axes = _figure(1, max(len(ens), 1), 4, 3.5)
    for ax, (name, fc) in zip(axes[0], ens.items()):
        rh = metrics.rank_histogram(fc, truth)
        freq = rh / rh.sum()
        ax.bar(np.arange(freq.size), freq.values, width=1.0)
        ax.axhline(1 / freq.size, color="k", ls=":")
        ax.set(title=name, xlabel="rank of truth", ylabel="frequency")
    return _save(fig, path)


def spread_skill_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    leads = truth.lead.values
    for name, fc in _ensembles(forecasts).items():
        rmse = [float(metrics.ensemble_mean_rmse(fc.sel(lead=lead), truth.sel(lead=lead))) for lead in leads]
        spread = [float(metrics.ensemble_spread(fc.sel(lead=lead), truth.sel(lead=lead))) for lead in leads]
        line, = ax.plot(leads, rmse, "o-", label=f"{name} RMSE")
        ax.plot(leads, spread, "s--", color=line.get_color(), label=f"{name} spread")
    ax.set(xlabel="lead (steps)", ylabel=str(truth.attrs.get("units", "")), title="spread vs skill")
    ax.legend(fontsize=8)
    return _save(fig, path)


def spread_error_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray,
                      step_minutes: float | None = None) -> Path:
    """Binned spread against the RMSE of the ensemble mean in each bin, one panel per lead of the data: on the
    diagonal, spread means what it says.  Log axes with equal scales (the bins span light to heavy rain, and the
    diagonal stays at 45 degrees); the shaded band is spread within 20 % of the RMSE (|spread / RMSE - 1| <= 0.2)."""
    leads = _leads(truth)
    fig, axes = _figure(1, len(leads), 4.6, 4.6)
    units = truth.attrs.get("units", "")
    for ax, lead in zip(axes[0], leads):
        values = []
        for name, fc in _ensembles(forecasts, metrics.SPREAD_ERROR_MIN_MEMBERS).items():
            c = metrics.spread_error_curve(_at(fc, lead), _at(truth, lead))
            ax.plot(c["spread"], c["rmse"], "o-", label=f"{name} (r = {c.attrs['correlation']:.2f})")
            values += [v for v in (*c["spread"].values, *c["rmse"].values) if np.isfinite(v) and v > 0]
        lo, hi = (min(values) / 1.5, max(values) * 1.5) if values else (1e-2, 1.0)
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(line, line / 1.2, line / 0.8, color="0.85", lw=0, label="within 20 %")
        ax.plot(line, line, "k:", lw=1, label="consistent")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
               xlabel=f"ensemble spread ({units})", ylabel=f"RMSE of the ensemble mean ({units})",
               title=f"spread-error, {lead_label(lead, step_minutes)}\n(bins from half the members)")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1, 2, 5 x 10^k; no crowded minor labels
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
    return _save(fig, path)


def _km(km_per_pixel: float | None, truth: xr.DataArray) -> float | None:
    if km_per_pixel is not None:
        return float(km_per_pixel)
    v = truth.attrs.get("km_per_pixel")
    return float(v) if v is not None else None


def fss_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray, thresholds: Sequence[float],
             scales: Sequence[int], km_per_pixel: float | None = None, step_minutes: float | None = None) -> Path:
    """FSS against the neighbourhood's width in km (scale x km_per_pixel; grid points when the spacing is not
    known), one row per lead of the data, one column per threshold, with the useful-skill line 0.5 + f0 / 2."""
    km = _km(km_per_pixel, truth)
    width = np.asarray(list(scales), float) * (km if km else 1.0)
    leads = _leads(truth)
    fig, axes = _figure(len(leads), len(thresholds), 4.2, 3.4)
    for row, lead in enumerate(leads):
        t = _at(truth, lead)
        for ax, thr in zip(axes[row], thresholds):
            for name, fc in forecasts.items():
                fss = metrics.fractions_skill_score(_at(fc, lead), t, thr, list(scales))
                ax.plot(width, fss.values, "o-", label=name)
            f0 = climatology(t, thr)
            if np.isfinite(f0):
                ax.axhline(0.5 + f0 / 2, color="0.5", lw=0.8, ls="--", label="useful (0.5 + f0/2)")
            ax.set(title=f"FSS, {_event(truth, thr)}, {lead_label(lead, step_minutes)}",
                   xlabel="neighbourhood width (km)" if km else "neighbourhood width (grid points)", ylabel="FSS",
                   ylim=(0, 1))
            ax.legend(fontsize=7)
    return _save(fig, path)


def spectra_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray,
                 km_per_pixel: float | None = None, step_minutes: float | None = None) -> Path:
    km = _km(km_per_pixel, truth) or 3.0
    leads = _leads(truth)
    fig, axes = _figure(1, len(leads), 4.8, 4)
    fill = float(np.nanmin(truth.values))
    for ax, lead in zip(axes[0], leads):
        t = radial_power_spectrum(_at(truth, lead), grid_spacing_km=km, fill_value=fill)
        ax.loglog(t["wavelength_km"], t, "k-", lw=2, label="truth")
        for name, fc in forecasts.items():
            s = radial_power_spectrum(_at(fc, lead), grid_spacing_km=km, fill_value=fill)
            ax.loglog(s["wavelength_km"], s, label=name)
        ax.invert_xaxis()
        ax.set(xlabel="wavelength (km)", ylabel="power",
               title=f"radially averaged power spectrum, {lead_label(lead, step_minutes)}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def crps_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    leads = truth.lead.values
    for name, fc in forecasts.items():
        ax.plot(leads, [float(metrics.crps(fc.sel(lead=lead), truth.sel(lead=lead))) for lead in leads], "o-",
                label=name)
    ax.set(xlabel="lead (steps)", ylabel="CRPS", title="CRPS by lead (lower is better)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def verification_plots(out: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray,
                       thresholds: Sequence[float], scales: Sequence[int], *, km_per_pixel: float | None = None,
                       step_minutes: float | None = None) -> dict[str, Path]:
    """Every verification plot. km_per_pixel (verify.km_per_pixel) puts FSS scales and spectra in km; without it,
    truth.attrs["km_per_pixel"] if present, else FSS in grid points and spectra at 3 km. step_minutes labels leads
    in hours/minutes instead of steps."""
    out = Path(out)
    paths = {
        "crps_by_lead": crps_plot(out / "crps_by_lead.png", forecasts, truth),
        "fss": fss_plot(out / "fss_vs_scale.png", forecasts, truth, thresholds, scales, km_per_pixel, step_minutes),
        "spectra": spectra_plot(out / "power_spectra.png", forecasts, truth, km_per_pixel, step_minutes),
    }
    if _ensembles(forecasts):
        paths["reliability"] = reliability_plot(out / "reliability.png", forecasts, truth, thresholds,
                                                step_minutes=step_minutes)
        paths["rank_histogram"] = rank_histogram_plot(out / "rank_histogram.png", forecasts, truth)
        paths["spread_skill"] = spread_skill_plot(out / "spread_skill.png", forecasts, truth)
        paths["spread_error"] = spread_error_plot(out / "spread_error.png", forecasts, truth, step_minutes)
    return paths
