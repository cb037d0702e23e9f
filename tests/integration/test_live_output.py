"""Live output against real engines and Redis: what a task prints reaches the client while it
runs, is bounded by the output cap, is printed once by stream_outputs (and stream=True, and
`enginefarm wait --stream`), and its live strings go once the record has it all.

Tasks block on gate files the tests open, never on fixed sleeps. This module is pickled by
value (see the end): its task functions run on the engines without importing the suite.
"""

from __future__ import annotations

import io
import queue
import re
import subprocess
import sys
import threading

import cloudpickle
import pytest

from enginefarm import RemoteError
from enginefarm.local import settings_env

from ..harness import wait_for

LONG = 60.0  # generous: the box is small and loaded


# --- run on engines ----------------------------------------------------------------------------
def talk(gate: str, before: list[str], after: list[str], err: tuple[str, ...] | list[str] = (), tail: str = "") -> str:
    """Print ``before`` (and ``err`` on stderr), wait for the gate file, print ``after`` and
    ``tail`` without a newline."""
    import os
    import sys
    import time

    for line in before:
        print(line)
    for line in err:
        print(line, file=sys.stderr)
    deadline = time.monotonic() + 90
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {gate} was never opened")
        time.sleep(0.01)
    for line in after:
        print(line)
    print(tail, end="")
    return "done"


def quiet(gate: str) -> str:
    """Print nothing; wait for the gate file."""
    return talk(gate, [], [])


# --- helpers -----------------------------------------------------------------------------------
def live_keys(cluster, task_id: str) -> list[str]:
    r = cluster.redis()
    return [k for k in (cluster.names.task_output(task_id, s) for s in ("stdout", "stderr")) if r.exists(k)]


def streamed(ar, timeout: float = LONG) -> tuple[threading.Thread, io.StringIO]:
    """Run ``ar.stream_outputs`` into a buffer on a thread (the test opens gates meanwhile)."""
    buffer = io.StringIO()
    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(ar.stream_outputs(file=buffer, timeout=timeout)))
    thread.done = done
    thread.start()
    return thread, buffer


# --- tests -------------------------------------------------------------------------------------
def test_a_line_printed_by_a_running_task_reaches_the_client_before_the_task_ends(cluster, client, gates):
    engine = cluster.start_engine()
    gate = gates()
    # Given a task that prints a line and then waits for the test
    ar = client[engine.engine_id].apply(talk, gate, ["first line"], ["second line"], block=False)
    # Then the line is in ar.stdout while the task still runs, from its live key in Redis
    wait_for(lambda: ar.stdout == "first line\n", LONG, "the first line to arrive live")
    assert not ar.ready()
    assert ar.stderr == ""
    assert live_keys(cluster, ar.msg_id) == [cluster.names.task_output(ar.msg_id, "stdout")]
    # When the test lets it finish
    open(gate, "w").close()
    assert ar.get(timeout=LONG) == "done"
    # Then the record has all of it, and the live key goes
    assert ar.stdout == "first line\nsecond line\n" and ar.metadata.stdout == ar.stdout
    wait_for(lambda: not live_keys(cluster, ar.msg_id), LONG, "the live key to be removed")


def test_stderr_is_live_too(cluster, client, gates):
    engine = cluster.start_engine()
    gate = gates()
    ar = client[engine.engine_id].apply(talk, gate, [], [], ["a warning"], block=False)
    wait_for(lambda: ar.stderr == "a warning\n", LONG, "stderr to arrive live")
    assert not ar.ready() and ar.stdout == ""
    open(gate, "w").close()
    ar.get(timeout=LONG)
    assert (ar.stdout, ar.stderr) == ("", "a warning\n")


def test_several_tasks_give_a_list_as_they_run(cluster, client, gates):
    engines = cluster.start_engines(2)
    gate = gates()
    dv = client[[e.engine_id for e in engines]]
    dv.push({"talk": talk}, block=True)
    ar = dv.execute(f"talk({gate!r}, ['hello'], ['bye'])", block=False)
    wait_for(lambda: ar.stdout == ["hello\n", "hello\n"], LONG, "both tasks' first line")
    assert not ar.ready()
    open(gate, "w").close()
    ar.get(timeout=LONG)
    assert ar.stdout == ["hello\nbye\n", "hello\nbye\n"]


