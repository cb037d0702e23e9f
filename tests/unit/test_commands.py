"""What runs inside an engine's child process: every command, output capture and error outcomes.

``run_command`` is called here in-process, exactly as the child calls it (no servers).
"""

from __future__ import annotations

import sys
import threading

import pytest

from enginefarm import serialization
from enginefarm.worker.commands import COMMANDS, CappedWriter, EngineState, run_command

from .engine_calls import CAP, error_of, run, value_of


@pytest.fixture
def state() -> EngineState:
    return EngineState()








def user_keys(state: EngineState) -> list[str]:
    return sorted(k for k in state.namespace if not k.startswith("__"))


def add(a, b=0):
    return a + b


def shout(text):
    print(text.upper())
    print("to stderr", file=sys.stderr)
    return len(text)


def explode(message):
    raise ValueError(message)  # the remote line


# --- the commands -------------------------------------------------------------------------
def test_every_kind_has_a_command():
    assert set(COMMANDS) == {"execute", "apply", "map_task", "string_task", "push", "push_function",
                             "pull", "pull_function", "reset", "keys", "get_result", "kill",
                             "push_serialized", "pull_serialized"}


def test_fresh_state_has_only_main_and_builtins(state):
    assert state.namespace["__name__"] == "__main__"
    assert "__builtins__" in state.namespace
    assert user_keys(state) == [] and state.history == []


def test_execute_runs_in_the_namespace_and_records_history(state):
    outcome = run(state, "execute", "x = 6 * 7\nprint('x is', x)")
    assert value_of(outcome) is None
    assert outcome["stdout"] == "x is 42\n" and outcome["stderr"] == ""
    assert outcome["summary"] == "None"
    assert state.namespace["x"] == 42
    assert state.history == [{"number": 0, "input": "x = 6 * 7\nprint('x is', x)",
                              "stdout": "x is 42\n", "stderr": ""}]
    run(state, "execute", "y = x + 1")
    assert state.namespace["y"] == 43 and len(state.history) == 2


def test_apply_calls_the_function(state):
    outcome = run(state, "apply", (add, (2,), {"b": 40}))
    assert value_of(outcome) == 42
    assert outcome["summary"] == "42"


def test_apply_captures_stdout_and_stderr(state):
    saved = sys.stdout, sys.stderr
    outcome = run(state, "apply", (shout, ("hi",), {}))
    assert value_of(outcome) == 2
    assert outcome["stdout"] == "HI\n" and outcome["stderr"] == "to stderr\n"
    # The real streams are back in place afterwards, also after a failure.
    assert (sys.stdout, sys.stderr) == saved
    error_of(run(state, "execute", "print('x'); raise SystemExit"))
    assert (sys.stdout, sys.stderr) == saved


def test_push_then_pull_one_and_several(state):
    assert value_of(run(state, "push", {"a": 1, "b": [1, 2]})) is None
    assert value_of(run(state, "pull", "a")) == 1
    assert value_of(run(state, "pull", ["b", "a"])) == [[1, 2], 1]


def test_pull_of_missing_names_is_a_name_error(state):
    run(state, "push", {"a": 1})
    error = error_of(run(state, "pull", ["a", "nope", "nada"]))
    assert error["ename"] == "NameError"
    assert error["evalue"] == "name(s) not defined on the engine: nope, nada"


def test_push_function_and_pull_function(state):
    run(state, "push_function", {"add": add})
    run(state, "execute", "r = add(3, b=4)")
    assert state.namespace["r"] == 7
    assert value_of(run(state, "pull_function", "add"))(1, 1) == 2


def test_push_serialized_loads_the_bytes_on_the_engine(state):
    # Given values the client serialized itself
    run(state, "push_serialized", {"a": serialization.dumps([1, 2]), "f": serialization.dumps(add)})
    # Then the engine holds the objects, not the bytes
    assert state.namespace["a"] == [1, 2]
    assert state.namespace["f"](2, 3) == 5


def test_push_serialized_refuses_what_is_not_bytes_and_binds_nothing(state):
    error = error_of(run(state, "push_serialized", {"ok": serialization.dumps(1), "bad": [1]}))
    assert error["ename"] == "TypeError" and "'bad'" in error["evalue"]
    error = error_of(run(state, "push_serialized", {"ok": serialization.dumps(1), "torn": b"\x80\x05"}))
    assert error["ename"] == "SerializationError" and "'torn'" in error["evalue"]
    assert "ok" not in state.namespace


def test_pull_serialized_returns_bytes_that_load_to_the_values(state):
    run(state, "push", {"a": {"k": 1}, "b": (2, 3)})
    one = value_of(run(state, "pull_serialized", "a"))
    assert isinstance(one, bytes) and serialization.loads(one) == {"k": 1}
    several = value_of(run(state, "pull_serialized", ["b", "a"]))
    assert [serialization.loads(v) for v in several] == [(2, 3), {"k": 1}]
    assert error_of(run(state, "pull_serialized", ["nope"]))["ename"] == "NameError"


