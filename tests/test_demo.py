"""`def-ray demo --quick`: every stage on a real local Ray instance, ending with the verification report."""

import json
from pathlib import Path

import pytest
import xarray as xr

from def_ray.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_quick_demo_runs_every_stage_and_ends_with_the_report(ray_session, tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, overrides={"forecast.members": 6, "verify.max_cases": 2})

    # the forecast holds the overridden member count, from the diffusion checkpoint the demo trained
    fc = xr.open_zarr(summary["forecast"])
    assert fc.sizes["member"] == 6
    assert summary["maps"] and all(Path(m).stat().st_size > 1000 for m in summary["maps"])
    # and the same forecast as CF NetCDF beside it
    nc = xr.open_dataset(summary["forecast_netcdf"])
    assert summary["forecast_netcdf"] == str(Path(summary["forecast"]).with_suffix(".nc"))
    assert nc.sizes["member"] == 6 and nc["refc"].attrs["standard_name"] == "equivalent_reflectivity_factor"

    # the report scores both models and every baseline on the same cases, and checks the known probabilities
    report = out / "verification"
    scores = json.loads((report / "scores.json").read_text())
    assert set(scores) == {"persistence", "extrapolation", "steps", "diffusion", "deterministic"}
    assert "2 case(s)" in (report / "report.md").read_text()
    assert scores["diffusion"]["1"]["members"] == 6 and scores["steps"]["1"]["members"] == 6
    cal = json.loads((report / "calibration_vs_truth.json").read_text())
    assert {"diffusion", "steps"} <= set(cal)
    # each model against each baseline with the intervals of the resampled init times
    comparison = json.loads((report / "comparison.json").read_text())
    assert set(comparison["methods"]) == {"diffusion", "deterministic"}
    vs = comparison["methods"]["diffusion"]["1"]
    assert set(vs) == {"persistence", "extrapolation", "steps"}
    ratio, lo, hi = vs["steps"]["crps_ratio"]
    assert lo <= ratio <= hi and ratio == pytest.approx(scores["diffusion"]["1"]["crps"] / scores["steps"]["1"]["crps"],
                                                         rel=1e-6)
    assert "## Differences against the baselines" in (report / "report.md").read_text()
    assert summary["report"] == str(report / "report.md")

    # and it is logged with the diffusion model's MLflow run
    import mlflow

    client = mlflow.MlflowClient(summary["tracking_uri"])
    names = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "verification")}
    assert "verification/report.md" in names
