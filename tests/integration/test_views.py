"""DirectView as ipyparallel code uses it, against real engines: scatter and gather, map,
view['x'], zip_pull, serialized push and pull, run, and the target forms of client[...]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy
import pytest
from numpy.testing import assert_array_equal

import builtins

from enginefarm import AsyncResult, Client, InvalidEngineID, RemoteError, serialization
from enginefarm.client.asyncresult import AsyncMapResult
from enginefarm.errors import TimeoutError

from ..harness import Cluster, Daemon

TIMEOUT_S = 60


@pytest.fixture
def three(cluster: Cluster) -> list[Daemon]:
    """Three engines: 10 items do not split evenly over them, which is what the rule is about."""
    return cluster.start_engines(3)


@pytest.fixture
def two(cluster: Cluster) -> list[Daemon]:
    return cluster.start_engines(2)


def pid_and(x: Any) -> tuple[int, Any]:
    return os.getpid(), x


# --- scatter and gather -----------------------------------------------------------------
def test_scatter_splits_in_blocks_and_gather_joins_them(client: Client, three: list[Daemon]) -> None:
    dv = client[:]
    # Given 10 items over 3 engines
    assert dv.scatter("x", list(range(10))) is None
    # Then the first 10 % 3 engines hold one item more, in contiguous order
    assert dv.pull("x") == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert dv.gather("x") == list(range(10))
    # Tuples and ranges split as themselves; gather gives them back as a list
    dv.scatter("t", (1, 2, 3, 4))
    assert dv.pull("t") == [(1, 2), (3,), (4,)]
    assert dv.gather("t") == [1, 2, 3, 4]
    dv.scatter("r", range(5))
    assert dv.pull("r") == [range(0, 2), range(2, 4), range(4, 5)]
    assert dv.gather("r") == [0, 1, 2, 3, 4]


def test_round_robin_scatter_and_gather(client: Client, three: list[Daemon]) -> None:
    dv = client[:]
    dv.scatter("x", list(range(10)), dist="r")
    assert dv.pull("x") == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert dv.gather("x", dist="r") == list(range(10))
    with pytest.raises(ValueError, match="dist must be"):
        dv.scatter("x", [1], dist="z")


def test_numpy_arrays_travel_as_arrays_and_gather_as_one(client: Client, three: list[Daemon]) -> None:
    dv = client[:]
    vector = numpy.arange(10, dtype=numpy.float32)
    matrix = numpy.arange(14).reshape(7, 2)
    for dist in ("b", "r"):
        # Given arrays scattered either way
        dv.scatter("v", vector, dist=dist)
        dv.scatter("m", matrix, dist=dist)
        # Then each engine holds an ndarray slice, and gather rebuilds the array and its dtype
        dv.execute("kind = type(v).__name__")
        assert dv["kind"] == ["ndarray"] * 3
        v, m = dv.gather("v", dist=dist), dv.gather("m", dist=dist)
        assert isinstance(v, numpy.ndarray) and v.dtype == numpy.float32
        assert_array_equal(v, vector)
        assert_array_equal(m, matrix)
    assert [p.shape for p in dv.pull("m")] == [(3, 2), (2, 2), (2, 2)]


def test_flatten_pushes_the_single_item(client: Client, three: list[Daemon]) -> None:
    dv = client[:]
    # Given each engine's id scattered with flatten: each holds a bare int
    dv.scatter("my_id", client.ids, flatten=True)
    assert dv.pull("my_id") == [0, 1, 2]
    assert dv.gather("my_id") == [0, 1, 2]
    # Only parts of one item are flattened
    dv.scatter("x", [10, 20, 30, 40], flatten=True)
    assert dv.pull("x") == [[10, 20], 30, 40]
    assert dv.gather("x") == [10, 20, 30, 40]


def test_scatter_and_gather_on_chosen_targets_without_blocking(client: Client, three: list[Daemon]) -> None:
    dv = client.direct_view()
    # Given a non-blocking scatter over engines 2 and 0, in that order
    ar = dv.scatter("x", list(range(5)), targets=[2, 0], block=False)
    assert isinstance(ar, AsyncResult)
    # Then a gather sent right behind it (same queues, so it runs after) joins in that order
    gathered = dv.gather("x", targets=[2, 0], block=False)
    assert gathered.get(timeout=TIMEOUT_S) == [0, 1, 2, 3, 4]
    ar.get(timeout=TIMEOUT_S)
    assert client[2]["x"] == [0, 1, 2] and client[0]["x"] == [3, 4]
    # And an engine that was not a target holds nothing
    with pytest.raises(RemoteError, match="NameError"):
        dv.gather("x")
    # A part that cannot be pickled stops the whole scatter before anything is sent
    sent = len(client.history)
    with pytest.raises(Exception, match="cannot pickle"):
        dv.scatter("bad", [1, 2, (i for i in range(2))])
    assert len(client.history) == sent


# --- map ------------------------------------------------------------------------------------
def test_map_gives_each_target_a_contiguous_share_in_input_order(client: Client, three: list[Daemon]) -> None:
    dv = client[:]
    pids = dv.apply(os.getpid)
    # When 10 items are mapped over 3 engines
    pairs = dv.map_sync(pid_and, range(10))
    # Then results are in input order, and engine i ran the i-th block of the split
    assert [x for _, x in pairs] == list(range(10))
    assert [pid for pid, _ in pairs] == [pids[0]] * 4 + [pids[1]] * 3 + [pids[2]] * 3
    # Several sequences pair up item by item; as builtin map, the shortest decides
    assert dv.map(pow, [2, 3, 4, 5], [2, 2, 2], block=True) == [4, 9, 16]
    assert dv.map_sync(abs, []) == []
    assert dv.map_sync(lambda v: v * 2, (i for i in range(5))) == [0, 2, 4, 6, 8]
    assert_array_equal(dv.map_sync(lambda v: v + 1, numpy.arange(7)), numpy.arange(1, 8))


def test_map_async_is_iterated_in_order(client: Client, three: list[Daemon]) -> None:
    amr = client[:].map_async(lambda v: v * v, range(11))
    assert isinstance(amr, AsyncMapResult) and len(amr) == 11
    assert list(amr) == [v * v for v in range(11)]
    assert amr.get(timeout=TIMEOUT_S) == [v * v for v in range(11)]
    # Fewer items than engines: only the engines with work get a task
    assert len(client[:].map_async(abs, [-1, -2]).task_ids) == 2


def test_map_on_one_engine_returns_a_list_and_failures_are_remote(client: Client, two: list[Daemon]) -> None:
    assert client[1].map_sync(lambda v: -v, range(4)) == [0, -1, -2, -3]
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        client[:].map_sync(lambda v: 1 / v, [1, 0, 2, 3])
    mixed = client[:].map(lambda v: 1 / v, [1, 2, 0, 4], block=True, return_exceptions=True)
    assert mixed[:2] == [1.0, 0.5] and all(isinstance(m, RemoteError) for m in mixed[2:])


# --- names and namespaces ---------------------------------------------------------------------
def test_zip_pull_groups_each_name_across_targets(client: Client, two: list[Daemon]) -> None:
    dv = client[:]
    dv.scatter("a", ["a0", "a1"], flatten=True)
    dv.scatter("b", [10, 11], flatten=True)
    before = len(client.history)
    # When two names are zip-pulled
    assert dv.zip_pull(["a", "b"]) == [("a0", "a1"), (10, 11)]
    # Then it took one pull per engine
    assert len(client.history) - before == 2
    assert dv.zip_pull("b", block=False).get(timeout=TIMEOUT_S) == [(10, 11)]


def test_serialized_values_pass_through(client: Client, two: list[Daemon]) -> None:
    dv = client[:]
    payload = serialization.dumps({"k": [1, 2]})
    # Given bytes the client serialized itself
    dv.push_serialized({"d": payload, "f": serialization.dumps(lambda v: v + 1)})
    # Then the engines hold the objects
    assert dv.pull("d") == [{"k": [1, 2]}] * 2
    dv.execute("y = f(41)")
    assert client[1]["y"] == 42
    # And pull_serialized hands back bytes, which load to the values
    one = client[0].pull_serialized("d")
    assert isinstance(one, bytes) and serialization.loads(one) == {"k": [1, 2]}
    both = dv.pull_serialized(["y", "d"], block=False).get(timeout=TIMEOUT_S)
    assert [[serialization.loads(v) for v in per_engine] for per_engine in both] == [[42, {"k": [1, 2]}]] * 2
    # Values that are not bytes are refused before anything is sent
    sent = len(client.history)
    with pytest.raises(TypeError, match="'d' is dict"):
        dv.push_serialized({"d": {"k": 1}})
    assert len(client.history) == sent


def test_run_executes_a_file_on_the_targets(client: Client, two: list[Daemon], tmp_path: Path) -> None:
    # Given a file whose last line is indented whitespace without a newline
    script = tmp_path / "script.py"
    script.write_text("def g():\n    return 5\n    ")
    client[:].run(str(script))
    client[:].execute("r = g()")
    assert client[:]["r"] == [5, 5]


def test_dictionary_access_update_and_clear(client: Client, two: list[Daemon]) -> None:
    dv = client[:]
    dv["x"] = 5
    assert dv["x"] == [5, 5] and client[0]["x"] == 5
    dv.update({"y": 1})
    assert dv.get("y") == [1, 1] and dv.get(["x", "y"]) == [[5, 1], [5, 1]]
    # clear resets the namespaces of the view's targets, or of those given
    dv.clear(targets=0)
    assert dv.keys() == [[], ["x", "y"]]
    dv.clear()
    assert dv.keys() == [[], []]
    with pytest.raises(TypeError):
        dv[0]


# --- targets -------------------------------------------------------------------------------------
def test_target_forms_resolve_against_the_live_ids(client: Client, three: list[Daemon]) -> None:
    assert len(client) == 3 and list(client) == [0, 1, 2]
    assert client[:].targets == [0, 1, 2] and len(client[:]) == 3
    assert client[::2].targets == [0, 2] and client[1:3].targets == [1, 2] and len(client[1:3]) == 2
    # A view made from -1 knows its engine and returns bare values
    last = client[-1]
    assert last.targets == client.ids[-1] == 2 and len(last) == 1
    assert last.apply(pow, 2, 3) == 8
    # The slice's engines are the ones that run its commands
    ar = client[::2].apply(int, 1, block=False)
    ar.get(timeout=TIMEOUT_S)
    assert [m.engine_id for m in ar.metadata] == [0, 2]
    lazy = client.direct_view("all")
    assert lazy.targets == "all" and len(lazy) == 3


def test_slices_are_fixed_at_creation_while_all_follows_the_engines(cluster: Cluster, client: Client,
                                                                    two: list[Daemon]) -> None:
    now, lazy = client[:], client.direct_view()
    # When a third engine joins
    cluster.start_engine(wait=False)
    client.wait_for_engines(3, timeout=TIMEOUT_S)
    # Then the slice view keeps its two engines and 'all' reaches all three
    assert len(client) == 3 and len(now) == 2 and len(lazy) == 3
    assert len(now.apply(os.getpid)) == 2 and len(set(lazy.apply(os.getpid))) == 3
    assert client[-1].targets == 2


def test_wait_for_engines_times_out_with_a_clear_message(client: Client, cluster: Cluster) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 engines were alive") as info:
        client.wait_for_engines(1, timeout=0.5)
    assert isinstance(info.value, builtins.TimeoutError)
    cluster.start_engine(wait=False)
    assert client.wait_for_engines(1, timeout=TIMEOUT_S) is None
    assert len(client) == 1


def test_bad_view_keys_raise_before_publishing(client: Client, two: list[Daemon]) -> None:
    for bad in (5, -3, slice(5, 9), slice(None, None, 0), "x", [0, 9], []):
        with pytest.raises(InvalidEngineID):
            client[bad]
    with pytest.raises(InvalidEngineID):
        client.direct_view(-3)
    assert client.history == []
