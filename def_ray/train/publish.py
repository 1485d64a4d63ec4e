"""The exported checkpoint as an MLflow model of its training run, registered, promoted to ``champion`` when asked.

After training exports its checkpoint (one file, def_ray.models.checkpoint), `publish_model`:

1. logs it as an MLflow pyfunc model named ``model`` in the run (``runs:/<run_id>/model``): the code is
   def_ray/forecast/mlflow_model.py (MLflow "models from code"; the training job only hands MLflow that file's
   path and never imports the forecast layer), the one artifact is the checkpoint file, with a signature
   (``(n_past, n_vars, y, x)`` float32 physical frames -> ``(members, lead, n_targets, y, x)`` float32 members,
   params members / seed / lead_hours / sampler / steps / store) and a tiny input example (the training means on
   the smallest grid the network takes; none for models with static fields, which need their store's grid);
2. registers it as ``def-ray-diffusion`` or ``def-ray-deterministic`` (by model kind) and points the alias
   ``champion`` at the new version when ``promote`` says so (``train.promote``: by default only when the model has
   no champion yet, so that an experiment never takes the alias from the version being served);
3. tags the version and the run: ``mlflow.source.git.commit`` and ``code_version`` (package version + git commit,
   as the checkpoint's provenance records it), ``data_period`` (the training windows' times), ``exported_epoch``
   (1-based, as the console's "epoch n/N"), ``export`` and the checkpoint's sha256.

Like all tracking it never stops training: Tracker guards it (one warning, then tracking is off).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from def_ray.models.description import ModelDescription
from def_ray.models.registry import CHAMPION, MODEL_NAME, registered_name

ARTIFACT = "checkpoint"  # the checkpoint's key in the logged model's artifacts (def_ray.forecast.mlflow_model.ARTIFACT)

__all__ = ["PYFUNC_CODE", "publish_model", "signature_for", "input_example_for", "git_commit", "model_tags"]

# the pyfunc's code, a file of the forecast layer handed to MLflow by path (see the module doc)
PYFUNC_CODE = Path(__file__).resolve().parents[1] / "forecast" / "mlflow_model.py"


def git_commit(code_version: str) -> str | None:
    """The commit in a code_version '0.1.0+g<commit>[.dirty]' (def_ray.models.description.code_version)."""
    m = re.search(r"\+g([0-9a-f]{7,40})", code_version or "")
    return m.group(1) if m else None


def model_tags(description: ModelDescription, *, exported_epoch: int | None, export: str,
               sha256: str) -> dict[str, str]:
    """The tags of a published model (run and model version alike)."""
    prov = description.provenance or {}
    code_version = str(prov.get("code_version") or "")
    tags = {"code_version": code_version, "data_period": str(prov.get("data_period") or ""),
            "model_kind": description.kind, "export": export, "checkpoint_sha256": sha256,
            "exported_epoch": "" if exported_epoch is None else str(exported_epoch)}
    commit = git_commit(code_version)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit + (".dirty" if code_version.endswith(".dirty") else "")
    return {k: v for k, v in tags.items() if v}


def _downsampling(description: ModelDescription, config: Mapping[str, Any]) -> int:
    model = config.get("model", {}) if isinstance(config.get("model"), Mapping) else config
    return 2 ** (len(model.get("channel_mults", [1])) - 1) * int(model.get("patch", 1) or 1)


def signature_for(description: ModelDescription, default_members: int):
    """The pyfunc's signature: frames (n_past, n_vars, y, x) -> members (members, lead, n_targets, y, x), params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    n_vars, n_targets = len(description.variables), len(description.targets)
    inputs = Schema([TensorSpec(np.dtype(np.float32), (description.n_past, n_vars, -1, -1))])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_targets, -1, -1))])
    params = ParamSchema([ParamSpec("members", "long", int(default_members)), ParamSpec("seed", "long", 0),
                          ParamSpec("lead_hours", "long", 1), ParamSpec("sampler", "string", ""),
                          ParamSpec("steps", "long", 0), ParamSpec("store", "string", "")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example_for(description: ModelDescription, config: Mapping[str, Any]) -> np.ndarray | None:
    """Tiny physical frames: each variable at its training mean on the smallest square grid (>= 8 points) the
    network takes; None for models with static fields (they need their store's whole grid)."""
    if description.static_fields:
        return None
    factor = _downsampling(description, config)
    side = factor * max(1, -(-8 // factor))
    shape = (description.n_past, len(description.variables), side, side)
    norm = description.normaliser
    if norm is None:
        return np.zeros(shape, dtype=np.float32)
    return norm.denormalise(np.zeros(shape, dtype=np.float32), description.variables)


def _local_copy(uri: str, storage_options: Mapping[str, Any] | None, tmp: str) -> str:
    import fsspec

    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    local = str(Path(tmp) / Path(path).name)
    fs.get_file(path, local)
    return local


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("def_ray", "mlflow", "torch", "numpy"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's console output while logging (artifact progress bars, "Successfully registered model ...", INFO lines)
    held back unless verbose; shown after all if the logging fails."""
    if os.environ.get("DEF_RAY_VERBOSE", "").strip().lower() in ("1", "true", "yes"):
        yield
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    held = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("mlflow", "mlflow.pyfunc", "mlflow.models")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(held), contextlib.redirect_stdout(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def publish_model(client: Any, tracking_uri: str, run_id: str, checkpoint_uri: str, description: ModelDescription,
                  config: Mapping[str, Any], *, storage_options: Mapping[str, Any] | None = None,
                  exported_epoch: int | None = None, export: str = "best", alias: str = CHAMPION,
                  promote: bool | None = None) -> dict[str, Any]:
    """Log, register, alias and tag (see the module doc); returns {"name", "version", "model_uri", "tags",
    "promoted", "champion"}: model_uri is the alias when promoted, else the version; champion is the version the
    alias points at afterwards (None when there is none).

    Raises on any MLflow failure: the caller guards it (Tracker._guard)."""
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    name = registered_name(description.kind)
    default_members = 1 if description.kind == "deterministic" else 4
    with tempfile.TemporaryDirectory() as tmp:
        local = _local_copy(checkpoint_uri, storage_options, tmp)
        sha256 = hashlib.sha256(Path(local).read_bytes()).hexdigest()
        tags = model_tags(description, exported_epoch=exported_epoch, export=export, sha256=sha256)
        # the logged model in the run's experiment (Model.log alone would put it in the process's active one)
        logged = client.create_logged_model(experiment_id=client.get_run(run_id).info.experiment_id,
                                            name=MODEL_NAME, source_run_id=run_id,
                                            model_type=f"def_ray.{description.kind}", tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")})
        with _use_tracking_uri(tracking_uri), _quiet():
            info = Model.log(None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
                             python_model=str(PYFUNC_CODE), artifacts={ARTIFACT: local},
                             signature=signature_for(description, default_members),
                             input_example=input_example_for(description, config), pip_requirements=_requirements(),
                             registered_model_name=name, await_registration_for=60)
    version = str(info.registered_model_version)
    champion = (client.get_registered_model(name).aliases or {}).get(alias)
    promoted = champion is None if promote is None else bool(promote)
    if promoted:
        client.set_registered_model_alias(name, alias, version)
        champion = version
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "registered_model", f"models:/{name}/{version}" + (f" (@{alias})" if promoted else ""))
    return {"name": name, "version": version, "tags": tags, "promoted": promoted,
            "champion": None if champion is None else str(champion),
            "model_uri": f"models:/{name}@{alias}" if promoted else f"models:/{name}/{version}"}
