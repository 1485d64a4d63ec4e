"""The exported checkpoint as an MLflow pyfunc model: physical frames in, ensemble members out, through the one
forecaster (``Forecaster.conditioning_from_frames`` + ``Forecaster.sample``).

Training logs each exported checkpoint with this file as the model's code (MLflow "models from code": the file is
copied into the logged model and run when the model loads; it ends with ``set_model``) and the checkpoint file as
its one artifact, ``checkpoint``.  Loaded anywhere def_ray is installed::

    model = mlflow.pyfunc.load_model("models:/def-ray-diffusion@champion")
    members = model.predict(frames, params={"members": 8, "seed": 0, "lead_hours": 1})

Input: float32 ``(n_past, n_vars, y, x)`` physical frames of the model's variables (``description.variables``, in
that order), oldest first, ending at the init time; y and x a multiple of the network's downsampling.  Output:
float32 ``(members, lead steps, n_targets, y, x)`` in physical units, member k of seed s the same as from the
checkpoint file (``def-ray forecast``, the Serve app).  Params (all optional): ``members``, ``seed``,
``lead_hours``, ``sampler`` and ``steps`` (the checkpoint's chosen sampler when empty / 0), ``store`` (a def_ray
store URL, needed only by models with static fields, which take them from the store's grid: frames must then
cover that whole grid).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from def_ray.forecast.forecaster import ForecastError, Forecaster

__all__ = ["DefRayForecastModel", "DEFAULT_PARAMS", "ARTIFACT"]

ARTIFACT = "checkpoint"  # the key of the checkpoint file in the logged model's artifacts
DEFAULT_PARAMS: dict[str, Any] = {"members": 4, "seed": 0, "lead_hours": 1, "sampler": "", "steps": 0, "store": ""}


class DefRayForecastModel(PythonModel):
    """Loads the checkpoint once (load_context); each predict is one forecast from the given frames."""

    def load_context(self, context):
        self.forecaster = Forecaster.load(context.artifacts[ARTIFACT])

    # model_input typed np.ndarray: a hint MLflow infers no schema from (the logged signature is the schema)
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        p = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        fc = self.forecaster
        if isinstance(model_input, dict):  # {"frames": ...} (a named input) is taken too
            model_input = model_input.get("frames", next(iter(model_input.values()), None))
        frames = np.asarray(model_input, dtype=np.float32)
        store = None
        if p["store"]:
            from def_ray.data.ray_dataset import resolve_storage_options
            from def_ray.data.zarr_store import ZarrStore

            store = ZarrStore(str(p["store"]), resolve_storage_options(str(p["store"]), {}))
        members = int(p["members"])
        if fc.kind == "deterministic" and members != 1:
            if params and params.get("members") is not None:
                raise ForecastError(f"members={members}: the deterministic model makes one member", field="members")
            members = 1  # the default for a diffusion model does not apply
        norm = fc.normaliser(store)
        cond = fc.conditioning_from_frames(frames, store, norm)
        options = fc.sampler_options(None, name=p["sampler"] or None, steps=int(p["steps"]) or None)
        lead_steps = fc.lead_steps(int(p["lead_hours"]), store)
        return fc.sample(cond, members, lead_steps, options, seed=int(p["seed"]), normaliser=norm).astype(np.float32)


mlflow.models.set_model(DefRayForecastModel())
