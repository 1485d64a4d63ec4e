"""Score forecasts against truth on the same windows, and write the report (Markdown, JSON, plots).

A *forecaster* is any function `init_index -> (members, lead_steps, y, x)` in physical units of the verified
variable; persistence, pysteps and the trained models are all wrapped that way (def_ray.verify.forecasters), so every
method is scored on exactly the same cases by exactly the same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from def_ray.config import DataConfig
from def_ray.data.lexicon import lookup
from def_ray.data.windows import split_windows
from def_ray.data.zarr_store import ZarrStore
from def_ray.verify import metrics
from def_ray.verify.forecasters import Box, CaseForecaster


@dataclass
class Cases:
    """The cases to verify: init indices (last past frame), each on the whole grid or on a tile `boxes[i]` =
    (y0, y1, x0, x1), and the truth after each."""

    store: ZarrStore
    variable: str
    init_indices: np.ndarray
    lead_steps: int
    dt_steps: int
    boxes: list[Box | None] | None = None
    truth: xr.DataArray = field(init=False)

    def __post_init__(self) -> None:
        if self.boxes is None:
            self.boxes = [None] * len(self.init_indices)
        frames = [self.read(int(i), box, range(1, self.lead_steps + 1))
                  for i, box in zip(self.init_indices, self.boxes)]
        times = self.store.all_times()[self.init_indices]
        self.truth = xr.DataArray(np.stack(frames).astype("float32"), dims=("case", "lead", "y", "x"),
                                  coords={"init_time": ("case", times), "lead": np.arange(1, self.lead_steps + 1)},
                                  name=self.variable, attrs={"units": lookup(self.variable).units})

    def read(self, init_index: int, box: Box | None, steps: Sequence[int]) -> np.ndarray:
        """Frames at init_index + k * dt_steps for k in `steps`, on the case's box."""
        idx = [init_index + k * self.dt_steps for k in steps]
        if box is None:
            return self.store.read(self.variable, idx)
        return self.store.read(self.variable, idx, slice(box[0], box[1]), slice(box[2], box[3]))


def select_cases(store: ZarrStore, data: DataConfig, lead_steps: int, split: str = "test",
                 max_cases: int | None = None) -> np.ndarray:
    """Init indices (last past frame) in the split whose past and every lead up to `lead_steps` are committed and
    inside the split (evenly thinned to `max_cases`)."""
    committed = store.committed_mask()
    n_past, dt_steps = data.n_past, data.dt_steps
    splits = split_windows(committed, n_past, dt_steps, data.val_fraction, data.test_fraction, data.gap)
    lo, hi = splits.ranges[split]
    first_past = (n_past - 1) * dt_steps
    keep = np.asarray([i for i in range(lo + first_past, hi)
                       if i + lead_steps * dt_steps < hi
                       and committed[i - first_past: i + lead_steps * dt_steps + 1: dt_steps].all()], dtype=int)
    if max_cases is not None and keep.size > max_cases:
        keep = keep[np.linspace(0, keep.size - 1, max_cases).round().astype(int)]
    return keep


def rainy_tiles(store: ZarrStore, variable: str, init_indices: np.ndarray, n_past: int, lead_steps: int,
                dt_steps: int, tile: int, min_rain_fraction: float, event: float) -> tuple[np.ndarray, list[Box]]:
    """(init indices, boxes) of every tile x tile square of the grid (from the origin, whole tiles only) that is
    inside radar coverage over the whole window (past and leads: no missing value) and rainy at the init time (at
    least `min_rain_fraction` of it at or above `event`)."""
    ny, nx = store.shape[1:]
    boxes = [(y, y + tile, x, x + tile) for y in range(0, ny - tile + 1, tile) for x in range(0, nx - tile + 1, tile)]
    inits, kept = [], []
    for i in init_indices:
        idx = [int(i) + k * dt_steps for k in range(-(n_past - 1), lead_steps + 1)]
        frames = store.read(variable, idx)
        for y0, y1, x0, x1 in boxes:
            f = frames[:, y0:y1, x0:x1]
            if np.isfinite(f).all() and (f[n_past - 1] >= event).mean() >= min_rain_fraction:
                inits.append(int(i))
                kept.append((y0, y1, x0, x1))
    return np.asarray(inits, dtype=int), kept


def run_forecasters(cases: Cases, forecasters: Mapping[str, CaseForecaster],
                    progress: Callable[[str, int, int], None] | None = None) -> dict[str, xr.DataArray]:
    """Each forecaster on each case -> DataArray (case, member, lead, y, x).  `progress(name, done, total)` is
    called before the first case of each forecaster and after every case."""
    out = {}
    for name, fn in forecasters.items():
        runs = []
        for i, box in zip(cases.init_indices, cases.boxes):
            if progress:
                progress(name, len(runs), len(cases.init_indices))
            runs.append(np.asarray(fn(int(i), box), dtype="float32"))
        if progress:
            progress(name, len(runs), len(runs))
        shapes = {r.shape for r in runs}
        if len(shapes) != 1 or next(iter(shapes))[1:] != cases.truth.shape[1:]:
            raise ValueError(f"forecaster {name!r} returned shapes {shapes}; expected (members, "
                             f"{', '.join(map(str, cases.truth.shape[1:]))})")
        out[name] = xr.DataArray(np.stack(runs), dims=("case", "member", "lead", "y", "x"),
                                 coords={"lead": cases.truth.lead}, name=name)
    return out


