"""Splitting sequences over engines and joining them back: ipyparallel's rule, no services."""

from __future__ import annotations

import array
from typing import Any

import numpy
import pytest
from numpy.testing import assert_array_equal

from enginefarm.client.partition import block_bounds, flattened, interleave, is_array, join, part, split


# --- the block rule --------------------------------------------------------------------
@pytest.mark.parametrize(("length", "count", "sizes"), [
    (10, 3, [4, 3, 3]),   # the first 10 % 3 engines get one more
    (11, 3, [4, 4, 3]),
    (9, 3, [3, 3, 3]),
    (2, 4, [1, 1, 0, 0]),  # fewer items than engines: the last ones get nothing
    (0, 2, [0, 0]),
])
def test_block_parts_are_contiguous_and_the_first_get_the_extra(length: int, count: int, sizes: list[int]) -> None:
    bounds = [block_bounds(length, i, count) for i in range(count)]
    assert [high - low for low, high in bounds] == sizes
    # Contiguous and covering: each part starts where the one before it ended.
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(count - 1))


def test_block_split_keeps_the_sequence_type() -> None:
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split((1, 2, 3), 2) == [(1, 2), (3,)]
    assert split(range(5), 2) == [range(0, 3), range(3, 5)]
    assert split("abcde", 2) == ["abc", "de"]
    parts = split(numpy.arange(5), 2)
    assert all(is_array(p) for p in parts)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4]]


def test_round_robin_split_strides() -> None:
    assert split(list(range(7)), 3, "r") == [[0, 3, 6], [1, 4], [2, 5]]
    assert split(range(5), 2, "r") == [range(0, 5, 2), range(1, 5, 2)]


def test_unsized_and_unsliceable_inputs_are_split_in_iteration_order() -> None:
    # Given a generator (no length) and a dict view (a length, but no slicing)
    assert split((i * i for i in range(5)), 2) == [[0, 1, 4], [9, 16]]
    assert split({"a": 1, "b": 2, "c": 3}.keys(), 2) == [["a", "b"], ["c"]]


def test_length_caps_the_items_split() -> None:
    # map over [0..5] and a 3-item sequence takes 3 items of each, spread alike.
    assert [part(list(range(6)), i, 2, length=3) for i in range(2)] == [[0, 1], [2]]


def test_bad_distribution_and_part_are_refused() -> None:
    with pytest.raises(ValueError, match="dist must be"):
        split([1, 2], 2, "x")
    with pytest.raises(ValueError):
        part([1, 2], 2, 2)
    with pytest.raises(ValueError):
        split([1, 2], 0)


def test_flatten_pushes_the_item_of_a_one_item_part() -> None:
    assert flattened([7], flatten=True) == 7
    assert flattened([7], flatten=False) == [7]
    assert flattened([7, 8], flatten=True) == [7, 8]
    assert flattened([], flatten=True) == []


# --- joining -----------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["b", "r"])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 12])
def test_join_undoes_split(dist: str, count: int) -> None:
    for seq in ([], list(range(11)), list("hello world")):
        assert join(split(seq, count, dist), dist) == seq
    # Tuples and ranges come back as lists (as ipyparallel gathers them).
    assert join(split((1, 2, 3), count, dist), dist) == [1, 2, 3]
    assert join(split(range(10), count, dist), dist) == list(range(10))


@pytest.mark.parametrize("dist", ["b", "r"])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_arrays_join_as_arrays_of_their_dtype(dist: str, count: int) -> None:
    for seq in (numpy.arange(10, dtype=numpy.int32), numpy.arange(12.0).reshape(6, 2),
                numpy.array([], dtype=numpy.uint8)):
        joined = join(split(seq, count, dist), dist)
        assert is_array(joined) and joined.dtype == seq.dtype
        assert_array_equal(joined, seq)


@pytest.mark.parametrize("dist", ["b", "r"])
def test_flattened_parts_join_back(dist: str) -> None:
    # Given 3 items over 2 engines with flatten: one engine holds a list, the other one item
    pushed = [flattened(p, True) for p in split([10, 20, 30], 2, dist)]
    assert join(pushed, dist) == [10, 20, 30]
    arrays = [flattened(p, True) for p in split(numpy.arange(6).reshape(3, 2), 2, dist)]
    assert_array_equal(join(arrays, dist), numpy.arange(6).reshape(3, 2))


def test_one_item_per_engine_joins_as_the_list_of_items() -> None:
    # scatter('id', ids, flatten=True): every engine holds a scalar.
    assert join([0, 1, 2]) == [0, 1, 2]
    # Strings are items, not sequences to concatenate: flattened names stay names.
    assert join(["alice", "bob"]) == ["alice", "bob"]


def test_other_sequences_join_as_lists_and_other_objects_as_parts() -> None:
    assert join(split(array.array("i", [1, 2, 3]), 2)) == [1, 2, 3]

    class Block:  # sliceable but not a Sequence (a data frame, say): gathered as parts
        def __init__(self, items: list[Any]) -> None:
            self.items = items

    parts = [Block([1]), Block([2])]
    assert join(parts) == parts


def test_arrays_that_do_not_stack_stay_parts() -> None:
    parts = [numpy.zeros((2, 2)), numpy.zeros((1, 3))]
    joined = join(parts)
    assert not is_array(joined) and len(joined) == 3  # rows of both, as a list


def test_interleave_restores_round_robin_order() -> None:
    assert interleave([[0, 3, 6], [1, 4], [2, 5]]) == list(range(7))
    assert interleave([]) == []
