"""Engines that run ``execute`` in IPython: IPython syntax works, display outputs and a cell's
value travel back in the task's record, errors carry IPython's traceback; an engine told to
run plain Python (``engine_shell = plain``) does as before."""

from __future__ import annotations

import pytest

from enginefarm import Client, RemoteError

from ..harness import Cluster

TIMEOUT_S = 60


def test_magics_shell_escapes_and_the_namespace(cluster: Cluster, client: Client):
    eid = cluster.start_engine().engine_id
    view = client[eid]
    ar = view.execute("!echo hi\n%time squares = [i * i for i in range(4)]", block=False)
    assert ar.get(timeout=TIMEOUT_S) is None
    assert "hi" in ar.stdout and "Wall time" in ar.stdout
    # What the cell defined is the engine's namespace: pull and apply see it
    assert view.pull("squares") == [0, 1, 4, 9]
    view.push({"offset": 10})
    value = view.execute("squares[-1] + offset", block=False)
    value.get(timeout=TIMEOUT_S)
    assert value.execute_result["data"]["text/plain"] == "19"
    assert sorted(view.keys()) == ["offset", "squares"]


def test_display_outputs_and_the_value_come_back_with_the_result(cluster: Cluster, client: Client):
    eid = cluster.start_engine().engine_id
    code = ("from IPython.display import display, HTML\n"
            "display(HTML('<i>small</i>'))\n"
            "display(HTML('<p>' + 'x' * 20000 + '</p>'))\n"  # too large to ride in the inbox
            "{'answer': 42}")
    ar = client[eid].execute(code, block=False)
    ar.get(timeout=TIMEOUT_S)
    small, large = ar.outputs
    assert small["data"]["text/html"] == "<i>small</i>" and len(large["data"]["text/html"]) == 20007
    assert ar.execute_result["data"] == {"text/plain": "{'answer': 42}"}
    assert isinstance(ar.execute_result["execution_count"], int)
    # The record holds them for any client (db_query asks for them by name)
    row = client.db_query({"task_id": ar.task_ids[0]}, keys=["outputs", "execute_result"])[0]
    assert row["outputs"] == ar.outputs and row["execute_result"] == ar.execute_result


def test_an_error_is_the_cells_traceback_as_ipython_draws_it(cluster: Cluster, client: Client):
    eid = cluster.start_engine().engine_id
    with pytest.raises(RemoteError) as info:
        client[eid].execute("x = 1\nx / 0")
    error = info.value
    assert error.ename == "ZeroDivisionError" and error.engine_id == eid
    assert "Cell In[1], line 2" in error.traceback and "----> 2 x / 0" in error.traceback
    assert "commands.py" not in error.traceback


def test_a_plain_engine_runs_python_as_before(cluster: Cluster, client: Client):
    eid = cluster.start_engine(env_extra={"ENGINEFARM_ENGINE_SHELL": "plain"}).engine_id
    ar = client[eid].execute("x = 6 * 7\nx", block=False)
    assert ar.get(timeout=TIMEOUT_S) is None
    assert ar.execute_result is None and ar.outputs == []
    with pytest.raises(RemoteError) as info:
        client[eid].execute("%time x")
    assert info.value.ename == "SyntaxError" and "<execute-1>" in info.value.traceback
    assert client[eid].keys() == ["x"]
