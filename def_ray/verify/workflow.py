"""`def-ray verify` / jobs/verify.py: score the models and the baselines on the same test windows and report.

Methods: persistence, pysteps extrapolation, the pysteps STEPS ensemble (same member count), and each checkpoint
given (the diffusion ensemble, the deterministic UNet).  On synthetic stores, `--synth-truth` adds the known-truth
calibration check: the model's exceedance probabilities against the process's exact ones.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from def_ray.config import Config, ConfigError
from def_ray.data.lexicon import lookup
from def_ray.data.ray_dataset import resolve_storage_options
from def_ray.data.zarr_store import ZarrStore
from def_ray.verify import forecasters as fcs
from def_ray.verify.calibration import calibrated_deviation, deviation_interval, reliability_against_truth
from def_ray.verify.report import (Cases, Plotter, json_number, rainy_tiles, run_forecasters, score, select_cases,
                                   write_report)
from def_ray.verify.significance import compare_to_baselines, comparison_section


@dataclass
class VerifyResult:
    out_dir: Path
    scores: dict[str, Any]
    paths: dict[str, Path]
    calibration: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)  # def_ray.verify.significance.compare_to_baselines

    def __str__(self) -> str:
        return f"verification report: {self.paths['markdown']}"


def build_forecasters(cfg: Config, store: ZarrStore, models: Mapping[str, str], members: int,
                      lead_steps: int, variable: str) -> dict[str, fcs.CaseForecaster]:
    v = cfg.verify
    scale = "rainrate" if lookup(variable).precipitation else "dbz"
    rain = v.rain_threshold if v.rain_threshold is not None else (0.1 if scale == "rainrate" else 10.0)
    dt, n_past = cfg.data.dt_steps, cfg.data.n_past
    minutes = store.dt_seconds * dt / 60
    table: dict[str, fcs.CaseForecaster] = {}
    for name in v.baselines:
        if name == "persistence":
            table[name] = fcs.persistence_forecaster(store, variable, lead_steps, dt)
        elif name == "extrapolation":
            table[name] = fcs.extrapolation_forecaster(store, variable, lead_steps, n_past, dt, scale, rain)
        elif name == "steps":
            table[name] = fcs.steps_forecaster(store, variable, lead_steps, n_past, members, dt, seed=cfg.forecast.seed,
                                               scale=scale, threshold=rain, km_per_pixel=v.km_per_pixel,
                                               timestep_minutes=minutes)
    for name, path in models.items():
        table[name] = fcs.model_forecaster(path, store, variable, lead_steps, members, cfg.forecast.sampler,
                                           seed=cfg.forecast.seed,
                                           storage_options=resolve_storage_options(path, cfg.train.storage.to_fsspec()),
                                           data=cfg.data)
    return table


def calibration_table(probabilities: Mapping[str, np.ndarray], reference: np.ndarray, thresholds: Sequence[float],
                      groups: np.ndarray, min_count: int) -> dict[str, Any]:
    """Reliability of each method's probabilities (case, threshold, y, x) against `reference` probabilities of the
    same shape (the known ones, or 0/1 outcomes), per bin with a case-bootstrap interval (cases resampled in
    `groups`)."""
    out: dict[str, Any] = {}
    for name, p_fc in probabilities.items():
        out[name] = {}
        for k, thr in enumerate(thresholds):
            rel = reliability_against_truth(p_fc[:, k], reference[:, k], min_count=min_count)
            ci = deviation_interval(p_fc[:, k], reference[:, k], min_count=min_count, groups=groups)
            out[name][str(thr)] = {
                "max_deviation": rel.attrs["max_deviation"],
                "max_deviation_interval": [ci.attrs["max_deviation_lower"], ci.attrs["max_deviation_upper"]],
                "interval_level": ci.attrs["level"], "min_count": min_count,
                "mean_forecast": rel.attrs["mean_forecast"], "mean_true": rel.attrs["mean_true"],
                "bins": {f"{lo:.1f}-{hi:.1f}": {"forecast": json_number(f), "true": json_number(t), "count": int(n),
                                                "difference_interval": [json_number(d_lo), json_number(d_hi)]}
                         for lo, hi, f, t, n, d_lo, d_hi in zip(
                             rel.bin_lower.values, rel.bin_upper.values, rel.forecast_probability.values,
                             rel.true_probability.values, rel["count"].values, ci["lower"].values,
                             ci["upper"].values)}}
    return out


def exceedance_probabilities(members: Mapping[str, np.ndarray], thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """Each method's share of members at or above each threshold: (member, case, y, x) -> (case, threshold, y, x)."""
    return {name: np.stack([(x >= thr).mean(0) for thr in thresholds], axis=1) for name, x in members.items()}


