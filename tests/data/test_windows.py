"""Window index logic: validity of every frame, time-ordered splits, the gap between them."""

from __future__ import annotations

import numpy as np
import pytest

from def_ray.data.windows import WindowError, frame_offsets, split_windows, valid_starts, window_times


def test_frame_offsets_follow_dt():
    assert frame_offsets(4, 1).tolist() == [0, 1, 2, 3, 4]
    assert frame_offsets(2, 3).tolist() == [0, 3, 6]
    with pytest.raises(WindowError, match="n_past"):
        frame_offsets(0, 1)


def test_valid_starts_skip_uncommitted_frames():
    committed = np.ones(12, bool)
    committed[5] = False
    # n_past=2, dt=1: window s uses s, s+1, s+2 -> every s with 5 in [s, s+2] is invalid (3, 4, 5)
    assert valid_starts(committed, 2, 1).tolist() == [0, 1, 2, 6, 7, 8, 9]
    # dt=2: window s uses s, s+2, s+4 -> invalid when 5 in {s, s+2, s+4}: s = 1, 3, 5
    assert valid_starts(committed, 2, 2).tolist() == [0, 2, 4, 6, 7]
    assert valid_starts(np.zeros(3, bool), 1, 1).size == 0


@pytest.mark.parametrize("n_past,dt,gap", [(4, 1, 4), (2, 3, 6), (3, 1, 0), (1, 2, 1)])
def test_splits_are_time_ordered_and_separated_by_the_gap(n_past, dt, gap):
    rng = np.random.default_rng(0)
    committed = rng.random(400) > 0.05
    s = split_windows(committed, n_past, dt, val_fraction=0.2, test_fraction=0.2, gap=gap)
    times = {k: window_times(s[k], n_past, dt) for k in ("train", "val", "test")}
    for k, starts in (("train", s.train), ("val", s.val), ("test", s.test)):
        assert starts.size > 0
        # every frame of every window is committed
        assert committed[window_times(starts, n_past, dt)].all()
        lo, hi = s.ranges[k]
        assert times[k].min() >= lo and times[k].max() < hi
    # strictly ordered in time, and at least `gap` indices that no window reads between splits
    assert times["val"].min() - times["train"].max() > gap
    assert times["test"].min() - times["val"].max() > gap
    assert not set(times["train"]) & set(times["val"]) and not set(times["val"]) & set(times["test"])


def test_split_sizes_follow_the_fractions():
    committed = np.ones(1000, bool)
    s = split_windows(committed, 4, 1, val_fraction=0.1, test_fraction=0.2, gap=4)
    # test takes the last 200 steps (196 windows of span 5), val 100 steps minus the 4-step gap before test
    assert s.ranges["test"] == (800, 1000) and s.test.size == 196
    assert s.ranges["val"] == (700, 796) and s.val.size == 92
    assert s.ranges["train"] == (0, 696) and s.train.size == 692


def test_zero_fractions_give_all_windows_to_train():
    committed = np.ones(20, bool)
    s = split_windows(committed, 2, 1, 0.0, 0.0, gap=3)
    assert s.train.tolist() == list(range(18)) and s.val.size == 0 and s.test.size == 0


def test_too_short_store_names_the_split_and_numbers():
    with pytest.raises(WindowError, match=r"split 'val' has no complete window.*gap=4"):
        split_windows(np.ones(30, bool), 4, 1, val_fraction=0.1, test_fraction=0.1, gap=4)
    with pytest.raises(WindowError, match="no committed"):
        split_windows(np.zeros(10, bool), 1, 1, 0.1, 0.1, 1)
    with pytest.raises(WindowError, match="gap"):
        split_windows(np.ones(10, bool), 1, 1, 0.1, 0.1, -1)