def test_keys_lists_user_names_sorted(state):
    run(state, "push", {"zeta": 1, "alpha": 2})
    run(state, "execute", "import os")
    assert value_of(run(state, "keys")) == ["alpha", "os", "zeta"]


def test_reset_clears_the_namespace_but_keeps_builtins(state):
    run(state, "push", {"a": 1})
    assert value_of(run(state, "reset")) is None
    assert value_of(run(state, "keys")) == []
    assert value_of(run(state, "execute", "b = len('abc')")) is None  # builtins still there
    assert state.namespace["b"] == 3


def test_get_result_returns_the_last_or_the_ith_execution(state):
    assert error_of(run(state, "get_result"))["ename"] == "IndexError"
    run(state, "execute", "print('first')")
    run(state, "execute", "print('second')")
    last = value_of(run(state, "get_result"))
    assert last == {"number": 1, "input": "print('second')", "stdout": "second\n", "stderr": ""}
    assert value_of(run(state, "get_result", 0))["stdout"] == "first\n"
    assert error_of(run(state, "get_result", 5))["ename"] == "IndexError"


def test_kill_succeeds_and_does_nothing_itself(state):
    run(state, "push", {"a": 1})
    outcome = run(state, "kill")
    assert value_of(outcome) is None
    assert state.namespace["a"] == 1


def test_map_task_calls_the_function(state):
    assert value_of(run(state, "map_task", {"call": (add, (1, 2), {})})) == 3


def test_string_task_pushes_runs_and_pulls(state):
    request = {"expression": "c = a + b", "push": {"a": 1, "b": 2}, "pull": ["c", "a"]}
    assert value_of(run(state, "string_task", request)) == {"c": 3, "a": 1}
    assert value_of(run(state, "string_task", {"expression": "d = 1", "push": None, "pull": "d"})) == {"d": 1}
    assert value_of(run(state, "string_task", {"expression": "e = 1"})) == {}


def test_string_task_pull_of_undefined_name_fails(state):
    error = error_of(run(state, "string_task", {"expression": "x = 1", "pull": ["x", "y"]}))
    assert error["ename"] == "NameError"
    assert error["evalue"] == "name(s) not defined after the task ran: y"


def test_depend_false_means_unmet_and_nothing_runs(state):
    request = {"call": (add, (1,), {}), "depend": lambda props: props.get("gpu") is True}
    assert run(state, "map_task", request, properties={"gpu": False}) == {"ok": False, "unmet": True}
    assert value_of(run(state, "map_task", request, properties={"gpu": True})) == 1


def test_depend_that_raises_is_a_depend_error(state):
    request = {"call": (add, (1,), {}), "depend": lambda props: props["missing"]}
    error = error_of(run(state, "map_task", request, properties={}))
    assert error["ename"] == "DependError"
    assert error["evalue"] == "depend raised KeyError: 'missing'"


def test_recovery_task_runs_only_on_a_retry(state):
    request = {"expression": "n = recovered", "pull": "n",
               "recovery": {"kind": "string_task", "expression": "recovered = 'yes'"}}
    assert error_of(run(state, "string_task", request, attempt=1))["ename"] == "NameError"
    assert value_of(run(state, "string_task", request, attempt=2)) == {"n": "yes"}


def test_recovery_task_that_raises(state):
    request = {"call": (add, (1,), {}), "recovery": {"kind": "string_task", "expression": "1 / 0"}}
    error = error_of(run(state, "map_task", request, attempt=2))
    assert error["ename"] == "RecoveryTaskFailed"
    assert error["evalue"] == "recovery_task raised ZeroDivisionError: division by zero"


def test_clear_before_and_clear_after(state):
    run(state, "push", {"old": 1})
    request = {"expression": "seen = sorted(k for k in globals() if not k.startswith('__'))", "pull": "seen"}
    assert value_of(run(state, "string_task", request, clear_before=True)) == {"seen": []}
    assert user_keys(state) == ["seen"]
    run(state, "string_task", {"expression": "tmp = 1"}, clear_after=True)
    assert user_keys(state) == []


def test_clear_after_happens_even_when_the_task_fails(state):
    run(state, "push", {"keep": 1})
    error_of(run(state, "execute", "boom = 1\nraise RuntimeError('x')", clear_after=True))
    assert user_keys(state) == []


# --- errors -------------------------------------------------------------------------------
def test_user_exception_becomes_an_error_outcome_with_traceback(state):
    outcome = run(state, "apply", (explode, ("it broke",), {}))
    error = error_of(outcome)
    assert error["ename"] == "ValueError" and error["evalue"] == "it broke"
    assert "raise ValueError(message)  # the remote line" in error["traceback"]
    assert error["traceback"].rstrip().endswith("ValueError: it broke")
    assert "value" not in outcome


def test_execute_error_names_the_cell_and_line(state):
    error = error_of(run(state, "execute", "a = 1\nb = undefined_name"))
    assert error["ename"] == "NameError"
    assert 'File "<execute-0>", line 2' in error["traceback"]


def test_output_before_a_failure_is_kept(state):
    outcome = run(state, "execute", "print('partial')\n1/0")
    assert error_of(outcome)["ename"] == "ZeroDivisionError"
    assert outcome["stdout"] == "partial\n"
    assert state.history[-1]["stdout"] == "partial\n"


