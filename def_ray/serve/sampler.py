"""The sampler deployment: the batch job's MemberSampler as a Serve replica, cancellable and health-checked.

Like the batch job's actors, a replica loads the network once and keeps it resident (MemberSampler.resident), and
receives the conditioning by reference: the ingress puts it into the object store once per forecast and passes
the ObjectRef to every call; Ray resolves it in the replica (app.ForecastIngress._sample)."""

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from ray import serve

from def_ray.config import SamplerConfig
from def_ray.data.normalise import Normaliser
from def_ray.forecast.members import MemberSampler

__all__ = ["SamplingCancelled", "EnsembleSampler"]


class SamplingCancelled(RuntimeError):
    """Raised inside a sampling thread whose request was cancelled."""


_call = threading.local()


def _cancel_hook(module: Any, args: Any) -> None:
    flag = getattr(_call, "cancel", None)
    if flag is not None and flag.is_set():
        raise SamplingCancelled("the request was cancelled")


def _run_cancellable(flag: threading.Event, fn: Any) -> Any:
    _call.cancel = flag
    try:
        return fn()
    finally:
        _call.cancel = None


@serve.deployment(name="EnsembleSampler", health_check_period_s=10, health_check_timeout_s=60,
                  graceful_shutdown_timeout_s=20)
class EnsembleSampler(MemberSampler):
    """The batch job's MemberSampler as a Serve replica: sampling off the event loop, cancellable, health-checked."""

    def __init__(self, model_uri: str, storage_options: Mapping[str, Any] | None = None, threads: int = 1):
        super().__init__(model_uri, storage_options, threads)
        self.forecaster.model.register_forward_pre_hook(_cancel_hook)
        # one sampling call at a time: the CPU kernel switches that make members independent of their batch
        # (def_ray.models.unet.batch_invariant) are process-wide, so a second concurrent call could switch them
        # back under the first one; admitted requests wait here (parallelism comes from replicas)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample")
        self.check_health()

    async def sample(self, cond: np.ndarray, members: int, lead_steps: int, options: SamplerConfig, seed: int,
                     member_offset: int, normaliser: Normaliser) -> np.ndarray:
        flag = threading.Event()
        job = partial(MemberSampler.sample, self, cond, members, lead_steps, options, seed, member_offset,
                      normaliser)
        future = asyncio.get_running_loop().run_in_executor(self._pool, _run_cancellable, flag, job)
        try:
            return await future
        except asyncio.CancelledError:
            flag.set()  # the sampling thread stops at its next network evaluation
            raise

    def check_health(self) -> None:
        """A tiny forward pass of the network (raises if it fails or returns non-finite values)."""
        import torch

        m = self.forecaster.model
        side = 2 ** len(self.forecaster.config.model.channel_mults)
        device = next(m.parameters()).device
        with torch.no_grad():
            x = torch.zeros(1, m.target_channels, side, side, device=device)
            c = torch.zeros(1, m.cond_channels, side, side, device=device)
            eps = m.predict(c) if m.kind == "deterministic" else m(x, torch.tensor(0, device=device), c)
        if not torch.isfinite(eps).all():
            raise RuntimeError("the network returns non-finite values")
