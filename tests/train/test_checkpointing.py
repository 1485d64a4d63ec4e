"""The training state round-trips, RNG state included."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from def_ray.train.checkpointing import TrainState, load_state, rng_state, save_state, set_rng_state


def test_state_round_trip_restores_counters_weights_and_rng(tmp_path):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    rng = rng_state()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    state = TrainState(epoch=3, global_step=17, model=lin.state_dict(), optimizer=opt.state_dict(), rng=[rng],
                       mlflow_run_id="abc", config={"name": "x"}, restored_from=[1])
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert (back.epoch, back.global_step, back.mlflow_run_id, back.restored_from) == (3, 17, "abc", [1])
    assert torch.equal(back.model["weight"], lin.weight)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(back.optimizer)
    assert int(opt2.state_dict()["state"][0]["step"]) == 1
    torch.manual_seed(99)
    np.random.seed(99)
    set_rng_state(back.rng[0])
    assert torch.equal(torch.rand(3), expect[0])
    np.testing.assert_array_equal(np.random.rand(3), expect[1])
    assert random.random() == expect[2]


def test_loading_something_else_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a def_ray training checkpoint"):
        load_state(tmp_path)
