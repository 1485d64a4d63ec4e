"""Verification plots: reliability diagram, rank histogram, spread/skill, FSS vs scale, power spectra, CRPS by lead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from def_ray.verify import metrics  # noqa: E402
from def_ray.verify.spectra import radial_power_spectrum  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ensembles(forecasts: Mapping[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    return {k: v for k, v in forecasts.items() if v.sizes["member"] > 1}


def _event(truth: xr.DataArray, thr: float) -> str:
    """'qpe_01h ≥ 2.5 mm': the verified variable, not a fixed one."""
    units = truth.attrs.get("units")
    return f"{truth.name or 'value'} ≥ {thr:g}" + (f" {units}" if units else "")


def reliability_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray,
                     thresholds: Sequence[float]) -> Path:
    fig, axes = plt.subplots(1, len(thresholds), figsize=(4 * len(thresholds), 4), squeeze=False)
    for ax, thr in zip(axes[0], thresholds):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for name, fc in _ensembles(forecasts).items():
            rd = metrics.reliability_diagram(fc, truth, thr, bins=10)
            ok = rd["count"] > 0
            ax.plot(rd["forecast_probability"][ok], rd["observed_frequency"][ok], "o-", label=name)
        ax.set(title=_event(truth, thr), xlabel="forecast probability", ylabel="observed frequency", xlim=(0, 1),
               ylim=(0, 1))
        ax.legend(fontsize=8)
    return _save(fig, path)


def rank_histogram_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    ens = _ensembles(forecasts)
    fig, axes = plt.subplots(1, max(len(ens), 1), figsize=(4 * max(len(ens), 1), 3.5), squeeze=False)
    for ax, (name, fc) in zip(axes[0], ens.items()):
        rh = metrics.rank_histogram(fc, truth)
        freq = rh / rh.sum()
        ax.bar(np.arange(freq.size), freq.values, width=1.0)
        ax.axhline(1 / freq.size, color="k", ls=":")
        ax.set(title=name, xlabel="rank of truth", ylabel="frequency")
    return _save(fig, path)


def spread_skill_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    leads = truth.lead.values
    for name, fc in _ensembles(forecasts).items():
        rmse = [float(metrics.ensemble_mean_rmse(fc.sel(lead=lead), truth.sel(lead=lead))) for lead in leads]
        spread = [float(metrics.ensemble_spread(fc.sel(lead=lead), truth.sel(lead=lead))) for lead in leads]
        line, = ax.plot(leads, rmse, "o-", label=f"{name} RMSE")
        ax.plot(leads, spread, "s--", color=line.get_color(), label=f"{name} spread")
    ax.set(xlabel="lead (steps)", ylabel=str(truth.attrs.get("units", "")), title="spread vs skill")
    ax.legend(fontsize=8)
    return _save(fig, path)


def spread_error_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    """Binned spread against the RMSE of the ensemble mean in each bin, lead 1: on the diagonal, spread means
    what it says."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    top = 0.0
    for name, fc in _ensembles(forecasts).items():
        c = metrics.spread_error_curve(fc.isel(lead=0), truth.isel(lead=0))
        ax.plot(c["spread"], c["rmse"], "o-", label=f"{name} (r = {c.attrs['correlation']:.2f})")
        top = max(top, float(np.nanmax(c["spread"])), float(np.nanmax(c["rmse"])))
    ax.plot([0, top], [0, top], "k:", lw=1, label="consistent")
    units = truth.attrs.get("units", "")
    ax.set(xlabel=f"ensemble spread ({units})", ylabel=f"RMSE of the ensemble mean ({units})",
           title="spread-error, lead 1 (10 equal-count bins)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def fss_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray, thresholds: Sequence[float],
             scales: Sequence[int]) -> Path:
    fig, axes = plt.subplots(1, len(thresholds), figsize=(4 * len(thresholds), 3.5), squeeze=False)
    for ax, thr in zip(axes[0], thresholds):
        for name, fc in forecasts.items():
            fss = metrics.fractions_skill_score(fc.isel(lead=0), truth.isel(lead=0), thr, list(scales))
            ax.plot(list(scales), fss.values, "o-", label=name)
        ax.set(title=f"FSS, {_event(truth, thr)}, lead 1", xlabel="neighbourhood (grid points)", ylabel="FSS",
               ylim=(0, 1))
        ax.legend(fontsize=8)
    return _save(fig, path)


def spectra_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    t = radial_power_spectrum(truth.isel(lead=0), fill_value=float(np.nanmin(truth.values)))
    ax.loglog(t["wavelength_km"], t, "k-", lw=2, label="truth")
    for name, fc in forecasts.items():
        s = radial_power_spectrum(fc.isel(lead=0), fill_value=float(np.nanmin(truth.values)))
        ax.loglog(s["wavelength_km"], s, label=name)
    ax.invert_xaxis()
    ax.set(xlabel="wavelength (km)", ylabel="power", title="radially averaged power spectrum, lead 1")
    ax.legend(fontsize=8)
    return _save(fig, path)


def crps_plot(path: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    leads = truth.lead.values
    for name, fc in forecasts.items():
        ax.plot(leads, [float(metrics.crps(fc.sel(lead=lead), truth.sel(lead=lead))) for lead in leads], "o-",
                label=name)
    ax.set(xlabel="lead (steps)", ylabel="CRPS", title="CRPS by lead (lower is better)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def verification_plots(out: Path, forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray,
                       thresholds: Sequence[float], scales: Sequence[int]) -> dict[str, Path]:
    out = Path(out)
    paths = {
        "crps_by_lead": crps_plot(out / "crps_by_lead.png", forecasts, truth),
        "fss": fss_plot(out / "fss_vs_scale.png", forecasts, truth, thresholds, scales),
        "spectra": spectra_plot(out / "power_spectra.png", forecasts, truth),
    }
    if _ensembles(forecasts):
        paths["reliability"] = reliability_plot(out / "reliability.png", forecasts, truth, thresholds)
        paths["rank_histogram"] = rank_histogram_plot(out / "rank_histogram.png", forecasts, truth)
        paths["spread_skill"] = spread_skill_plot(out / "spread_skill.png", forecasts, truth)
        paths["spread_error"] = spread_error_plot(out / "spread_error.png", forecasts, truth)
    return paths
