"""The Ray Serve HTTP endpoint for ensemble forecasts: request schema (schema.py) and the app (app.py:
ForecastIngress -> EnsembleSampler replicas; build_app for `serve run/deploy`, run_serve for `def-ray serve`)."""
