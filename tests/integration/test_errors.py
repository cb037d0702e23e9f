"""Failures against real engines: remote exceptions, pickling failures on either side, timeouts,
and user code that kills the engine's child process."""

from __future__ import annotations

import builtins
import ctypes
import os
import threading
import time

import pytest

import enginefarm
from enginefarm import CompositeError, RemoteError, SerializationError

TIMEOUT_S = 60


@pytest.fixture
def engine(cluster):
    return cluster.start_engine()


@pytest.fixture
def engines(cluster):
    return cluster.start_engines(2)


def fails_remotely(message):
    raise ValueError(message)  # this line travels back in the traceback


def remote_error(call) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call()
    return info.value


# --- remote exceptions --------------------------------------------------------------------
def test_remote_exception_comes_back_as_remote_error(client, engine):
    err = remote_error(lambda: client[0].apply(fails_remotely, "bad input 17"))
    assert type(err) is RemoteError
    assert err.ename == "ValueError"
    assert err.evalue == "bad input 17"
    assert err.engine_id == 0
    assert err.task_id == client.history[-1]
    assert "raise ValueError(message)  # this line travels back in the traceback" in err.traceback
    assert err.traceback.rstrip().endswith("ValueError: bad input 17")
    assert str(err) == "[engine 0] ValueError: bad input 17"


# How each engine shell names the first cell's line 2 (engines run IPython when they have it).
CELL_LINE = {"plain": 'File "<execute-0>", line 2', "ipython": "Cell In[1], line 2"}


@pytest.mark.parametrize("shell", list(CELL_LINE))
def test_remote_exception_from_execute_names_the_cell_and_line(cluster, client, shell):
    cluster.start_engine(env_extra={"ENGINEFARM_ENGINE_SHELL": shell})
    err = remote_error(lambda: client[0].execute("a = 1\nraise KeyError('missing thing')"))
    assert (err.ename, err.evalue, err.engine_id) == ("KeyError", "'missing thing'", 0)
    assert CELL_LINE[shell] in err.traceback


def test_failure_is_recorded_in_metadata(client, engine):
    ar = client[0].apply(fails_remotely, "meta", block=False)
    with pytest.raises(RemoteError):
        ar.get(timeout=TIMEOUT_S)
    assert ar.ready() and not ar.successful()
    meta = ar.metadata
    assert meta.status == "failed" and meta.engine_id == 0
    assert meta.error["ename"] == "ValueError" and meta.error["evalue"] == "meta"


def test_raise_exception_re_raises_the_same_error(client, engine):
    err = remote_error(lambda: client[0].apply(fails_remotely, "again"))
    with pytest.raises(RemoteError) as info:
        err.raise_exception()
    assert info.value is err


def test_one_of_two_targets_failing_raises_its_remote_error(client, engines):
    client.direct_view().push({"who": 0}, targets=0)
    client.direct_view().push({"who": 1}, targets=1)
    err = remote_error(lambda: client.direct_view().execute("if who == 1: raise RuntimeError('only one')"))
    assert not isinstance(err, CompositeError)
    assert (err.ename, err.evalue, err.engine_id) == ("RuntimeError", "only one", 1)


def test_two_failing_targets_give_composite_error_listing_both(client, engines):
    dv = client.direct_view()
    dv.push({"who": 0}, targets=0)
    dv.push({"who": 1}, targets=1)
    with pytest.raises(CompositeError) as info:
        dv.execute("raise RuntimeError(f'engine says {who}')", targets=[1, 0])
    composite = info.value
    assert isinstance(composite, RemoteError)
    # In target order.
    assert [e.engine_id for e in composite.errors] == [1, 0]
    assert [(e.ename, e.evalue) for e in composite.errors] == [
        ("RuntimeError", "engine says 1"), ("RuntimeError", "engine says 0")]
    text = str(composite)
    assert text.startswith("2 targets failed:")
    assert "[engine 1] RuntimeError: engine says 1" in text
    assert "[engine 0] RuntimeError: engine says 0" in text
    assert composite.traceback.count("RuntimeError: engine says") == 2
    with pytest.raises(RemoteError) as first:
        composite.raise_exception()
    assert first.value is composite.errors[0]
    with pytest.raises(RemoteError) as second:
        composite.raise_exception(1)
    assert second.value is composite.errors[1]


# --- pickling on the client side: nothing is published ------------------------------------
def test_unpicklable_function_is_refused_before_publishing(client, engine):
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        client[0].apply(lambda: lock.locked())
    message = str(info.value)
    assert "cannot pickle function" in message and "<lambda>" in message
    assert "lock" in message
    assert client.history == [] and client.outstanding == set()
    assert client.hub_history() == []


