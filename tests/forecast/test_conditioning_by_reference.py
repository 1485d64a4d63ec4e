"""The batch job's actors: the conditioning crosses to them once per forecast (one ray.put, every sampler call
gets the ObjectRef, never the array), and each actor keeps its model resident across calls.  The Serve side of
the same contract: tests/serve/test_conditioning_by_reference.py."""

import numpy as np
import pytest
import ray

from def_ray.forecast.batch import sample_with_actors
from def_ray.forecast.forecaster import Forecaster
from def_ray.forecast.members import MemberSampler
from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("byref")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url)
    ckpt = tiny_checkpoint(root / "m.pt", cfg)
    fc = Forecaster.load(ckpt, light=True)
    norm = fc.normaliser(store)
    cond = fc.conditioning(store, fc.init_time(store), norm)
    options = fc.sampler_options(cfg.forecast.sampler, member_batch_size=2)
    return ckpt, cond, norm, options


@pytest.fixture
def traffic(monkeypatch):
    """Counts ray.put calls in this process and records the first argument of every actor `sample` call."""
    puts, firsts = [], []
    real_put, real_remote = ray.put, ray.actor.ActorMethod.remote

    def put(value, *args, **kwargs):
        puts.append(value)
        return real_put(value, *args, **kwargs)

    def remote(self, *args, **kwargs):
        if getattr(self, "_method_name", "") == "sample":
            firsts.append(args[0])
        return real_remote(self, *args, **kwargs)

    monkeypatch.setattr(ray, "put", put)
    monkeypatch.setattr(ray.actor.ActorMethod, "remote", remote)
    return puts, firsts


@pytest.mark.parametrize("members", [2, 5])
def test_the_batch_job_puts_the_conditioning_once_whatever_the_number_of_chunks(ray_session, parts, traffic,
                                                                              members):
    ckpt, cond, norm, options = parts
    puts, firsts = traffic
    ens = sample_with_actors(ckpt, {}, cond, members, 1, options, 7, norm, num_actors=2, cpus=0.5, gpus=0)
    assert ens.shape[:2] == (members, 1)
    chunks = -(-members // options.member_batch_size)  # 1 or 3 calls
    assert len(puts) == 1 and puts[0] is cond  # one put per forecast
    assert len(firsts) == chunks and all(isinstance(f, ray.ObjectRef) for f in firsts)
    assert len({f.hex() for f in firsts}) == 1  # the same reference in every call


def test_auto_member_batches_give_each_actor_one_share_and_the_same_members(ray_session, parts, traffic):
    ckpt, cond, norm, options = parts
    puts, firsts = traffic
    kw = dict(num_actors=2, cpus=0.5, gpus=0)
    fixed = sample_with_actors(ckpt, {}, cond, 5, 1, options, 7, norm, **kw)
    firsts.clear()
    auto = options.model_copy(update={"member_batch_size": "auto"})
    ens = sample_with_actors(ckpt, {}, cond, 5, 1, auto, 7, norm, **kw)
    assert len(firsts) == 2  # one share per actor; each sizes its network batches from its own free memory
    np.testing.assert_array_equal(ens, fixed)  # members do not depend on the batching (CPU)


def test_a_sampler_actor_keeps_its_model_resident(ray_session, parts):
    ckpt, cond, norm, options = parts
    actor = ray.remote(MemberSampler).options(num_cpus=0.5).remote(ckpt)
    try:
        before = ray.get(actor.resident.remote())
        ref = ray.put(cond)
        got = ray.get([actor.sample.remote(ref, 2, 1, options, 7, offset, norm) for offset in (0, 2, 4)])
        after = ray.get(actor.resident.remote())
    finally:
        ray.kill(actor)
    assert before["loads"] == after["loads"] == 1 and before["calls"] == 0
    assert after["calls"] == 3 and after["model"] == before["model"] and after["pid"] == before["pid"]
    # the same members as one local call: chunks are placed by member_offset
    local = Forecaster.load(ckpt).sample(cond, 6, 1, options, seed=7, normaliser=norm)
    np.testing.assert_array_equal(np.concatenate(got), local)


def test_a_reference_passed_inside_the_call_is_fetched(ray_session, parts):
    import torch

    ckpt, cond, norm, options = parts
    threads = torch.get_num_threads()
    try:
        sampler = MemberSampler(ckpt)
        by_ref = sampler.sample(ray.put(cond), 2, 1, options, 7, 0, norm)
        by_value = sampler.sample(cond, 2, 1, options, 7, 0, norm)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(by_ref, by_value)
