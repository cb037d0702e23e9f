"""MapTask/StringTask validation, TaskResult and ResultNS, and the progress bar (no servers)."""

from __future__ import annotations

import io

import pytest

from enginefarm import MapTask, RemoteError, ResultNS, StringTask, TaskResult
from enginefarm.client.progress import progress_bar


def add(a, b=0):
    return a + b


def is_gpu(properties):
    return properties.get("gpu") is True


# --- MapTask / StringTask ---------------------------------------------------------------------
def test_map_task_defaults():
    task = MapTask(add)
    assert task.function is add and task.args == () and task.kwargs == {}
    assert (task.clear_before, task.clear_after, task.retries) == (False, False, 0)
    assert task.recovery_task is None and task.depend is None
    assert task.kind == "map_task"
    assert task.header() == {"retries": 0}


def test_map_task_keeps_arguments_and_options():
    recovery = StringTask("ready = True")
    task = MapTask(add, [1], {"b": 2}, clear_before=True, clear_after=True, retries=3,
                   recovery_task=recovery, depend=is_gpu, timeout=7, priority=4)
    assert task.args == (1,) and task.kwargs == {"b": 2}
    assert task.header() == {"retries": 3, "clear_before": True, "clear_after": True, "depend": True,
                             "timeout": 7.0, "priority": 4}
    request = task.request()
    assert request["call"] == (add, (1,), {"b": 2})
    assert request["depend"] is is_gpu
    assert request["recovery"] == {"kind": "string_task", "expression": "ready = True", "push": {}, "pull": [],
                                   "depend": None, "recovery": None}


@pytest.mark.parametrize("kwargs, error, message", [
    ({"retries": -1}, ValueError, "retries must be >= 0"),
    ({"depend": "gpu"}, TypeError, "depend must be a callable taking the engine's properties"),
    ({"recovery_task": "x = 1"}, TypeError, "recovery_task must be a MapTask or StringTask"),
])
def test_task_options_are_validated(kwargs, error, message):
    for make in (lambda: MapTask(add, **kwargs), lambda: StringTask("x = 1", **kwargs)):
        with pytest.raises(error) as info:
            make()
        assert str(info.value) == message


def test_map_task_needs_a_callable():
    with pytest.raises(TypeError) as info:
        MapTask(42)
    assert str(info.value) == "42 is not callable"


def test_unknown_option_is_refused():
    with pytest.raises(TypeError):
        MapTask(add, retry=2)


def test_string_task_pull_and_push():
    single = StringTask("b = a * 2", pull="b", push={"a": 3})
    assert single.pull == ["b"] and single.push == {"a": 3}
    assert single.kind == "string_task"
    assert single.body() == {"expression": "b = a * 2", "push": {"a": 3}, "pull": ["b"]}
    several = StringTask("x = 1; y = 2", pull=("x", "y"))
    assert several.pull == ["x", "y"] and several.push == {}
    assert StringTask("pass").pull == []


def test_string_task_needs_a_string():
    with pytest.raises(TypeError) as info:
        StringTask(add)
    assert str(info.value) == "expression must be a string of Python code"


# --- ResultNS ----------------------------------------------------------------------------------
def test_result_ns_attribute_and_item_access():
    ns = ResultNS({"a": 17, "foo": [0, 1, 2]})
    assert ns.a == 17 and ns["foo"] == [0, 1, 2]
    assert repr(ns) == "NS{'a': 17, 'foo': [0, 1, 2]}" and str(ns) == repr(ns)
    assert "a" in ns and "b" not in ns
    assert list(ns) == ["a", "foo"] and len(ns) == 2


def test_result_ns_missing_names_and_read_only():
    ns = ResultNS({"a": 17})
    with pytest.raises(AttributeError):
        ns.b
    with pytest.raises(KeyError):
        ns["b"]
    with pytest.raises(AttributeError):
        ns.a = 3
    assert ns.a == 17