@pytest.mark.parametrize("code, ename", [
    ("raise SystemExit(3)", "SystemExit"),
    ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ("import sys; sys.exit('bye')", "SystemExit"),
])
def test_base_exceptions_do_not_escape(state, code, ename):
    assert error_of(run(state, "execute", code))["ename"] == ename


def test_syntax_error(state):
    error = error_of(run(state, "execute", "def ("))
    assert error["ename"] == "SyntaxError"


def test_unpicklable_result_is_a_serialization_error_naming_the_result(state):
    run(state, "push", {"keep": 1})
    outcome = run(state, "apply", (threading.Lock, (), {}))
    error = error_of(outcome)
    assert error["ename"] == "SerializationError"
    assert error["evalue"].startswith("cannot pickle the result of apply: TypeError:")
    assert "lock" in error["evalue"]
    assert "value" not in outcome
    # Nothing else was lost.
    assert value_of(run(state, "pull", "keep")) == 1


def test_unpicklable_pulled_value_names_the_pull(state):
    run(state, "execute", "import threading; lk = threading.Lock()")
    error = error_of(run(state, "pull", "lk"))
    assert error["ename"] == "SerializationError"
    assert "the result of pull" in error["evalue"]


def test_request_that_does_not_unpickle(state):
    outcome = run_command(state, {"kind": "apply"}, b"\x80\x05garbage", CAP)
    error = error_of(outcome)
    assert error["ename"] == "SerializationError"
    assert error["evalue"].startswith("cannot unpickle the apply request:")


def test_unknown_command(state):
    outcome = run_command(state, {"kind": "format_disk"}, serialization.dumps(None), CAP)
    assert error_of(outcome) == {"ename": "ValueError", "evalue": "unknown command 'format_disk'",
                                 "traceback": error_of(outcome)["traceback"]}
    assert "ValueError: unknown command 'format_disk'" in outcome["error"]["traceback"]
    assert error_of(run_command(state, {}, b"", CAP))["evalue"] == "unknown command ''"


def test_result_whose_repr_fails_still_returns(state):
    class NoRepr:
        def __repr__(self):
            raise RuntimeError("no repr")

    outcome = run(state, "apply", (NoRepr, (), {}))
    assert outcome["ok"] is True and outcome["summary"] == "<NoRepr>"


def test_long_summary_is_cut(state):
    outcome = run(state, "apply", (str.__mul__, ("ab", 500), {}))
    assert len(outcome["summary"]) == 200 and outcome["summary"].endswith("...")
    assert value_of(outcome) == "ab" * 500


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("str() of this exception fails")


def raise_unprintable():
    raise UnprintableError()


def test_exception_whose_str_fails_is_still_an_outcome(state):
    outcome = run(state, "apply", (raise_unprintable, (), {}))
    assert error_of(outcome)["ename"] == "UnprintableError"


# --- output capping -----------------------------------------------------------------------
def test_output_over_the_cap_is_truncated_with_a_note(state):
    outcome = run(state, "execute", "print('x' * 100)", cap=10)
    assert outcome["stdout"] == "x" * 10 + "\n[enginefarm: output truncated, 91 more characters dropped]\n"
    assert state.history[-1]["stdout"] == outcome["stdout"]


def test_stdout_and_stderr_are_capped_separately(state):
    outcome = run(state, "apply", (shout, ("a" * 50,), {}), cap=20)
    assert outcome["stdout"].startswith("A" * 20 + "\n[enginefarm: output truncated,")
    assert outcome["stderr"] == "to stderr\n"


def test_output_under_the_cap_is_untouched(state):
    assert run(state, "execute", "print('y' * 9)", cap=10)["stdout"] == "y" * 9 + "\n"


def test_capped_writer_keeps_first_cap_characters_and_counts_the_rest():
    writer = CappedWriter(5)
    assert writer.writable()
    assert writer.write("abc") == 3
    assert writer.write("defgh") == 5  # always reports everything as written
    assert writer.write("ij") == 2
    assert (writer.size, writer.dropped) == (5, 5)
    assert writer.getvalue() == "abcde\n[enginefarm: output truncated, 5 more characters dropped]\n"


def test_capped_writer_exactly_at_cap_has_no_note():
    writer = CappedWriter(4)
    writer.write("abcd")
    writer.write("")
    assert writer.getvalue() == "abcd" and writer.dropped == 0


def test_capped_writer_zero_cap_drops_everything():
    writer = CappedWriter(0)
    writer.write("hello")
    assert writer.getvalue() == "\n[enginefarm: output truncated, 5 more characters dropped]\n"


def test_cap_is_in_bytes_for_non_ascii_output(state):
    # Settings.output_cap_bytes: "Cap on captured stdout/stderr per task, in bytes."
    outcome = run(state, "execute", "print('é' * 100)", cap=10)
    kept = outcome["stdout"].split("\n[enginefarm: output truncated")[0]
    assert len(kept.encode("utf-8")) <= 10
