"""Ensemble forecasts: the one forecaster (forecaster.py), member sampling where the model lives (members.py), the
output Dataset (ensemble.py), probability products (products.py), output files (writer.py) and the batch job
across Ray actors (batch.py)."""

from def_ray.forecast.ensemble import build_forecast_dataset, regenerate_member
from def_ray.forecast.forecaster import ForecastError, Forecaster
from def_ray.forecast.products import (ensemble_mean, ensemble_quantiles, ensemble_spread,
                                       exceedance_probability)
from def_ray.forecast.writer import open_forecast, write_forecast

__all__ = ["ForecastError", "Forecaster", "build_forecast_dataset", "ensemble_mean", "ensemble_quantiles",
           "ensemble_spread", "exceedance_probability", "open_forecast", "regenerate_member", "write_forecast"]
