"""The forecast's exceedance probabilities and ensemble mean as GRIB2, the format forecasters' tools ingest.

One message per target x lead for the ensemble mean, then one per threshold for the probabilities, all with the
reference time = the forecast's init time (significance "start of forecast") and the lead as forecast time (hours,
or minutes when a lead is not whole hours).  Templates:
- probabilities: 4.5 (probability forecast at a point in time), or 4.9 (the same over a time interval) for a
  variable that is an accumulation (ACCUMULATION_HOURS: qpe_01h is the hour ending at the valid time);
  probabilityType 3 (above the lower limit), the threshold as the scaled lower limit in the variable's GRIB units
  (the lexicon's units are its GRIB parameter's units), forecastProbabilityNumber / totalNumberOfForecastProbabilities
  = the threshold's rank / the number of thresholds.  Values in percent (0-100), as NCEP's probability products
  (HREF, NBM, SREF) and MRMS's probability products are.  4.5/4.9 have no field for the ensemble size: the mean's
  messages carry it.
- the mean: 4.2 (derived forecast 0 = unweighted mean of all members, numberOfForecastsInEnsemble = the members),
  or 4.12 (the same over a time interval) for an accumulation.
The grid: the forecast's Lambert grid mapping (template 3.30, an HRRR crop) or, for a latitude_longitude grid
mapping or none, its regular 2-D latitude/longitude (template 3.0, as MRMS).  Values are IEEE 32-bit floats
(def_ray.data.grib_writer), so a float32 field decodes bit for bit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import xarray as xr

from def_ray.data.grib_writer import GribGrid, GribWriteError, LatLonGrid, check_field, encode_message
from def_ray.data.grid import LambertGrid

__all__ = ["grib2_bytes", "forecast_grid", "ACCUMULATION_HOURS", "PERCENT"]

ACCUMULATION_HOURS: dict[str, int] = {"qpe_01h": 1}
"""Targets that are accumulations over the given hours ending at the valid time (templates 4.9 / 4.12)."""

PERCENT = 100.0  # probabilities are written in percent
_ABOVE_LOWER_LIMIT = 3  # code table 4.9
_ENSEMBLE_FORECAST, _PROBABILITY_FORECAST = 4, 5  # code table 4.3 (type of generating process)
_UNWEIGHTED_MEAN = 0  # code table 4.7 (derived forecast)
_ACCUMULATION = 1  # code table 4.10 (type of statistical processing)
_START_OF_FORECAST = 1  # code table 1.2 (significance of reference time)


def forecast_grid(ds: xr.Dataset, target: str) -> GribGrid:
    """The GRIB2 grid of `target` in `ds`: its Lambert grid mapping, else its regular latitude/longitude."""
    mapping = ds[target].attrs.get("grid_mapping")
    attrs = dict(ds[mapping].attrs) if mapping in ds.variables else {}
    shape = (ds.sizes["y"], ds.sizes["x"])
    if attrs.get("grid_mapping_name") == "lambert_conformal_conic":
        names = LambertGrid.__dataclass_fields__.keys()
        missing = [k for k in names if k not in attrs]
        if missing:
            raise GribWriteError(f"grid mapping {mapping!r} lacks {missing}: no Lambert grid to write as GRIB2")
        grid = LambertGrid(**{k: attrs[k] for k in names})
        if (grid.ny, grid.nx) != shape:
            raise GribWriteError(f"grid mapping {mapping!r} is {grid.ny} x {grid.nx}, the fields {shape}")
        return grid
    if attrs and attrs.get("grid_mapping_name") != "latitude_longitude":
        raise GribWriteError(f"grid mapping {attrs.get('grid_mapping_name')!r} has no GRIB2 writer here")
    if "latitude" not in ds.coords or "longitude" not in ds.coords:
        raise GribWriteError("the forecast has neither a Lambert grid mapping nor latitude/longitude coordinates")
    try:
        return LatLonGrid.from_latlon(ds["latitude"].values, ds["longitude"].values)
    except ValueError as err:
        raise GribWriteError(f"GRIB2 output: {err}") from None


def _scaled(value: float) -> tuple[int, int]:
    """(scale factor, scaled value) with value = scaled value / 10**factor (to 1e-12 relative), smallest factor."""
    for factor in range(10):
        scaled = round(value * 10**factor)
        if abs(scaled / 10**factor - value) <= 1e-12 * max(1.0, abs(value)) and abs(scaled) < 2**31:
            return factor, scaled
    raise GribWriteError(f"threshold {value!r} has no exact decimal form GRIB2 can store")


def _time_unit(seconds: list[int]) -> tuple[int, int]:
    """(GRIB time unit code, seconds per unit): hours when every time is whole hours, else minutes."""
    for code, per in ((1, 3600), (0, 60)):
        if all(s % per == 0 for s in seconds):
            return code, per
    raise GribWriteError(f"leads {seconds} s are not whole minutes")


def _timing(lead_s: int, accumulation_s: int, unit: tuple[int, int]) -> dict[str, Any]:
    code, per = unit
    if not accumulation_s:
        return {"stepUnits": code, "forecastTime": lead_s // per}
    if lead_s < accumulation_s:
        raise GribWriteError(f"lead {lead_s} s is shorter than the {accumulation_s} s accumulation it ends")
    return {"typeOfStatisticalProcessing": _ACCUMULATION, "stepUnits": code,
            "stepRange": f"{(lead_s - accumulation_s) // per}-{lead_s // per}"}


def grib2_bytes(ds: xr.Dataset) -> bytes:
    """The ensemble mean and exceedance probabilities of every target of `ds` (def_ray.forecast.ensemble) as the
    bytes of a GRIB2 file; GribWriteError (a ValueError) for what GRIB2 cannot hold, before anything is encoded."""
    targets = [str(t) for t in np.atleast_1d(ds.attrs.get("targets", []))]
    if not targets:
        raise GribWriteError("the forecast names no targets")
    init = datetime.fromisoformat(str(np.datetime64(ds["forecast_reference_time"].values, "s")))
    leads = [int(s) for s in ds["lead_time"].values.astype("timedelta64[s]").astype(np.int64)]
    members = int(ds.sizes["member"])
    thresholds = [float(t) for t in ds["threshold"].values] if "threshold" in ds.coords else []
    limits = [_scaled(t) for t in thresholds]
    unit = _time_unit(leads + [3600 * h for h in ACCUMULATION_HOURS.values()])
    fields: list[tuple[str, np.ndarray, GribGrid, dict[str, Any]]] = []
    for name in targets:
        grid = forecast_grid(ds, name)
        acc = 3600 * ACCUMULATION_HOURS.get(name, 0)
        for i, lead in enumerate(leads):
            timing = {"significanceOfReferenceTime": _START_OF_FORECAST, **_timing(lead, acc, unit)}
            mean = ds[f"{name}_mean"].isel(lead_time=i).transpose("y", "x").values
            fields.append((name, mean, grid, {
                "productDefinitionTemplateNumber": 12 if acc else 2, "typeOfGeneratingProcess": _ENSEMBLE_FORECAST,
                **timing, "derivedForecast": _UNWEIGHTED_MEAN, "numberOfForecastsInEnsemble": members}))
            for k, (factor, scaled) in enumerate(limits):
                prob = ds[f"{name}_probability"].isel(threshold=k, lead_time=i).transpose("y", "x").values
                fields.append((name, prob * np.float32(PERCENT), grid, {
                    "productDefinitionTemplateNumber": 9 if acc else 5,
                    "typeOfGeneratingProcess": _PROBABILITY_FORECAST, **timing,
                    "forecastProbabilityNumber": k + 1, "totalNumberOfForecastProbabilities": len(limits),
                    "probabilityType": _ABOVE_LOWER_LIMIT, "scaleFactorOfLowerLimit": factor,
                    "scaledValueOfLowerLimit": scaled}))
    for name, values, grid, _ in fields:
        check_field("GRIB2 output", name, values, grid)
    return b"".join(encode_message(name, values, grid, init, product) for name, values, grid, product in fields)
