"""The complete training state in a Ray Train checkpoint, and the export of the best one as a single file.

A training checkpoint is a folder with one ``state.pt``: model and EMA weights, optimiser and LR-scheduler state,
the step counters, every rank's RNG states and the MLflow run id, so a restarted worker group continues exactly
where the checkpoint was taken: no optimiser step is repeated or lost.  The exported file is the model package of
def_ray.models.save_checkpoint (config inside) that the forecast job loads with --model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from def_ray.models.description import ModelDescription

__all__ = ["TrainState", "STATE_FILE", "rng_state", "set_rng_state", "save_state", "load_state", "export_model"]

STATE_FILE = "state.pt"


@dataclass
class TrainState:
    """What a checkpoint restores, besides the module weights."""

    epoch: int = -1  # last completed epoch
    global_step: int = 0  # optimiser steps taken
    model: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, Any] | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)  # one entry per rank
    mlflow_run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    restored_from: list[int] = field(default_factory=list)  # epochs of the checkpoints this run resumed from


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: str | Path, state: TrainState) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state.__dict__, path)
    return path


def load_state(directory: str | Path) -> TrainState:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a def_ray training checkpoint (no {STATE_FILE})")
    return TrainState(**torch.load(path, map_location="cpu", weights_only=False))


def export_model(state: TrainState, cond_channels: int, target_channels: int, dest: str,
                 storage_options: dict[str, Any] | None = None, description: ModelDescription | None = None) -> str:
    """Write the model of `state` (with its EMA weights and the model's description) as one self-contained file
    at `dest` (path or URL)."""
    from def_ray.config import config_from_dict
    from def_ray.models import build_model
    from def_ray.models.checkpoint import save_checkpoint

    cfg = config_from_dict(state.config, "checkpoint")
    model = build_model(cfg.model, cond_channels, target_channels)
    model.load_state_dict(state.model)
    extra = {"epoch": state.epoch, "global_step": state.global_step, "mlflow_run_id": state.mlflow_run_id,
             "metrics": {k: float(v) for k, v in state.metrics.items()}}
    if "://" not in dest or dest.startswith("file://"):
        dest = str(Path(dest.removeprefix("file://")).resolve())
    save_checkpoint(dest, model, state.config, extra=extra, ema_state=state.ema,
                    storage_options=storage_options if "://" in dest else None, description=description)
    return dest