def test_unpicklable_argument_is_refused_before_publishing(client, engine):
    with pytest.raises(SerializationError) as info:
        client[0].apply(len, threading.Lock())
    message = str(info.value)
    assert message.startswith("cannot pickle function 'len' or its arguments:")
    assert "'_thread.lock' object" in message
    assert client.history == [] and client.hub_history() == []


def test_unpicklable_push_names_the_value(client, engines):
    with pytest.raises(SerializationError) as info:
        client.direct_view().push({"handle": threading.Lock()})
    assert str(info.value).startswith("cannot pickle value(s) for 'handle':")
    assert client.history == [] and client.hub_history() == []


# --- pickling on the engine side ----------------------------------------------------------
def test_unpicklable_result_is_a_remote_serialization_error_and_engine_survives(client, engine):
    client[0].push({"kept": [1, 2, 3]})
    pid_before = client[0].apply(os.getpid)
    err = remote_error(lambda: client[0].apply(threading.Lock))
    assert err.ename == "SerializationError"
    assert err.evalue.startswith("cannot pickle the result of apply:")
    assert "lock" in err.evalue
    assert err.engine_id == 0
    # The engine keeps working, in the same process with the same namespace.
    assert client[0].apply(pow, 2, 10) == 1024
    assert client[0].pull("kept") == [1, 2, 3]
    assert client[0].apply(os.getpid) == pid_before


# --- timeouts -----------------------------------------------------------------------------
def test_get_with_timeout_on_a_sleeping_task(client, engine):
    ar = client[0].execute("import time; time.sleep(4)", block=False)
    started = time.monotonic()
    with pytest.raises(enginefarm.TimeoutError) as info:
        ar.get(timeout=0.5)
    waited = time.monotonic() - started
    assert isinstance(info.value, builtins.TimeoutError)
    assert isinstance(info.value, enginefarm.EnginefarmError)
    assert "0/1 tasks finished within 0.5s" in str(info.value)
    assert 0.5 <= waited < 3.0
    assert not ar.ready()
    # The task itself is unaffected and finishes.
    assert ar.get(timeout=TIMEOUT_S) is None


def test_wait_returns_false_on_timeout(client, engine):
    ar = client[0].execute("import time; time.sleep(3)", block=False)
    assert ar.wait(0.2) is False
    assert ar.wait(TIMEOUT_S) is True


# --- user code that kills the child -------------------------------------------------------
def test_os_exit_gives_engine_process_died_and_a_fresh_namespace(client, engine):
    client[0].push({"lost": "soon"})
    child_before = client[0].apply(os.getpid)
    ar = client[0].apply(os._exit, 3, block=False)
    with pytest.raises(RemoteError) as info:
        ar.get(timeout=TIMEOUT_S)
    err = info.value
    assert err.ename == "EngineProcessDied"
    assert "exit code 3" in err.evalue and "namespace was lost" in err.evalue
    assert err.engine_id == 0
    assert ar.metadata.namespace_lost is True
    # The same engine serves the next request, from a new child with an empty namespace.
    assert client.ids == [0]
    assert client[0].keys() == []
    assert client[0].apply(pow, 3, 3) == 27
    assert client[0].apply(os.getpid) != child_before


def test_segfault_gives_engine_process_died_and_engine_serves_next(client, engine):
    client[0].push({"lost": "soon"})
    err = remote_error(lambda: client[0].apply(ctypes.string_at, 0))
    assert err.ename == "EngineProcessDied"
    assert "signal SIGSEGV" in err.evalue and "namespace was lost" in err.evalue
    assert client[0].keys() == []
    client[0].execute("z = 5")
    assert client[0].pull("z") == 5


def test_tasks_queued_behind_a_crash_still_run(client, engine):
    crash = client[0].apply(os._exit, 1, block=False)
    after = [client[0].apply(pow, 2, i, block=False) for i in range(3)]
    with pytest.raises(RemoteError) as info:
        crash.get(timeout=TIMEOUT_S)
    assert info.value.ename == "EngineProcessDied"
    assert [ar.get(timeout=TIMEOUT_S) for ar in after] == [1, 2, 4]


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("str() of this exception fails")


def raise_unprintable():
    raise UnprintableError()


def test_exception_whose_str_fails_does_not_kill_the_namespace(client, engine):
    client[0].push({"kept": 1})
    err = remote_error(lambda: client[0].apply(raise_unprintable))
    assert err.ename == "UnprintableError"
    assert err.evalue == "<unprintable UnprintableError object>"
    assert "raise UnprintableError()" in err.traceback
    # The child survived: same namespace.
    assert client[0].pull("kept") == 1