def test_result_ns_repr_single_value():
    assert repr(ResultNS({"a": 17})) == "NS{'a': 17}"
    assert repr(ResultNS({})) == "NS{}"


# --- TaskResult ---------------------------------------------------------------------------------
META = {"submitted": 100.0, "started": 101.5, "completed": 104.0, "attempts": 2,
        "stdout": "out\n", "stderr": ""}


def test_map_task_result():
    r = TaskResult("t1", 3, "map_task", 1024, None, META)
    assert (r.taskid, r.task_id, r.engineid, r.engine_id) == ("t1", "t1", 3, 3)
    assert r.result == 1024 and r.failure is None
    assert r.keys == [] and repr(r.ns) == "NS{}"
    assert r.raise_exception() is None
    assert (r.submitted, r.started, r.completed) == (100.0, 101.5, 104.0)
    assert r.duration == 2.5
    assert r.attempts == 2 and r.stdout == "out\n"
    assert repr(r) == "<TaskResult t1 engine=3 result=1024>"


def test_string_task_result_exposes_pulled_values():
    r = TaskResult("t2", 0, "string_task", {"a": 17, "b": "x"}, None, META)
    assert r.keys == ["a", "b"]
    assert r.ns.a == 17 and r.ns["b"] == "x"
    assert repr(r.ns) == "NS{'a': 17, 'b': 'x'}"
    # Seed 003: pulled variables are attributes of the result too
    assert r.a == 17 and r.b == "x"
    assert r.result is None
    with pytest.raises(AttributeError):
        r.nope
    assert repr(r) == "<TaskResult t2 engine=0 ns=NS{'a': 17, 'b': 'x'}>"


def test_failed_result_reraises_on_ns_and_raise_exception():
    error = RemoteError("ValueError", "bad input", "Traceback ...", engine_id=1, task_id="t3")
    r = TaskResult("t3", 1, "string_task", None, error, META)
    assert r.failure is error
    assert r.result is None and r.keys == []
    with pytest.raises(RemoteError) as info:
        r.ns
    assert info.value is error
    with pytest.raises(RemoteError) as info:
        r.raise_exception()
    assert info.value is error
    assert repr(r) == "<TaskResult t3 engine=1 failure=[engine 1] ValueError: bad input>"


def test_failed_map_task_result_has_no_value():
    error = RemoteError("ZeroDivisionError", "division by zero", engine_id=0, task_id="t4")
    r = TaskResult("t4", 0, "map_task", None, error, {})
    assert r.result is None and r.failure is error
    assert (r.submitted, r.started, r.completed, r.duration) == (None, None, None, None)
    assert r.attempts == 0


def test_duration_needs_start_and_completion():
    assert TaskResult("t5", None, "map_task", None, None, {"submitted": 1.0, "started": 2.0}).duration is None
    assert TaskResult("t6", None, "map_task", None, None, {"completed": 2.0}).duration is None


# --- progress bars ---------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_counts_on_a_terminal():
    stream = Terminal()
    with progress_bar(10, file=stream) as bar:
        bar.update(3)
        bar.update(7)
    written = stream.getvalue()
    # tqdm redraws at most every 0.1 s: the start and the end are drawn.
    assert "0/10" in written and "10/10" in written
    assert "tasks" in written


def test_progress_bar_names_its_unit():
    stream = Terminal()
    with progress_bar(4, unit="items", file=stream) as bar:
        bar.update(4)
    assert "4/4" in stream.getvalue() and "items" in stream.getvalue()


def test_progress_bar_is_silent_unless_the_stream_is_a_terminal():
    stream = io.StringIO()
    with progress_bar(4, file=stream) as bar:
        bar.update(4)
    assert stream.getvalue() == ""


def test_progress_bar_disable_wins_over_a_terminal():
    stream = Terminal()
    with progress_bar(2, file=stream, disable=True) as bar:
        bar.update(2)
    assert stream.getvalue() == ""
