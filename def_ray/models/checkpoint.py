"""Self-contained model checkpoints on local disk or any fsspec URL (s3://...).

One file holds the weights, optional EMA weights, the config dict the model was built from (a full ``Config``
dump or a ``ModelConfig`` dict), the channel counts, the model's description (def_ray.models.description: what a
forecast needs to know, the training statistics included) and free ``extra`` metadata, so a forecast job needs
only the file. Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code, and ``extra`` may hold only
plain Python values (dict, list, str, numbers, None) and tensors.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
import torch
from torch import nn

from def_ray.config import ModelConfig
from def_ray.models.description import ModelDescription

FORMAT = "def_ray.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message names the path."""


def _model_section(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig part of a full config dump, or the dict itself when it is already a ModelConfig dict."""
    section = config.get("model") if isinstance(config.get("model"), dict) else config
    return ModelConfig.model_validate(section).model_dump(mode="json")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _clean_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Weights on the CPU, without DDP's / AveragedModel's "module." prefix and the "n_averaged" counter."""
    out = {}
    for key, value in state.items():
        if key == "n_averaged":
            continue
        while key.startswith("module."):
            key = key.removeprefix("module.")
        out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return out


def save_checkpoint(path: str, model: nn.Module, model_cfg_or_full_config_dict: dict[str, Any],
                    extra: dict[str, Any] | None = None, ema_state: dict[str, Any] | None = None,
                    storage_options: dict[str, Any] | None = None,
                    description: ModelDescription | None = None) -> None:
    """Write the checkpoint; the file appears whole or not at all (local: temp file + rename; S3: one upload)."""
    model = _unwrap(model)
    config = dict(model_cfg_or_full_config_dict)
    try:
        model_section = _model_section(config)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: the config dict has no valid model section: {err}") from None
    if getattr(model, "kind", None) != model_section["kind"]:
        raise CheckpointError(f"checkpoint {path}: model kind {getattr(model, 'kind', None)!r} does not match the "
                              f"config's model.kind {model_section['kind']!r}")
    payload = {
        "format": FORMAT,
        "config": config,
        "model_config": model_section,
        "cond_channels": int(model.cond_channels),
        "target_channels": int(model.target_channels),
        "state_dict": _clean_state(model.state_dict()),
        "ema_state": _clean_state(ema_state) if ema_state is not None else None,
        "extra": dict(extra or {}),
        "description": description.to_dict() if description is not None else None,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(os.path.abspath(fs_path)), exist_ok=True)
        tmp = f"{fs_path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, fs_path)
    else:
        with fs.open(fs_path, "wb") as f:
            f.write(buf.getvalue())


@dataclass
class Checkpoint:
    """A read checkpoint: the network (None when read without it), its saved config, description and extra."""

    path: str
    config: dict[str, Any]
    description: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    model: nn.Module | None = None


def read_checkpoint(path: str, map_location: str | torch.device = "cpu",
                    storage_options: dict[str, Any] | None = None, use_ema: bool = True,
                    build: bool = True) -> Checkpoint:
    """Read a checkpoint; with `build`, the model on ``map_location`` in eval mode (EMA weights when saved and
    use_ema).  ``sha256`` is the file's hash, recorded in forecasts as the model's identity."""
    from def_ray.models import build_model

    try:
        with fsspec.open(path, "rb", **(storage_options or {})) as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is not a readable torch file: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file")
    ckpt = Checkpoint(path=str(path), config=payload["config"], description=payload.get("description"),
                      extra=payload["extra"], sha256=hashlib.sha256(raw).hexdigest())
    if not build:
        return ckpt
    model = build_model(ModelConfig.model_validate(payload["model_config"]), payload["cond_channels"],
                        payload["target_channels"])
    state = payload["ema_state"] if use_ema and payload["ema_state"] is not None else payload["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the saved config: {err}") from None
    ckpt.model = model.to(map_location).eval()
    return ckpt


def load_checkpoint(path: str, map_location: str | torch.device = "cpu",
                    storage_options: dict[str, Any] | None = None,
                    use_ema: bool = True) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model on ``map_location`` in eval mode, the saved config dict, extra). EMA weights when saved and use_ema."""
    ckpt = read_checkpoint(path, map_location, storage_options, use_ema)
    return ckpt.model, ckpt.config, ckpt.extra