def test_stream_outputs_prints_each_line_once_in_order_prefixed_by_engine(cluster, client, gates):
    engines = cluster.start_engines(2)
    ids = [e.engine_id for e in engines]
    gate = gates()
    # Given tasks on two engines that print before and after a gate, on both streams
    ar = client[ids].apply(talk, gate, ["a 1", "a 2"], ["a 3", "a 4"], ["e 1"], "tail", block=False)
    thread, buffer = streamed(ar)
    # Then the lines printed before the gate are shown while the tasks run
    wait_for(lambda: all(f"[stdout:{e}] a 2\n" in buffer.getvalue() for e in ids), LONG, "the live lines")
    assert not ar.ready() and thread.is_alive()
    # When the tasks finish, the rest comes from their records
    open(gate, "w").close()
    thread.join(LONG)
    assert thread.done == [True]
    lines = buffer.getvalue().splitlines()
    for e in ids:
        assert [line for line in lines if line.startswith(f"[stdout:{e}] ")] == [
            f"[stdout:{e}] a 1", f"[stdout:{e}] a 2", f"[stdout:{e}] a 3", f"[stdout:{e}] a 4",
            f"[stdout:{e}] tail"]
        assert [line for line in lines if line.startswith(f"[stderr:{e}] ")] == [f"[stderr:{e}] e 1"]
    assert len(lines) == 2 * 6
    assert ar.get(timeout=LONG) == ["done", "done"]


def test_stream_outputs_of_finished_tasks_prints_their_records(cluster, client, gates):
    engine = cluster.start_engine()
    gate = gates()
    open(gate, "w").close()
    ar = client[engine.engine_id].apply(talk, gate, ["one"], ["two"], block=False)
    ar.get(timeout=LONG)
    buffer = io.StringIO()
    assert ar.stream_outputs(file=buffer, timeout=LONG) is True
    assert buffer.getvalue() == f"[stdout:{engine.engine_id}] one\n[stdout:{engine.engine_id}] two\n"


def test_stream_outputs_gives_up_at_its_timeout(cluster, client, gates):
    engine = cluster.start_engine()
    gate = gates()
    ar = client[engine.engine_id].apply(talk, gate, ["waiting"], [], block=False)
    wait_for(lambda: ar.stdout, LONG, "the task to print")
    buffer = io.StringIO()
    assert ar.stream_outputs(file=buffer, timeout=0.5) is False
    assert buffer.getvalue() == f"[stdout:{engine.engine_id}] waiting\n"
    open(gate, "w").close()
    ar.get(timeout=LONG)


def test_display_outputs_labels_each_task_by_engine(cluster, client, gates):
    engines = cluster.start_engines(2)
    ids = [e.engine_id for e in engines]
    gate = gates()
    open(gate, "w").close()
    ar = client[ids].apply(talk, gate, ["out"], [], ["err"], block=False)
    ar.get(timeout=LONG)
    by_type, by_engine = io.StringIO(), io.StringIO()
    ar.display_outputs(file=by_type)
    ar.display_outputs("engine", file=by_engine)
    assert by_type.getvalue() == ("".join(f"[stdout:{e}] out\n" for e in ids)
                                  + "".join(f"[stderr:{e}] err\n" for e in ids))
    assert by_engine.getvalue() == "".join(f"[stdout:{e}] out\n[stderr:{e}] err\n" for e in ids)
    with pytest.raises(ValueError, match="groupby"):
        ar.display_outputs("colour")
    # A single-task result prints its output bare
    one, single = client[ids[0]].apply(talk, gate, ["a", "b"], [], block=False), io.StringIO()
    one.get(timeout=LONG)
    one.display_outputs(file=single)
    assert single.getvalue() == "a\nb\n"


def test_output_past_the_cap_is_bounded_live_and_in_the_record(cluster, client, gates):
    engine = cluster.start_engine(env_extra={"ENGINEFARM_OUTPUT_CAP_BYTES": "100"})
    gate = gates()
    # Given a task that prints 200 characters (cap 100) and then waits
    ar = client[engine.engine_id].apply(talk, gate, ["x" * 39] * 5, ["y" * 10], block=False)
    key = cluster.names.task_output(ar.msg_id, "stdout")
    r = cluster.redis()
    # Then the live output stops at the cap
    wait_for(lambda: r.strlen(key) >= 100, LONG, "the live output to reach the cap")
    live = ar.stdout
    assert r.strlen(key) == 100 and live == ("x" * 39 + "\n") * 2 + "x" * 20
    thread, buffer = streamed(ar)
    wait_for(lambda: buffer.getvalue().count("\n") == 2, LONG, "the two whole live lines")
    open(gate, "w").close()
    ar.get(timeout=LONG)
    thread.join(LONG)
    # And the record keeps the same first 100 characters, saying what was dropped
    assert ar.stdout == live + "\n[enginefarm: output truncated, 111 more characters dropped]\n"
    e = engine.engine_id
    assert buffer.getvalue() == (f"[stdout:{e}] {'x' * 39}\n" * 2 + f"[stdout:{e}] {'x' * 20}\n"
                                 f"[stdout:{e}] [enginefarm: output truncated, 111 more characters dropped]\n")


