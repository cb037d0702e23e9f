"""Targets as ipyparallel writes them (client[-1], client[::2] ...), resolved without services."""

from __future__ import annotations

import time

import pytest

from enginefarm.client.targets import view_targets, wait_for_count
from enginefarm.errors import InvalidEngineID, NoEnginesRegistered, TimeoutError

# Live ids need not be contiguous: engine 1 has left.
LIVE = [0, 2, 3, 5]


@pytest.mark.parametrize(("key", "expected"), [
    (2, 2),
    (-1, 5),
    (-4, 0),
    (slice(None), [0, 2, 3, 5]),
    (slice(None, None, 2), [0, 3]),
    (slice(1, 3), [2, 3]),
    (slice(-2, None), [3, 5]),
    (slice(None, None, -1), [5, 3, 2, 0]),
    ([5, 0], [5, 0]),
    ((2, 3), [2, 3]),
    (range(2, 4), [2, 3]),
    ("all", "all"),
])
def test_keys_resolve_against_the_sorted_live_ids(key: object, expected: object) -> None:
    assert view_targets(key, LIVE, "c") == expected


@pytest.mark.parametrize("key", [
    1,                  # not alive
    7, -5,              # out of range
    slice(10, 20),      # selects nothing
    slice(None, None, 0),
    slice("a", None),
    [0, 1], [], [0, -1], [True],
    "some", 1.5, True, None, {0: 1},
])
def test_bad_keys_are_invalid_engine_ids(key: object) -> None:
    with pytest.raises(InvalidEngineID):
        view_targets(key, LIVE, "c")


def test_a_slice_with_no_engines_says_none_are_registered() -> None:
    with pytest.raises(NoEnginesRegistered):
        view_targets(slice(None), [], "c")
    with pytest.raises(InvalidEngineID, match="out of range: 0 engines"):
        view_targets(-1, [], "c")


def test_wait_for_count_returns_once_enough_are_alive() -> None:
    counts = iter([0, 1, 2, 3])
    assert wait_for_count(lambda: next(counts), 3, 10.0, "c") is None


def test_wait_for_count_times_out_with_what_it_saw() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="1 of 3 engines were alive in cluster 'c'"):
        wait_for_count(lambda: 1, 3, 0.3, "c")
    assert time.monotonic() - start < 5.0
    with pytest.raises(TypeError, match="needs n"):
        wait_for_count(lambda: 1, None, 0.3, "c")
