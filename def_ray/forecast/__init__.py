"""Ensemble forecasts: conditioning and sampling (ensemble.py), probability products (products.py), output files
(writer.py) and the batch job across Ray actors (batch.py)."""

from def_ray.forecast.ensemble import (ForecastError, ForecastModel, Normalisation, build_forecast_dataset,
                                       forecast, load_forecast_model, regenerate_member, sample_members)
from def_ray.forecast.products import (ensemble_mean, ensemble_quantiles, ensemble_spread,
                                       exceedance_probability)
from def_ray.forecast.writer import open_forecast, write_forecast

__all__ = ["ForecastError", "ForecastModel", "Normalisation", "build_forecast_dataset", "ensemble_mean",
           "ensemble_quantiles", "ensemble_spread", "exceedance_probability", "forecast", "load_forecast_model",
           "open_forecast", "regenerate_member", "sample_members", "write_forecast"]
