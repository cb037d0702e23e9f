"""DirectView against real engines: every method on one, several and all targets."""

from __future__ import annotations

import pytest

from enginefarm import AsyncResult, InvalidEngineID, NoEnginesRegistered


@pytest.fixture
def engines(cluster):
    return cluster.start_engines(2)


def test_ids_lists_registered_engines(client, engines):
    assert client.ids == sorted(d.engine_id for d in engines) == [0, 1]


def test_execute_then_pull_on_all(client, engines):
    dv = client.direct_view()
    dv.execute("import os; pid = os.getpid()")
    pids = dv.pull("pid")
    # Given two engines, each runs code in its own child process.
    assert len(pids) == 2 and len(set(pids)) == 2
    assert all(isinstance(p, int) for p in pids)


def test_push_to_one_target_and_single_view_returns_bare_value(client, engines):
    dv = client.direct_view()
    assert dv.push({"a": 2}, targets=1) is None
    assert client[1].pull("a") == 2
    with pytest.raises(Exception) as info:
        client[0].pull("a")
    assert "a" in str(info.value) and "NameError" in str(info.value)


def test_apply_non_blocking(client, engines):
    ar = client.direct_view().apply(pow, 2, 10, block=False)
    assert isinstance(ar, AsyncResult)
    assert ar.get(timeout=30) == [1024, 1024]
    assert ar.ready() and ar.successful()
    assert [m.engine_id for m in ar.metadata] == [0, 1]


def test_list_targets_keep_target_order(client, engines):
    dv = client.direct_view()
    dv.execute("import os; me = os.getpid()")
    both = dv.pull("me", targets=[1, 0])
    assert both == [client[1].pull("me"), client[0].pull("me")]


def test_keys_reset_and_pull_list(client, engines):
    dv = client[[0, 1]]
    dv.push({"x": 1, "y": [1, 2]})
    assert dv.pull(["x", "y"]) == [[1, [1, 2]], [1, [1, 2]]]
    assert dv.keys() == [["x", "y"], ["x", "y"]]
    dv.reset(targets=0)
    assert dv.keys() == [[], ["x", "y"]]


def test_push_and_pull_function(client, engines):
    def triple(v):
        return 3 * v

    client[0].push_function({"triple": triple})
    client[0].execute("r = triple(5)")
    assert client[0].pull("r") == 15
    pulled = client[0].pull_function("triple")
    assert pulled(7) == 21


def test_execute_output_and_get_result(client, engines):
    ar = client[0].execute("print('hello from', 6 * 7)", block=False)
    ar.get(timeout=30)
    assert "hello from 42" in ar.metadata.stdout
    entry = client[0].get_result()
    assert entry["input"] == "print('hello from', 6 * 7)"
    assert "hello from 42" in entry["stdout"]


def test_properties_live_in_redis(client, engines):
    dv = client.direct_view()
    dv.set_properties({"gpu": True, "mem": 16}, targets=0)
    assert dv.get_properties(targets=0) == {"gpu": True, "mem": 16}
    assert dv.has_properties(["gpu", "nope"]) == [[True, False], [False, False]]
    dv.del_properties(["mem"], targets=0)
    assert dv.get_properties(["gpu", "mem"], targets=0) == {"gpu": True}
    dv.clear_properties()
    assert dv.get_properties() == [{}, {}]
    nb = dv.get_properties(block=False)
    assert nb.get(timeout=5) == [{}, {}]


def test_engine_properties_from_command_line(cluster, client):
    cluster.start_engine(properties={"zone": "north", "cores": "8"})
    assert client[0].get_properties() == {"zone": "north", "cores": 8}


def test_queue_status_and_get_ids(client, engines):
    dv = client.direct_view()
    status = dv.queue_status()
    assert [s["engine_id"] for s in status] == [0, 1]
    assert all(s["queue"] == 0 and s["running"] == [] for s in status)
    assert dv.get_ids() == [0, 1]


def test_clear_queue_aborts_waiting_tasks(client, engines):
    # Given engine 0 busy with a slow task and two more queued behind it
    slow = client[0].execute("import time; time.sleep(3)", block=False)
    waiting = [client[0].apply(int, 5, block=False) for _ in range(2)]
    # When its queue is cleared
    assert client[0].clear_queue() == 2
    # Then the queued tasks never run and say why; the running one finishes
    for ar in waiting:
        with pytest.raises(Exception) as info:
            ar.get(timeout=30)
        assert "TaskAborted" in str(info.value)
    assert slow.get(timeout=30) is None


def test_kill_stops_engine(cluster, client):
    daemon = cluster.start_engine()
    client[daemon.engine_id].kill()
    assert daemon.wait(30) == 0
    assert daemon.engine_id not in client.ids


def test_bad_targets_raise_before_publishing(client, engines):
    dv = client.direct_view()
    for bad in (7, [0, 9], "some", -1, 1.5, [], True):
        with pytest.raises(InvalidEngineID):
            dv.execute("x = 1", targets=bad)
    # Nothing was recorded for the refused calls.
    assert client.history == []


def test_all_with_no_engines(client, cluster):
    with pytest.raises(NoEnginesRegistered):
        client.direct_view().execute("x = 1")
