"""Member batches sized from free memory: the measurement sees a pass's memory, and "auto" keeps the members."""

import pytest
import torch

from def_ray.config import SamplerConfig
from def_ray.models import build_model
from def_ray.models import memory
from def_ray.models.memory import PeakMemory, members_that_fit
from tests.models.helpers import tiny_cfg

MIB = 2**20


def _hold(mib: int):
    def run():
        held = torch.ones(mib * MIB // 4)  # ones() touches every page: all of it is resident
        return float(held[-1])

    return run


def test_peak_memory_sees_what_a_pass_holds_on_the_cpu():
    with PeakMemory("cpu") as pm:
        _hold(64)()
    if not pm.ok:
        pytest.skip("this system does not let a process reset its peak resident set (/proc/self/clear_refs)")
    # the 64 MiB tensor, give or take what the process hands back or touches meanwhile (measured 63.7 MiB once:
    # pages of the interpreter's own released while the tensor was filled), plus the allocator's slack
    assert 60 * MIB <= pm.peak < 96 * MIB


def test_members_that_fit_divide_half_the_free_memory_by_one_members_pass():
    run = _hold(64)
    # 60 to 96 MiB per member (as above), half of 640 MiB free: 3 to 5 members
    assert 3 <= members_that_fit(run, "cpu", 50, free=640 * MIB) <= 5
    assert members_that_fit(run, "cpu", 50, free=16 * MIB) == 1       # never fewer than one
    assert members_that_fit(run, "cpu", 7, free=2**40) == 7          # never more than asked for
    # a floor above the measured pass bounds the batch even when the pass looks free
    assert members_that_fit(lambda: None, "cpu", 50, floor_bytes=100 * MIB, free=1000 * MIB) == 5


def test_auto_member_batch_follows_free_memory_and_keeps_the_members(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(timesteps=10), 8, 2).eval()
    cond = torch.randn(8, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(sampler="dpmpp", steps=3, seed=4)
    fixed = model.sample(cond, 12, member_batch_size=12, **kw)

    batches: list[int] = []
    forward = model.forward

    def counting(x, t, c):
        batches.append(x.shape[0])
        return forward(x, t, c)

    monkeypatch.setattr(model, "forward", counting)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 0)  # nothing free: one member at a time
    one_by_one = model.sample(cond, 12, member_batch_size="auto", **kw)
    assert batches[0] == 1 and set(batches[1:]) == {1}  # the probe, then 12 members x 3 steps of one
    assert len(batches) == 1 + 12 * 3
    batches.clear()
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**40)  # plenty: all members together
    together = model.sample(cond, 12, member_batch_size="auto", **kw)
    assert batches == [1, 12, 12, 12]
    assert torch.equal(one_by_one, fixed) and torch.equal(together, fixed)


def test_member_batch_size_accepts_auto_and_rejects_nonsense():
    assert SamplerConfig(member_batch_size="auto").member_batch_size == "auto"
    for bad in (0, -3, "many"):
        with pytest.raises(ValueError, match="member_batch_size"):
            SamplerConfig(member_batch_size=bad)