def score(forecasts: Mapping[str, xr.DataArray], truth: xr.DataArray, thresholds: Sequence[float],
          scales: Sequence[int], reference: str | None = "persistence") -> dict[str, Any]:
    """Scores per method and lead: CRPS(+skill vs reference), RMSE, spread, spread/skill, Brier (+decomposition),
    ROC AUC, FSS and CSI/POD/FAR/bias per threshold.  JSON-ready nested dict."""
    out: dict[str, Any] = {}
    for name, fc in forecasts.items():
        per_lead = {}
        for lead in truth.lead.values:
            f, t = fc.sel(lead=lead), truth.sel(lead=lead)
            m = fc.sizes["member"]
            row: dict[str, Any] = {"members": m, "crps": float(metrics.crps(f, t)),
                                   "rmse": float(metrics.ensemble_mean_rmse(f, t))}
            if reference and reference in forecasts and reference != name:
                row["crpss"] = float(metrics.crps_skill_score(f, t, forecasts[reference].sel(lead=lead)))
            if m > 1:
                row["spread"] = float(metrics.ensemble_spread(f, t))
                row["spread_skill"] = float(metrics.spread_skill_ratio(f, t))
            if m >= metrics.SPREAD_ERROR_MIN_MEMBERS:
                curve = metrics.spread_error_curve(f, t)
                row["spread_error"] = {"spread": [json_number(x) for x in curve["spread"].values],
                                       "rmse": [json_number(x) for x in curve["rmse"].values],
                                       "count": curve["count"].values.astype(int).tolist(),
                                       "correlation": json_number(curve.attrs["correlation"]),
                                       "max_relative_deviation": json_number(curve.attrs["max_relative_deviation"])}
            thr_rows = {}
            cont = metrics.contingency_scores(f, t, list(thresholds))
            fss = metrics.fractions_skill_score(f, t, list(thresholds), list(scales))
            for k, thr in enumerate(thresholds):
                r: dict[str, Any] = {key: json_number(cont[key].isel(threshold=k)) for key in ("csi", "pod", "far",
                                                                                          "frequency_bias")}
                r["fss"] = {int(s): json_number(fss.isel(threshold=k).sel(scale=s)) for s in scales}
                r["brier"] = json_number(metrics.brier_score(f, t, thr))
                r["base_rate"] = float((t >= thr).mean())
                if m > 1 and r["base_rate"] > 0:
                    dec = metrics.brier_decomposition(f, t, thr)
                    r.update(reliability=json_number(dec["reliability"]), resolution=json_number(dec["resolution"]))
                    r["roc_auc"] = json_number(metrics.roc_auc(f, t, thr))
                thr_rows[str(thr)] = r
            row["thresholds"] = thr_rows
            per_lead[int(lead)] = row
        out[name] = per_lead
    return out


def json_number(x: Any) -> float | None:
    """A float for JSON: None for NaN and infinities (JSON has none)."""
    v = float(x)
    return None if not np.isfinite(v) else v


def markdown_table(scores: Mapping[str, Any], thresholds: Sequence[float]) -> str:
    """One table per lead: a row per method, columns the headline scores (FSS at the largest neighbourhood;
    spread-error dev = the largest |spread / RMSE - 1| over spread bins holding 1% of the points)."""
    lines = []
    leads = sorted({lead for per in scores.values() for lead in per})
    for lead in leads:
        lines += [f"### lead {lead} step(s)", ""]
        head = ["method", "members", "CRPS", "CRPSS", "RMSE", "spread/skill", "spread-error dev"]
        for thr in thresholds:
            head += [f"Brier≥{thr:g}", f"AUC≥{thr:g}", f"CSI≥{thr:g}", f"bias≥{thr:g}", f"FSS≥{thr:g}"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, per in scores.items():
            r = per.get(lead)
            if r is None:
                continue
            cells = [name, str(r["members"]), _fmt(r["crps"]), _fmt(r.get("crpss")), _fmt(r["rmse"]),
                     _fmt(r.get("spread_skill")), _fmt(r.get("spread_error", {}).get("max_relative_deviation"))]
            for thr in thresholds:
                t = r["thresholds"][str(thr)]
                fss = t["fss"][max(t["fss"])] if t["fss"] else None  # at the largest neighbourhood
                cells += [_fmt(t["brier"]), _fmt(t.get("roc_auc")), _fmt(t["csi"]), _fmt(t["frequency_bias"]),
                          _fmt(fss)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


Plotter = Callable[[Path, Mapping[str, xr.DataArray], xr.DataArray, Sequence[float], Sequence[int]],
                   Mapping[str, Path]]
"""(folder, forecasts, truth, thresholds, FSS scales) -> {name: PNG path}: def_ray.viz.plots.verification_plots.
`verify` also passes km_per_pixel and step_minutes as keywords (the plots then speak km and hours)."""


def write_report(out_dir: str | Path, scores: Mapping[str, Any], forecasts: Mapping[str, xr.DataArray],
                 truth: xr.DataArray, thresholds: Sequence[float], scales: Sequence[int],
                 extra_sections: Sequence[str] = (), title: str = "def_ray verification",
                 plotter: Plotter | None = None) -> dict[str, Path]:
    """report.md, scores.json and, given a `plotter`, the plots; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "scores.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(scores, indent=2, sort_keys=True))
    if plotter is not None:
        paths.update(plotter(out, forecasts, truth, thresholds, scales))
    body = [f"# {title}", "", f"{truth.sizes['case']} case(s), variable `{truth.name}`, "
            f"leads {', '.join(str(int(v)) for v in truth.lead.values)}.", "",
            markdown_table(scores, thresholds), *extra_sections, "## Plots", ""]
    body += [f"![{k}]({p.name})" for k, p in paths.items() if p.suffix == ".png"]
    paths["markdown"].write_text("\n".join(body) + "\n")
    return paths
