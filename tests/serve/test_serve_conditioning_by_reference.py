"""The Serve ingress puts the conditioning into Ray's object store once per forecast and hands every sampler
replica call the ObjectRef (Ray resolves it in the replica), not the array: counted on the ingress's `_sample`
with a recording handle in place of the EnsembleSampler deployment.  That the replicas then sample from it, with
the batch job's members, is tests/serve/test_serve_app.py; that a sampler keeps its model resident,
tests/forecast/test_conditioning_by_reference.py (EnsembleSampler is a MemberSampler)."""

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
import ray

from def_ray.config import SamplerConfig
from def_ray.serve import app as app_module

pytestmark = pytest.mark.ray


class _Call:
    def __init__(self, result):
        self.result, self.cancelled = result, False

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.result

    def cancel(self):
        self.cancelled = True


class _RecordingSampler:
    """Stands in for the EnsembleSampler deployment handle: records each `sample.remote` call's arguments."""

    def __init__(self):
        self.calls = []
        self.sample = SimpleNamespace(remote=self._remote)

    def _remote(self, cond, count, lead_steps, options, seed, offset, normaliser):
        self.calls.append((cond, count, offset))
        return _Call(np.full((count, lead_steps, 1, 4, 4), offset, dtype=np.float32))


@pytest.mark.parametrize("members,replicas", [(2, 1), (7, 2), (12, 4)])
def test_one_put_per_forecast_and_every_call_gets_the_reference(ray_session, monkeypatch, members, replicas):
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, *a, **k: puts.append(value) or real_put(value, *a, **k))
    ingress = SimpleNamespace(cfg=SimpleNamespace(serve=SimpleNamespace(sampler_replicas=replicas)),
                              sampler=_RecordingSampler())
    cond = np.random.default_rng(0).standard_normal((8, 4, 4)).astype(np.float32)
    plan = {"options": SamplerConfig(member_batch_size=2), "members": members, "lead_steps": 1, "normaliser": None}
    ens = asyncio.run(app_module.ForecastIngress.func_or_class._sample(ingress, cond, plan, 3,
                                                                       time.monotonic() + 60))
    calls = ingress.sampler.calls
    assert len(calls) == min(replicas, -(-members // 2)) and ens.shape[0] == members
    assert len(puts) == 1 and puts[0] is cond  # once, whatever the number of member ranges
    assert all(isinstance(c, ray.ObjectRef) for c, _, _ in calls)
    assert len({c.hex() for c, _, _ in calls}) == 1
    np.testing.assert_array_equal(ray.get(calls[0][0]), cond)
    assert [o for _, _, o in calls] == sorted(o for _, _, o in calls) and sum(n for _, n, _ in calls) == members
