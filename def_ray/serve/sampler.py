"""The sampler deployment: the batch job's MemberSampler as a Serve replica, cancellable and health-checked.

Like the batch job's actors, a replica loads the network once and keeps it resident (MemberSampler.resident), and
receives the conditioning by reference: the ingress puts it into the object store once per forecast and passes
the ObjectRef to every call; Ray resolves it in the replica (app.ForecastIngress._sample).

Shared passes (issue 19 item 5): calls with the same conditioning (compared by a digest of its bytes), lead, sampler
options, seed and normaliser draw their members together.  A replica samples one job at a time; a call joins the
job that is running when that job's member ranges cover its own, else the job still waiting for its key (opened by
the first such call, started when the replica is free and serve.batch_wait_timeout_s after it opened), whose ranges
become the union of its callers'.  Member k's noise comes from member_generator(seed, k) and the network is batch
invariant (samplers.py), so every caller gets exactly the members it would get alone (bit-identical on the CPU:
tests/serve/test_shared_passes.py; on CUDA as the batch job across member batch sizes).  A job is cancelled only
when every caller waiting for it is.

Metrics (ray.serve.metrics: ray.util.metrics tagged with deployment, replica and application; exported by every
node's metrics agent to Prometheus and the Ray dashboard, prefixed ``ray_``): def_ray_sampler_requests (calls),
def_ray_sampler_shared_requests (calls that joined another caller's job), def_ray_members_sampled (members drawn),
def_ray_member_pass_seconds (seconds of one member through one network evaluation: a job's wall time / (members x
steps x lead steps)), def_ray_sampler_queue_length (calls waiting in the replica, running job included)."""

import asyncio
import hashlib
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from ray import serve

from def_ray.config import SamplerConfig
from def_ray.data.normalise import Normaliser
from def_ray.forecast.members import MemberSampler

__all__ = ["SamplingCancelled", "EnsembleSampler", "cond_digest", "merge_ranges"]


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


def cond_digest(cond: np.ndarray) -> str:
    """A digest of the conditioning's shape, dtype and bytes: equal conditioning, equal digest."""
    a = np.ascontiguousarray(cond)
    h = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=16)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching [start, stop) member ranges merged, in order."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


class _Job:
    """One sampling run of a replica, shared by every call with its key whose members it covers."""

    def __init__(self, key: tuple, cond: np.ndarray, args: tuple, opened: float):
        self.key, self.cond, self.args, self.opened = key, cond, args, opened
        self.ranges: list[tuple[int, int]] = []  # the callers' [start, stop)
        self.intervals: list[tuple[int, int]] = []  # what it draws (merged ranges), fixed when it starts
        self.started, self.waiters = False, 0
        self.flag = threading.Event()
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits

    def covers(self, lo: int, hi: int) -> bool:
        return self.started and any(a <= lo and hi <= b for a, b in self.intervals)


@serve.deployment(name="EnsembleSampler", health_check_period_s=10, health_check_timeout_s=60,
                  graceful_shutdown_timeout_s=20)