def synthetic_calibration(cfg: Config, cases: Cases, probabilities: Mapping[str, np.ndarray],
                          thresholds: Sequence[float]) -> dict[str, Any]:
    """Reliability of each method's lead-1 probabilities against the synthetic process's exact probabilities."""
    from def_ray.data.synthetic import LIFETIMES, true_probabilities

    truth = true_probabilities(cfg.synth, thresholds)
    init_times = cases.truth["init_time"].values
    valid = init_times + np.timedelta64(cases.store.dt_seconds * cfg.data.dt_steps, "s")
    p_true = truth.sel(time=valid.astype(truth.time.dtype)).values  # (case, threshold, y, x)
    # cases less than a cell's longest life apart share cells: the bootstrap resamples such blocks whole
    blocks = (init_times - init_times.min()) // np.timedelta64(max(LIFETIMES), "h")
    return calibration_table(probabilities, p_true, thresholds, blocks, min_count=50)


def observed_calibration(cases: Cases, members: Mapping[str, np.ndarray],
                         thresholds: Sequence[float], min_count: int = 500) -> dict[str, Any]:
    """Reliability of each method's lead-1 probabilities against what happened (outcome frequency per bin), the
    cases of one init time resampled together (tiles of one hour share their weather), and what a calibrated
    ensemble of the same cases would score (def_ray.verify.calibration.calibrated_deviation).  `members`: each
    method's lead-1 members (member, case, y, x)."""
    obs = cases.truth.isel(lead=0).values
    outcomes = np.stack([np.where(np.isfinite(obs), obs >= thr, np.nan) for thr in thresholds], axis=1)
    groups = cases.truth["init_time"].values.astype("datetime64[s]").astype(np.int64)
    table = calibration_table(exceedance_probabilities(members, thresholds), outcomes, thresholds, groups, min_count)
    for name, x in members.items():
        for thr in thresholds:
            judged = [b["forecast"] for b in table[name][str(thr)]["bins"].values() if b["count"] >= min_count]
            cal = (calibrated_deviation(x, thr, judged, valid=np.isfinite(obs)) if len(x) >= 3  # two others needed
                   else {"median": np.nan, "upper": np.nan, "draws": 0})
            table[name][str(thr)]["calibrated_max_deviation"] = {"median": json_number(cal["median"]),
                                                                 "upper": json_number(cal["upper"]), "draws": cal["draws"]}
    return table


def _calibration_section(cal: Mapping[str, Any], observed: bool = False) -> str:
    if observed:
        head = ["## Reliability against what happened", "",
                "Largest |mean forecast probability - observed frequency| over forecast-probability bins holding at "
                "least 500 points (lead 1), its 90% interval from resampling the init times (the tiles of one hour "
                "together), what a calibrated ensemble would show on the same cases (each member scored as the truth "
                "against the others: median and 90% of those draws; a deviation above them is miscalibration, a "
                "tolerance below them cannot be checked on these cases), and the overall mean probability and "
                "frequency.", ""]
    else:
        head = ["## Reliability against the known probabilities (synthetic process)", "",
                "Largest |mean forecast probability - mean true probability| over forecast-probability bins holding "
                "at least 50 points (lead 1), its 90% interval from resampling the cases in blocks of a cell's "
                "longest life (how much of it the few cases verified could explain), and the overall mean "
                "probabilities.", ""]
    calibrated = "a calibrated ensemble: median (90%) | " if observed else ""
    lines = [*head,
             f"| method | threshold | max deviation | 90% interval | {calibrated}mean forecast | mean true |",
             "|---|---|---|---|---|---|" + ("---|" if observed else "")]
    for name, per in cal.items():
        for thr, r in per.items():
            dev, (lo, hi) = r["max_deviation"], r["max_deviation_interval"]
            interval = "–" if dev != dev else f"{lo:.3f} .. {hi:.3f}"
            if observed:
                c = r["calibrated_max_deviation"]
                calibrated = "– | " if c["median"] is None else f"{c['median']:.3f} ({c['upper']:.3f}) | "
            lines.append(f"| {name} | {thr} | {'–' if dev != dev else f'{dev:.3f}'} | {interval} | {calibrated}"
                         f"{r['mean_forecast']:.4f} | {r['mean_true']:.4f} |")
    return "\n".join(lines) + "\n"


