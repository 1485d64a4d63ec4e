"""Where an exported model lives in MLflow: registered names, the alias, the tracking URI, and MLflow URIs resolved to
a local checkpoint file.

Training (def_ray.train.publish) logs every exported checkpoint as an MLflow model of its run and registers it as
``def-ray-diffusion`` or ``def-ray-deterministic`` (by model kind); the alias ``champion`` goes to the new version
when the model has none yet or the run says ``train.promote: true``.  Forecasts, the Serve app and verification then name a model by file, by URL or by MLflow URI:

    models:/def-ray-diffusion@champion      the version the alias points at
    models:/def-ray-diffusion/3             a version
    models:/def-ray-diffusion/latest        the newest version
    runs:/<run_id>/model                    the model logged by a training run
    mlflow-artifacts:/..., runs:/<run_id>/<path to a .pt>

An MLflow URI is resolved on the tracking server given explicitly (the config's ``tracking.tracking_uri``), else
``$MLFLOW_TRACKING_URI``, else the local store training writes by default (``./mlruns/mlflow.db``).  A model, version
or alias that does not exist is a one-line RegistryError naming the URI (a CheckpointError: exit status 2).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from def_ray.models.checkpoint import CheckpointError

__all__ = ["REGISTERED_NAMES", "CHAMPION", "MODEL_NAME", "RegistryError", "registered_name", "local_tracking_uri",
           "tracking_uri_for", "is_mlflow_uri", "pin_model_uri", "resolve_mlflow_uri"]

REGISTERED_NAMES = {"diffusion": "def-ray-diffusion", "deterministic": "def-ray-deterministic"}
CHAMPION = "champion"  # the alias of the version to serve (train.promote)
MODEL_NAME = "model"  # the name of the logged model in its run (runs:/<run_id>/model)
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))(?P<path>/.*)?$")


class RegistryError(CheckpointError):
    """An MLflow URI that names no model, version, alias or artifact; the message names the URI."""


def registered_name(kind: str) -> str:
    """The registry name of a model kind ('diffusion' -> 'def-ray-diffusion')."""
    try:
        return REGISTERED_NAMES[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; registered names exist for "
                         f"{sorted(REGISTERED_NAMES)}") from None


def local_tracking_uri(create: bool = True) -> str:
    """The local MLflow store of training's default: a sqlite database in ./mlruns (absolute, so workers agree)."""
    root = Path("mlruns").resolve()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def tracking_uri_for(explicit: str | None = None) -> str:
    """The tracking server an MLflow URI is resolved on: `explicit`, else $MLFLOW_TRACKING_URI, else the local store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(create=False)


def is_mlflow_uri(uri: str) -> bool:
    return str(uri).startswith(MLFLOW_SCHEMES)


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _version_of(uri: str, tracking_uri: str) -> tuple[str, str, str]:
    """(name, version, path inside the model) of a models:/ URI, checked on the registry; RegistryError otherwise."""
    m = _MODELS_URI.match(uri)
    if m is None:
        raise RegistryError(f"{uri} is not a registered model URI: expected models:/NAME@ALIAS, models:/NAME/VERSION "
                            "or models:/NAME/latest")
    name, alias, version, path = m["name"], m["alias"], m["version"], (m["path"] or "")
    client = _client(tracking_uri)
    where = f"in the MLflow registry at {tracking_uri}"
    try:
        models = client.search_registered_models(filter_string=f"name = '{name}'")
    except Exception as err:  # noqa: BLE001 - an unreachable server or a store without a registry
        raise RegistryError(f"{uri}: the MLflow registry at {tracking_uri} cannot be read ({_one_line(err)})") from None
    if not any(rm.name == name for rm in models):
        known = sorted(rm.name for rm in client.search_registered_models(max_results=50))
        raise RegistryError(f"{uri}: no registered model {name!r} {where} (registered: {', '.join(known) or 'none'})")
    try:
        if alias is not None:
            aliases = client.get_registered_model(name).aliases or {}
            if alias not in aliases:
                raise RegistryError(f"{uri}: registered model {name!r} has no alias {alias!r} {where} (aliases: "
                                    f"{', '.join(f'{a} -> v{v}' for a, v in sorted(aliases.items())) or 'none'})")
            version = str(aliases[alias])
        elif version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise RegistryError(f"{uri}: registered model {name!r} has no versions {where}")
            version = str(max(int(v.version) for v in versions))
        elif not version.isdigit():
            raise RegistryError(f"{uri}: version {version!r} is not a number (or 'latest'); aliases go after '@'")
        else:
            client.get_model_version(name, version)
    except RegistryError:
        raise
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST and kin
        raise RegistryError(f"{uri}: registered model {name!r} has no version {version} {where}") from None
    return name, version, path


def pin_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """models:/NAME@ALIAS or models:/NAME/latest -> models:/NAME/VERSION (what the alias points at now), so that every
    process of one deployment loads the same version even when the alias moves meanwhile; other URIs unchanged."""
    if not str(uri).startswith("models:/"):
        return uri
    name, version, path = _version_of(uri, tracking_uri_for(tracking_uri))
    return f"models:/{name}/{version}{path}"


_cache: dict[tuple[str, str], str] = {}
_cache_lock = threading.Lock()


def resolve_mlflow_uri(uri: str, tracking_uri: str | None = None) -> str:
    """The local path of the checkpoint file an MLflow URI names (downloaded once per process and version); a
    folder (a logged model) must hold exactly one *.pt file.  RegistryError, one line naming the URI, otherwise."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in job logs
    tracking = tracking_uri_for(tracking_uri)
    source = pin_model_uri(uri, tracking) if uri.startswith("models:/") else uri
    key = (tracking, source)
    with _cache_lock:
        if key in _cache and Path(_cache[key]).exists():
            return _cache[key]
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking))
    except Exception as err:  # noqa: BLE001 - a run, model or artifact that does not exist, a server down
        raise RegistryError(f"{uri}: cannot be downloaded from the MLflow server at {tracking} "
                            f"({_one_line(err)})") from None
    if local.is_dir():
        found = sorted(local.rglob("*.pt"))
        if len(found) != 1:
            raise RegistryError(f"MLflow artifact {uri} holds {len(found)} *.pt files ({[p.name for p in found]}); "
                                "name the checkpoint file in the URI")
        local = found[0]
    with _cache_lock:
        if source.startswith(("models:/", "runs:/")):  # a registered version or a run's artifact does not change
            _cache[key] = str(local)
    return str(local)
