"""The ensemble forecast as a CF Dataset: members, mean, spread, exceedance probabilities and quantiles.

The members come from ``def_ray.forecast.forecaster.Forecaster``; the attributes it records
(``Forecaster.provenance``) say which model made the forecast and let ``regenerate_member`` redo any member.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from def_ray.config import SamplerConfig
from def_ray.data.lexicon import LEXICON
from def_ray.data.normalise import Normaliser
from def_ray.data.zarr_store import ZarrStore
from def_ray.forecast.forecaster import ForecastError, Forecaster
from def_ray.forecast.products import ensemble_mean, ensemble_quantiles, ensemble_spread, exceedance_probability

__all__ = ["build_forecast_dataset", "regenerate_member"]


def _netcdf_attr(v: Any) -> Any:
    """Attribute values netCDF and Zarr both accept: numbers, strings, flat number lists; others as JSON."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float, str, np.integer, np.floating)):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v):
        return list(v)
    return json.dumps(v, default=str)


def _projection_xy(projection: Mapping[str, Any], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    from def_ray.data.grid import LambertGrid

    names = LambertGrid.__dataclass_fields__.keys()
    if not all(k in projection for k in names):
        return None
    grid = LambertGrid(**{k: projection[k] for k in names})
    if (grid.ny, grid.nx) != tuple(shape):
        return None
    return grid.projection_xy()


def build_forecast_dataset(ens: np.ndarray, *, targets: Sequence[str], init_time: Any, step_seconds: int,
                           latitude: np.ndarray | None = None, longitude: np.ndarray | None = None,
                           projection: Mapping[str, Any] | None = None, thresholds: Sequence[float] = (),
                           quantiles: Sequence[float] = (), attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """CF Dataset of an ensemble (members, lead, n_targets, y, x).

    Per target variable V: V (member, lead_time, y, x), V_mean and V_spread (lead_time, y, x),
    V_probability (threshold, lead_time, y, x) = P(V >= threshold), V_quantile (quantile, lead_time, y, x).
    Coordinates: member, lead_time (timedelta), time (valid time, on lead_time), forecast_reference_time,
    threshold, quantile, latitude/longitude (y, x), and projection x/y in metres when the grid is known.
    """
    ens = np.asarray(ens, dtype=np.float32)
    if ens.ndim != 5 or ens.shape[2] != len(targets):
        raise ValueError(f"ensemble shape {ens.shape} must be (members, lead, {len(targets)} targets, y, x)")
    n_mem, n_lead, _, ny, nx = ens.shape
    init = np.datetime64(init_time, "ns")
    lead = (np.arange(1, n_lead + 1) * int(step_seconds)).astype("timedelta64[s]").astype("timedelta64[ns]")
    coords: dict[str, Any] = {
        "member": ("member", np.arange(n_mem, dtype=np.int32), {"long_name": "ensemble member",
                                                                 "standard_name": "realization"}),
        "lead_time": ("lead_time", lead, {"long_name": "time since forecast_reference_time",
                                          "standard_name": "forecast_period"}),
        "time": ("lead_time", init + lead, {"long_name": "valid time", "standard_name": "time"}),
        "forecast_reference_time": ((), init, {"standard_name": "forecast_reference_time"}),
    }
    if latitude is not None and longitude is not None:
        coords["latitude"] = (("y", "x"), np.asarray(latitude, dtype=np.float32),
                              {"units": "degrees_north", "standard_name": "latitude"})
        coords["longitude"] = (("y", "x"), np.asarray(longitude, dtype=np.float32),
                               {"units": "degrees_east", "standard_name": "longitude"})
    projection = dict(projection or {})
    xy = _projection_xy(projection, (ny, nx))
    if xy is not None:
        coords["x"] = ("x", xy[0], {"units": "m", "standard_name": "projection_x_coordinate"})
        coords["y"] = ("y", xy[1], {"units": "m", "standard_name": "projection_y_coordinate"})
    data_vars: dict[str, Any] = {}
    grid_mapping = None
    if projection:
        grid_mapping = "lambert_conformal"
        data_vars[grid_mapping] = ((), np.int32(0), {k: _netcdf_attr(v) for k, v in projection.items()})
    for k, name in enumerate(targets):
        meta = LEXICON.get(name)
        units = meta.units if meta is not None else ""
        long_name = meta.long_name if meta is not None else name
        base = {"units": units}  # xarray writes the CF "coordinates" attribute from the lat/lon coords
        if grid_mapping:
            base["grid_mapping"] = grid_mapping
        da = xr.DataArray(ens[:, :, k], dims=("member", "lead_time", "y", "x"), name=name)
        data_vars[name] = (da.dims, da.values, {**base, "long_name": long_name})
        data_vars[f"{name}_mean"] = (("lead_time", "y", "x"), ensemble_mean(da.values),
                                     {**base, "long_name": f"ensemble mean of {long_name}",
                                      "cell_methods": "realization: mean"})
        data_vars[f"{name}_spread"] = (("lead_time", "y", "x"), ensemble_spread(da.values),
                                       {**base, "long_name": f"ensemble standard deviation (ddof=1) of {long_name}",
                                        "cell_methods": "realization: standard_deviation"})
        if len(thresholds):
            data_vars[f"{name}_probability"] = (
                ("threshold", "lead_time", "y", "x"), exceedance_probability(da.values, thresholds),
                {**base, "units": "1", "long_name": f"probability of {name} >= threshold",
                 "threshold_units": units})
        if len(quantiles):
            data_vars[f"{name}_quantile"] = (("quantile", "lead_time", "y", "x"),
                                             ensemble_quantiles(da.values, quantiles),
                                             {**base, "long_name": f"ensemble quantiles of {long_name}"})
    if len(thresholds):
        coords["threshold"] = ("threshold", np.asarray(list(thresholds), dtype=np.float64),
                               {"long_name": "exceedance threshold (units of the variable)"})
    if len(quantiles):
        coords["quantile"] = ("quantile", np.asarray(list(quantiles), dtype=np.float64), {"units": "1"})
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(Conventions="CF-1.10", title="def_ray ensemble forecast",
                    source="def_ray conditional diffusion model (DDPM)", targets=list(targets),
                    init_time=str(np.datetime64(init_time, "s")), step_seconds=int(step_seconds))
    ds.attrs.update({k: _netcdf_attr(v) for k, v in (attrs or {}).items() if v is not None})
    return ds


def regenerate_member(ds: xr.Dataset, member: int, *, store: ZarrStore | None = None,
                      storage_options: Mapping[str, Any] | None = None,
                      forecaster: Forecaster | None = None) -> np.ndarray:
    """Member `member` of a written forecast, sampled again from its attributes: (lead, n_targets, y, x)."""
    a = ds.attrs
    if not 0 <= member < int(a["members"]):
        raise ForecastError(f"member {member} not in 0..{int(a['members']) - 1}", field="member")
    fc = forecaster or Forecaster.load(a["checkpoint"], storage_options)
    store = store or ZarrStore(a["store"], storage_options)
    norm = Normaliser.from_dict(json.loads(a["normalisation"]), a["normalisation_source"])
    if "sampler_options" in a:
        options = SamplerConfig.model_validate_json(a["sampler_options"])
    else:  # written before the forecasts recorded every sampler option
        options = SamplerConfig(name=a["sampler"], steps=int(a["steps"]), member_batch_size=int(a["member_batch_size"]),
                                spread_scale=float(a["spread_scale"]), eta=float(a["eta"]),
                                guidance=float(a.get("guidance", 1.0)))
    out = fc.forecast(store, np.datetime64(a["init_time"]), 1, int(a["lead_hours"]), options, seed=int(a["seed"]),
                      member_offset=member, normaliser=norm)
    return out[0]