class CaseProgress:
    """Console lines while the forecasters run: one when a method starts, then at most one a minute with the cases
    done and the ETA (a method that finishes within the minute prints only its first line)."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self.started = self.last = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        from def_ray.train.console import format_duration

        now = time.perf_counter()
        if done == 0:
            self.started = self.last = now
            print(f"verify: running {name} on {total} case(s)", flush=True)
        elif now - self.last >= self.every_s:
            self.last = now
            took = now - self.started
            eta = took / done * (total - done)
            print(f"verify: {name} {done}/{total} cases, {format_duration(took)}"
                  + (f", ETA {format_duration(eta)}" if done < total else ", done"), flush=True)


def verify(cfg: Config, models: Mapping[str, str], out_dir: str | Path | None = None, *,
           synth_truth: bool = False, mlflow_run_id: str | None = None,
           progress: bool = True, plotter: Plotter | None = None) -> VerifyResult:
    """Score the models and baselines on the same cases; write report.md, scores.json and (given a `plotter`,
    e.g. def_ray.viz.plots.verification_plots) the plots."""
    v = cfg.verify
    store = ZarrStore(cfg.data.store, resolve_storage_options(cfg.data.store, cfg.data.storage.to_fsspec()))
    variable = cfg.data.target_variables[0]
    members = v.members or cfg.forecast.members
    thresholds = list(v.thresholds or cfg.forecast.thresholds)
    inits = select_cases(store, cfg.data, v.lead_steps, v.split, v.max_cases)
    if inits.size == 0:
        raise ConfigError(f"verify: the {v.split} split of {cfg.data.store} holds no window with "
                          f"{v.lead_steps} lead step(s) after it")
    boxes = None
    if v.tile is not None:
        from def_ray.data.ray_dataset import event_threshold

        inits, boxes = rainy_tiles(store, variable, inits, cfg.data.n_past, v.lead_steps, cfg.data.dt_steps, v.tile,
                                   v.min_rain_fraction, event_threshold(variable))
        if inits.size == 0:
            raise ConfigError(f"verify: no {v.tile} x {v.tile} tile of the {v.split} split's init times is inside "
                              f"radar coverage and rainy (verify.min_rain_fraction={v.min_rain_fraction})")
    cases = Cases(store, variable, inits, v.lead_steps, cfg.data.dt_steps, boxes)
    table = build_forecasters(cfg, store, models, members, v.lead_steps, variable)
    forecasts = run_forecasters(cases, table, CaseProgress() if progress else None)
    scores = score(forecasts, cases.truth, thresholds, v.scales)
    sections, calibration = [], {}
    scale = max(v.scales)
    comparison = compare_to_baselines(forecasts, cases.truth, v.baselines, thresholds, scale,
                                      cases.truth["init_time"].values)
    if comparison["methods"]:
        sections.append(comparison_section(comparison, f"{scale} points ({scale * v.km_per_pixel:g} km)"))
    members = {name: fc.isel(lead=0).transpose("member", "case", ...).values
               for name, fc in forecasts.items() if fc.sizes["member"] > 1}
    if synth_truth:
        calibration = synthetic_calibration(cfg, cases, exceedance_probabilities(members, thresholds),
                                            [t for t in thresholds if t > 0])
        sections.append(_calibration_section(calibration))
    elif members:
        calibration = observed_calibration(cases, members, thresholds)
        sections.append(_calibration_section(calibration, observed=True))
    out = Path(out_dir or v.out)
    if plotter is not None:  # the plots speak km and hours, as the config and the store say
        plotter = partial(plotter, km_per_pixel=v.km_per_pixel, step_minutes=store.dt_seconds * cfg.data.dt_steps / 60)
    paths = write_report(out, scores, forecasts, cases.truth, thresholds, v.scales, sections,
                         title=f"def_ray verification: {cfg.name}", plotter=plotter)
    if comparison["methods"]:
        paths["comparison"] = out / "comparison.json"
        paths["comparison"].write_text(json.dumps(comparison, indent=2))
    if calibration:
        paths["calibration"] = out / ("calibration_vs_truth.json" if synth_truth else "calibration_vs_observed.json")
        paths["calibration"].write_text(json.dumps(calibration, indent=2))
    if mlflow_run_id:
        log_to_mlflow(cfg, mlflow_run_id, out, scores)
    return VerifyResult(out_dir=out, scores=scores, paths=paths, calibration=calibration, comparison=comparison)


def log_to_mlflow(cfg: Config, run_id: str, out: Path, scores: Mapping[str, Any]) -> bool:
    """Attach the report to the model's MLflow run; a tracking failure is reported, never fatal."""
    try:
        import mlflow

        from def_ray.train.tracking import resolve_tracking_uri

        client = mlflow.MlflowClient(resolve_tracking_uri(cfg.tracking))
        for name, per in scores.items():
            for lead, row in per.items():
                for key in ("crps", "crpss", "rmse", "spread_skill"):
                    if row.get(key) is not None:
                        client.log_metric(run_id, f"verify/{name}/lead{lead}/{key}", row[key])
        client.log_artifacts(run_id, str(out), artifact_path="verification")
        return True
    except Exception as err:  # tracking must never lose the report
        print(f"verify: could not log to MLflow run {run_id}: {err}", file=sys.stderr)
        return False
