"""How model inputs and outputs are scaled: one normaliser for training windows and forecasts.

A variable may first go through a transform (``TRANSFORMS``): "log" = log10(max(x, 0) + 0.1) for rain, as pysteps
and LDCast work on rain in log / dB units (skewed amounts become near-Gaussian; 0.1 mm is the no-rain floor, which
maps to -1).  Reflectivity (dBZ) is already logarithmic and stays as it is.  Then (t - mean) / std, with mean and std
of the transformed values learned once, from the frames of the training split (def_ray.data.ray_dataset); they
travel inside the exported checkpoint, so a forecast never re-derives them from whatever a store holds later.
Missing values (NaN, inf) become 0 after scaling, i.e. the variable's mean, as in training.  On the way out the
transform is inverted, and values below a variable's physical floor (lexicon: 0 mm for rain, -10 dBZ for
reflectivity) are raised to it.

Static fields (latitude, longitude) are standardised with the mean and std they had over the training grid;
those two numbers per field travel in the checkpoint too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from def_ray.data.lexicon import LEXICON

__all__ = ["TRANSFORMS", "Normaliser", "transform", "inverse_transform", "static_scaling", "static_fields"]

LOG_OFFSET = 0.1  # mm: the no-rain floor of the "log" transform
TRANSFORMS = ("none", "log")


def transform(x: np.ndarray, name: str) -> np.ndarray:
    """Physical values -> the transform's units (float32); NaN stays NaN."""
    x = np.asarray(x, dtype=np.float32)
    if name == "none":
        return x
    if name == "log":
        with np.errstate(invalid="ignore"):
            return np.log10(np.maximum(x, np.float32(0)) + np.float32(LOG_OFFSET))
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


def inverse_transform(t: np.ndarray, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float32)
    if name == "none":
        return t
    if name == "log":
        return np.power(np.float32(10), t) - np.float32(LOG_OFFSET)
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


def _floor(variable: str) -> float:
    known = LEXICON.get(variable)
    return -np.inf if known is None or known.floor is None else known.floor


@dataclass(frozen=True)
class Normaliser:
    """Per-variable transform, then mean and std of the transformed values; `source` says where they came from
    (shown in forecasts' attributes).  Variables without an entry in `transforms` are not transformed."""

    mean: Mapping[str, float]
    std: Mapping[str, float]
    source: str = "checkpoint"
    transforms: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [v for v, s in self.std.items() if not np.isfinite(s) or s <= 0]
        if bad or set(self.mean) != set(self.std):
            raise ValueError(f"normalisation statistics need a finite std > 0 and a mean for every variable: {bad}")
        unknown = {v: t for v, t in self.transforms.items() if t not in TRANSFORMS}
        if unknown:
            raise ValueError(f"unknown transforms {unknown}; expected one of {TRANSFORMS}")

    def transform_of(self, variable: str) -> str:
        return self.transforms.get(variable, "none")

    @property
    def variables(self) -> list[str]:
        return list(self.mean)

    def normalise_variable(self, raw: np.ndarray, variable: str) -> np.ndarray:
        """Physical values of one variable (any shape) -> normalised float32, NaN and inf -> 0."""
        t = transform(raw, self.transform_of(variable))
        out = (t - np.float32(self.mean[variable])) / np.float32(self.std[variable])
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)

    def normalise(self, frames: np.ndarray, variables: Sequence[str]) -> np.ndarray:
        """(..., n_vars, H, W) physical -> normalised float32, variable by variable as the training reads do."""
        frames = np.asarray(frames, dtype=np.float32)
        return np.stack([self.normalise_variable(frames[..., k, :, :], v) for k, v in enumerate(variables)],
                        axis=-3)

    def denormalise(self, x: np.ndarray, variables: Sequence[str]) -> np.ndarray:
        """(..., n_vars, H, W) normalised -> physical float32 (float32 arithmetic, the same everywhere)."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty(x.shape, dtype=np.float32)
        for k, v in enumerate(variables):
            t = x[..., k, :, :] * np.float32(self.std[v]) + np.float32(self.mean[v])
            out[..., k, :, :] = np.maximum(inverse_transform(t, self.transform_of(v)), np.float32(_floor(v)))
        return out

    def subset(self, variables: Sequence[str], source: str | None = None) -> Normaliser:
        missing = [v for v in variables if v not in self.mean]
        if missing:
            raise KeyError(f"no normalisation statistics for {missing} (have {self.variables})")
        return Normaliser({v: float(self.mean[v]) for v in variables}, {v: float(self.std[v]) for v in variables},
                          source or self.source, {v: t for v, t in self.transforms.items() if v in variables})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {v: {"mean": float(self.mean[v]), "std": float(self.std[v]), "transform": self.transform_of(v)}
                for v in self.mean}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, stats: Mapping[str, Mapping[str, Any]], source: str = "checkpoint") -> Normaliser:
        return cls({v: float(s["mean"]) for v, s in stats.items()}, {v: float(s["std"]) for v, s in stats.items()},
                   source, {v: s["transform"] for v, s in stats.items() if s.get("transform", "none") != "none"})


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
