"""How model inputs and outputs are scaled: one normaliser for training windows and forecasts.

The statistics are learned once, from the frames of the training split (def_ray.data.ray_dataset), and travel
inside the exported checkpoint, so a forecast never re-derives them from whatever a store holds later.  Missing
values (NaN, inf) become 0 after scaling, i.e. the variable's mean, as in training.  Outputs below a variable's
physical floor (lexicon: 0 mm for rain, -10 dBZ for reflectivity) are raised to it.

Static fields (latitude, longitude) are standardised with the mean and std they had over the training grid;
those two numbers per field travel in the checkpoint too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from def_ray.data.lexicon import LEXICON

__all__ = ["Normaliser", "static_scaling", "static_fields"]


def _floor(variable: str) -> float:
    known = LEXICON.get(variable)
    return -np.inf if known is None or known.floor is None else known.floor


@dataclass(frozen=True)
class Normaliser:
    """Per-variable mean and std; `source` says where they came from (shown in forecasts' attributes)."""

    mean: Mapping[str, float]
    std: Mapping[str, float]
    source: str = "checkpoint"

    def __post_init__(self) -> None:
        bad = [v for v, s in self.std.items() if not np.isfinite(s) or s <= 0]
        if bad or set(self.mean) != set(self.std):
            raise ValueError(f"normalisation statistics need a finite std > 0 and a mean for every variable: {bad}")

    @property
    def variables(self) -> list[str]:
        return list(self.mean)

    def normalise_variable(self, raw: np.ndarray, variable: str) -> np.ndarray:
        """Physical values of one variable (any shape) -> normalised float32, NaN and inf -> 0."""
        out = (np.asarray(raw, dtype=np.float32) - np.float32(self.mean[variable])) / np.float32(self.std[variable])
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)

    def normalise(self, frames: np.ndarray, variables: Sequence[str]) -> np.ndarray:
        """(..., n_vars, H, W) physical -> normalised float32, variable by variable as the training reads do."""
        frames = np.asarray(frames, dtype=np.float32)
        return np.stack([self.normalise_variable(frames[..., k, :, :], v) for k, v in enumerate(variables)],
                        axis=-3)

    def denormalise(self, x: np.ndarray, variables: Sequence[str]) -> np.ndarray:
        """(..., n_vars, H, W) normalised -> physical float32 (float32 arithmetic, the same everywhere)."""
        m = np.asarray([self.mean[v] for v in variables], dtype=np.float32)[:, None, None]
        s = np.asarray([self.std[v] for v in variables], dtype=np.float32)[:, None, None]
        floor = np.asarray([_floor(v) for v in variables], dtype=np.float32)[:, None, None]
        return np.maximum(np.asarray(x, dtype=np.float32) * s + m, floor).astype(np.float32, copy=False)

    def subset(self, variables: Sequence[str], source: str | None = None) -> Normaliser:
        missing = [v for v in variables if v not in self.mean]
        if missing:
            raise KeyError(f"no normalisation statistics for {missing} (have {self.variables})")
        return Normaliser({v: float(self.mean[v]) for v in variables}, {v: float(self.std[v]) for v in variables},
                          source or self.source)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {v: {"mean": float(self.mean[v]), "std": float(self.std[v])} for v in self.mean}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, stats: Mapping[str, Mapping[str, Any]], source: str = "checkpoint") -> Normaliser:
        return cls({v: float(s["mean"]) for v, s in stats.items()}, {v: float(s["std"]) for v, s in stats.items()},
                   source)


def static_scaling(latitude: np.ndarray, longitude: np.ndarray,
                   names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and std of each static field over a grid (the training grid: stored in the checkpoint)."""
    out = {}
    for name in names:
        a = np.asarray(latitude if name == "latitude" else longitude, dtype=np.float64)
        out[name] = {"mean": float(a.mean()), "std": float(a.std() or 1.0)}
    return out


def static_fields(latitude: np.ndarray, longitude: np.ndarray, names: Sequence[str],
                  scaling: Mapping[str, Mapping[str, float]]) -> np.ndarray | None:
    """(n_static, H, W) float32 standardised with `scaling`, or None without static fields."""
    if not names:
        return None
    out = [(np.asarray(latitude if n == "latitude" else longitude, dtype=np.float64) - scaling[n]["mean"])
           / scaling[n]["std"] for n in names]
    return np.stack(out).astype(np.float32)