def test_a_task_that_prints_nothing_writes_no_live_key(cluster, client, gates):
    engines = cluster.start_engines(2)
    quiet_gate, loud_gate = gates(), gates()
    # Given a quiet task on one engine, and a printing one started after it on the other
    silent = client[engines[0].engine_id].apply(quiet, quiet_gate, block=False)
    r, task_key = cluster.redis(), cluster.names.task(silent.msg_id)
    wait_for(lambda: r.hget(task_key, "started"), LONG, "the quiet task to start")
    loud = client[engines[1].engine_id].apply(talk, loud_gate, ["tick"], [], block=False)
    # When the printing one's line is live (so the quiet one ran past a flush interval)
    wait_for(lambda: live_keys(cluster, loud.msg_id), LONG, "the printing task's live key")
    # Then the quiet one has no live key, while running or after
    assert live_keys(cluster, silent.msg_id) == [] and not silent.ready()
    open(quiet_gate, "w").close()
    open(loud_gate, "w").close()
    assert silent.get(timeout=LONG) == "done" and silent.stdout == ""
    assert live_keys(cluster, silent.msg_id) == []


def test_an_interrupted_task_keeps_what_it_printed(cluster, client, gates):
    engine = cluster.start_engine()
    ar = client[engine.engine_id].apply(talk, gates(), ["before the interrupt"], ["never"], block=False)
    wait_for(lambda: ar.stdout == "before the interrupt\n", LONG, "the line to arrive live")
    client.send_signal("SIGINT", targets=engine.engine_id)
    with pytest.raises(RemoteError) as info:
        ar.get(timeout=LONG)
    assert info.value.ename == "KeyboardInterrupt"
    assert ar.stdout == "before the interrupt\n"
    wait_for(lambda: not live_keys(cluster, ar.msg_id), LONG, "the live key to be removed")


def test_a_task_whose_process_is_killed_keeps_the_output_that_arrived(cluster, client, gates):
    engine = cluster.start_engine()
    ar = client[engine.engine_id].apply(talk, gates(), ["last words"], [], block=False)
    wait_for(lambda: ar.stdout == "last words\n", LONG, "the line to arrive live")
    client.send_signal("SIGTERM", targets=engine.engine_id)
    with pytest.raises(RemoteError) as info:
        ar.get(timeout=LONG)
    assert info.value.ename == "EngineProcessDied"
    assert ar.stdout == "last words\n"


def test_stream_true_prints_as_it_runs_and_returns_the_result(cluster, client, gates, capsys):
    engines = cluster.start_engines(2)
    ids = [e.engine_id for e in engines]
    gate = gates()
    open(gate, "w").close()
    # DirectView.apply and execute, and LoadBalancedView.apply
    assert client[ids].apply(talk, gate, ["applied"], [], stream=True) == ["done", "done"]
    dv = client[ids[0]]
    assert dv.execute("print('executed'); import sys; print('warned', file=sys.stderr)", stream=True) is None
    assert client.load_balanced_view().apply(talk, gate, ["balanced"], [], stream=True) == "done"
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert sorted(lines[:2]) == [f"[stdout:{e}] applied" for e in ids]
    assert lines[2] == f"[stdout:{ids[0]}] executed"
    assert re.fullmatch(r"\[stdout:\d+\] balanced", lines[3]) and len(lines) == 4
    assert err == f"[stderr:{ids[0]}] warned\n"


def test_purging_a_task_removes_its_live_output(cluster, client, gates):
    engine = cluster.start_engine()
    gate = gates()
    open(gate, "w").close()
    ar = client[engine.engine_id].apply(talk, gate, ["x"], [], block=False)
    ar.get(timeout=LONG)
    # Given live strings left of a finished task (an engine that could not remove them)
    client.output_store.append(ar.msg_id, {"stdout": "left over\n", "stderr": "too\n"})
    assert len(live_keys(cluster, ar.msg_id)) == 2
    # When it is purged, they go with its record
    assert client.purge_results(ar.msg_id) == 1
    assert live_keys(cluster, ar.msg_id) == []


def test_cli_wait_stream_prints_output_as_it_arrives(cluster, client, settings, gates):
    engine = cluster.start_engine()
    gate = gates()
    ar = client[engine.engine_id].apply(talk, gate, ["cli line 1"], ["cli line 2"], ["cli warning"], block=False)
    argv = [sys.executable, "-m", "enginefarm", "wait", "--stream", "--cluster", settings.cluster, ar.msg_id]
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(argv, env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
        reader.start()
        try:
            e = engine.engine_id
            # The first line is printed while the task still waits
            assert lines.get(timeout=LONG) == f"[stdout:{e}] cli line 1\n"
            assert not ar.ready()
            open(gate, "w").close()
            assert proc.wait(timeout=LONG) == 0
            reader.join(LONG)
            errors = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert list(lines.queue) == [f"[stdout:{e}] cli line 2\n", "1 completed, 0 failed\n"]
    assert errors == f"[stderr:{e}] cli warning\n"


cloudpickle.register_pickle_by_value(sys.modules[__name__])