class EnsembleSampler(MemberSampler):
    """The batch job's MemberSampler as a Serve replica: sampling off the event loop, cancellable, health-checked;
    calls for the same forecast share their network passes (module docstring)."""

    def __init__(self, model_uri: str, storage_options: Mapping[str, Any] | None = None, threads: int = 1,
                 batch_wait_timeout_s: float = 0.0):
        from ray.serve import metrics  # ray.util.metrics tagged with deployment, replica, application

        super().__init__(model_uri, storage_options, threads)
        self.forecaster.model.register_forward_pre_hook(_cancel_hook)
        # one sampling call at a time: the CPU kernel switches that make members independent of their batch
        # (def_ray.models.unet.batch_invariant) are process-wide, so a second concurrent call could switch them
        # back under the first one; admitted requests wait here (parallelism comes from replicas)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample")
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self._queue: deque[_Job] = deque()  # jobs not started yet, in the order they were opened
        self._open: dict[tuple, _Job] = {}  # the job not started yet of each key
        self._running: _Job | None = None
        self._runner: asyncio.Task | None = None
        self._waiting = 0
        self.jobs = 0
        self.m_requests = metrics.Counter("def_ray_sampler_requests", description="member-range calls received "
                                          "by an EnsembleSampler replica")
        self.m_shared = metrics.Counter("def_ray_sampler_shared_requests", description="calls served by a "
                                        "sampling job another call opened (shared network passes)")
        self.m_members = metrics.Counter("def_ray_members_sampled", description="ensemble members drawn "
                                         "(a member shared by several calls counts once)")
        self.m_pass = metrics.Histogram("def_ray_member_pass_seconds", description="seconds of one member "
                                        "through one network evaluation (job wall time / (members x steps x "
                                        "lead steps))", boundaries=[1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1,
                                                                    0.3, 1, 3, 10])
        self.m_queue = metrics.Gauge("def_ray_sampler_queue_length", description="calls waiting in an "
                                     "EnsembleSampler replica, the running job's included")
        self.m_queue.set(0)
        self.check_health()

    async def sample(self, cond: np.ndarray, members: int, lead_steps: int, options: SamplerConfig, seed: int,
                     member_offset: int, normaliser: Normaliser) -> np.ndarray:
        import ray

        self.m_requests.inc()
        if isinstance(cond, ray.ObjectRef):
            cond = await cond
        if members < 1:  # the forecaster's own message
            return await asyncio.get_running_loop().run_in_executor(
                None, partial(MemberSampler.sample, self, cond, members, lead_steps, options, seed, member_offset,
                              normaliser))
        digest = await asyncio.to_thread(cond_digest, cond)
        key = (digest, int(lead_steps), options.model_dump_json(), int(seed), repr(normaliser))
        lo, hi = int(member_offset), int(member_offset) + int(members)
        running = self._running
        if running is not None and running.key == key and running.covers(lo, hi) and not running.flag.is_set():
            job = running
        else:
            job = self._open.get(key)
            if job is None:
                job = _Job(key, cond, (lead_steps, options, seed, normaliser), time.monotonic())
                self._open[key] = job
                self._queue.append(job)
            job.ranges.append((lo, hi))
        if job.waiters:
            self.m_shared.inc()
        job.waiters += 1
        self._waiting += 1
        self.m_queue.set(self._waiting)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_jobs())
        try:
            parts = await asyncio.shield(job.done)
        except asyncio.CancelledError:
            job.waiters -= 1
            if not job.started:
                job.ranges.remove((lo, hi))
            if job.waiters == 0:
                if job.started:
                    job.flag.set()  # the sampling thread stops at its next network evaluation
                elif self._open.get(job.key) is job:
                    del self._open[job.key]  # never started (_run_jobs skips it); later calls open a new one
            raise
        finally:
            self._waiting -= 1
            self.m_queue.set(self._waiting)
        for (a, b), arr in parts.items():
            if a <= lo and hi <= b:
                return arr[lo - a:hi - a]
        raise AssertionError(f"members {lo}..{hi - 1} missing from the job's {list(parts)}")

    async def _run_jobs(self) -> None:
        """The replica's jobs one after another, each in the sampling thread."""
        loop = asyncio.get_running_loop()
        while self._queue:
            job = self._queue[0]
            wait = job.opened + self.batch_wait_timeout_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # callers of the same forecast may still join
            self._queue.popleft()
            if self._open.get(job.key) is job:
                del self._open[job.key]
            if job.waiters == 0:
                job.done.cancel()
                continue
            job.intervals, job.started, self._running = merge_ranges(job.ranges), True, job
            try:
                job.done.set_result(await loop.run_in_executor(self._pool, _run_cancellable, job.flag,
                                                               partial(self._draw, job)))
            except BaseException as err:  # noqa: BLE001 (every caller gets the job's error)
                if not job.done.done():
                    job.done.set_exception(err if isinstance(err, Exception) else SamplingCancelled(str(err)))
            finally:
                self._running = None

    def _draw(self, job: _Job) -> dict[tuple[int, int], np.ndarray]:
        """The job's member intervals (sampling thread)."""
        lead_steps, options, seed, normaliser = job.args
        out, started = {}, time.perf_counter()
        for a, b in job.intervals:
            out[(a, b)] = MemberSampler.sample(self, job.cond, b - a, lead_steps, options, seed, a, normaliser)
        members = sum(b - a for a, b in job.intervals)
        self.jobs += 1
        self.m_members.inc(members)
        passes = members * max(1, int(options.steps or 1)) * max(1, int(lead_steps))
        self.m_pass.observe((time.perf_counter() - started) / passes)
        return out

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
