"""prunelab.timing: contenders timed in turn, the order rotated and reversed from round to round, blocks."""

from __future__ import annotations

import time

import pytest

from prunelab.timing import Timing, paired, quartiles, timed


def test_contenders_take_turns_in_an_order_that_rotates_and_reverses():
    calls: list[int] = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    out = paired(fns, rounds=4, warmup=1, block=2)
    warmup = [0, 1, 2]
    rounds = [[0, 1, 2], [0, 2, 1], [2, 0, 1], [2, 1, 0]]  # rotated by the round; every other one reversed
    assert calls == warmup + [i for order in rounds for i in order for _ in range(2)]
    assert [len(t) for t in out] == [4, 4, 4] and all(isinstance(t, Timing) for ts in out for t in ts)


def test_a_block_leaves_out_its_first_call():
    """The first call of each block sleeps (as a call that starts with another contender's data in the caches is
    slow): with blocks of 3 no round's timing includes it; with blocks of 1 every one does."""
    state = {"last": None}

    def contender(i):
        def fn():
            if state["last"] != i:
                time.sleep(0.05)
            state["last"] = i
        return fn

    fns = [contender(0), contender(1)]
    assert all(t.wall < 0.04 for ts in paired(fns, rounds=3, warmup=0, block=3) for t in ts)
    assert all(t.wall >= 0.05 for ts in paired(fns, rounds=3, warmup=0, block=1) for t in ts)


def test_timed_measures_cpu_and_wall_time_and_syncs_around_the_call():
    events: list[str] = []
    t = timed(lambda: (events.append("call"), time.sleep(0.02)), sync=lambda: events.append("sync"))
    assert events == ["sync", "call", "sync"]
    assert t.wall >= 0.02 and t.cpu < t.wall  # sleeping takes no CPU time


def test_quartiles_and_bad_arguments():
    assert quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0])[1] == 3.0
    with pytest.raises(ValueError, match="rounds and block must be at least 1"):
        paired([lambda: None], rounds=0)
    with pytest.raises(ValueError, match="rounds and block must be at least 1"):
        paired([lambda: None], rounds=2, block=0)
