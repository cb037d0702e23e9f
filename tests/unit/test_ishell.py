"""``execute`` in IPython, as the engine's child runs it: magics, ``!cmd``, rich display, errors
as IPython draws them; and plain ``exec`` when IPython is not wanted or not there.

``run_command`` is called in-process (no servers); a real child process is interrupted at the
end.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import enginefarm.worker
from enginefarm import Reference, serialization
from enginefarm.worker import ishell
from enginefarm.worker.commands import EngineState
from enginefarm.worker.executor import Executor

from . import engine_calls
from .engine_calls import error_of, value_of

CAP = 10_000


def run(state: EngineState, kind: str, request: Any = None, **header: Any) -> dict[str, Any]:
    return engine_calls.run(state, kind, request, CAP, **header)


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[EngineState]:
    """An engine's state whose execute runs in IPython; the shell it makes (IPython's
    singleton, and the __main__ it installs) is undone afterwards."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    main = sys.modules["__main__"]
    handle = EngineState(shell_mode="ipython")
    try:
        yield handle
    finally:
        ishell.EngineShell.clear_instance()
        sys.modules["__main__"] = main








def test_shell_escapes_and_magics_run(state):
    outcome = run(state, "execute", "!echo hi from the shell\n%time total = sum(range(10))\n")
    assert value_of(outcome) is None
    assert "hi from the shell" in outcome["stdout"] and "Wall time" in outcome["stdout"]
    assert state.namespace["total"] == 45


def test_displays_and_the_last_value_come_back_as_mime_bundles(state):
    code = ("from IPython.display import display, HTML, Image\n"
            "display(HTML('<b>bold</b>'))\n"
            "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\nfake', format='png'))\n"
            "6 * 7")
    outcome = run(state, "execute", code)
    html, image = outcome["outputs"]
    assert html["data"]["text/html"] == "<b>bold</b>" and "text/plain" in html["data"]
    # Bytes travel as Jupyter sends them: base64 text (the bundle is JSON)
    assert image["data"]["image/png"] == "iVBORw0KGgpmYWtl"
    assert outcome["execute_result"] == {"data": {"text/plain": "42"}, "metadata": {}, "execution_count": 1}


def test_a_statement_or_a_quiet_expression_has_no_value(state):
    assert "execute_result" not in run(state, "execute", "x = 1")
    assert "execute_result" not in run(state, "execute", "x;")
    assert "outputs" not in run(state, "execute", "x")


def test_the_namespace_is_the_one_push_pull_and_apply_see(state):
    run(state, "push", {"a": 20})
    run(state, "execute", "b = a + 1\ndef twice(v):\n    return 2 * v")
    assert value_of(run(state, "pull", ["a", "b"])) == [20, 21]
    assert value_of(run(state, "apply", (Reference("twice"), (Reference("b"),), {}))) == 42
    # The shell's own names (In, Out, _i1, get_ipython...) are not listed as the user's
    assert value_of(run(state, "keys")) == ["a", "b", "twice"]


def test_reset_keeps_the_shell_working(state):
    run(state, "execute", "x = 1")
    run(state, "reset")
    assert value_of(run(state, "keys")) == []
    outcome = run(state, "execute", "y = 2\ny")
    assert outcome["execute_result"]["data"]["text/plain"] == "2"
    assert value_of(run(state, "execute", "In[-1]", clear_before=True)) is None


def test_an_error_is_an_error_outcome_with_the_cells_traceback(state):
    error = error_of(run(state, "execute", "def f():\n    return 1 / 0\nf()"))
    assert error["ename"] == "ZeroDivisionError" and error["evalue"] == "division by zero"
    tb = error["traceback"]
    assert "Cell In[1], line 3" in tb and "----> 2     return 1 / 0" in tb
    # The engine's machinery is not in it, and it has no terminal colours
    assert "commands.py" not in tb and "interactiveshell" not in tb and "\x1b[" not in tb


def test_syntax_and_usage_errors_are_error_outcomes(state):
    assert error_of(run(state, "execute", "1 +"))["ename"] == "SyntaxError"
    error = error_of(run(state, "execute", "%no_such_magic"))
    assert error["ename"] == "UsageError" and "no_such_magic" in error["traceback"]


def test_what_was_displayed_before_an_error_is_kept(state):
    outcome = run(state, "execute", "from IPython.display import display\ndisplay('before')\nraise KeyError('k')")
    assert error_of(outcome)["ename"] == "KeyError"
    assert outcome["outputs"][0]["data"]["text/plain"] == "'before'"


def test_top_level_await_works(state):
    outcome = run(state, "execute", "import asyncio\nawait asyncio.sleep(0)\n'awaited'")
    assert outcome["execute_result"]["data"]["text/plain"] == "'awaited'"


def test_display_outputs_over_the_cap_are_dropped_with_a_note(state):
    state.display_cap = 2000
    outcome = run(state, "execute", "from IPython.display import display\nfor i in range(50):\n    display('x' * 100)")
    kept = outcome["outputs"]
    assert 1 < len(kept) < 50 and "display output(s) dropped" in kept[-1]["data"]["text/plain"]


def test_plain_mode_runs_exec_without_ipython():
    plain = EngineState(shell_mode="plain")
    outcome = run(plain, "execute", "x = 1\nx")
    assert value_of(outcome) is None and "execute_result" not in outcome and plain.shell is None
    assert error_of(run(plain, "execute", "%time x"))["ename"] == "SyntaxError"


def test_auto_mode_without_ipython_falls_back_to_exec(monkeypatch):
    # Given an engine where the IPython shell cannot be imported (None in sys.modules: an
    # import of it raises ImportError, as on an engine without IPython)
    monkeypatch.setitem(sys.modules, "enginefarm.worker.ishell", None)
    monkeypatch.delattr(enginefarm.worker, "ishell", raising=False)
    auto = EngineState(shell_mode="auto")
    # Then execute is plain Python, as before IPython was known
    outcome = run(auto, "execute", "print('plain')")
    assert outcome["stdout"] == "plain\n" and auto.shell is None and auto.shell_mode == "plain"
    # And an engine that insists on IPython says why it cannot
    insist = EngineState(shell_mode="ipython")
    assert error_of(run(insist, "execute", "1"))["ename"] in ("ImportError", "ModuleNotFoundError")


def test_an_unknown_shell_mode_is_refused():
    with pytest.raises(ValueError):
        EngineState(shell_mode="bash")


def test_the_shell_hides_only_its_own_names(state):
    run(state, "execute", "_private = 1\n__dunder_ish = 2\nx = 3")
    names = value_of(run(state, "keys"))
    assert names == ["__dunder_ish", "_private", "x"]
    assert ishell.hidden(state.shell, ["In", "_i1", "_3", "_", "___", "_exit_code", "_ih"]) == []


def test_bundles_are_made_json_safe():
    weird = {"data": {"text/plain": "t", "image/png": b"\x00\x01", "application/x-obj": {1, 2}},
             "metadata": {"bad": object()}}
    safe = ishell.jsonable(weird)
    assert safe["data"] == {"text/plain": "t", "image/png": "AAE=", "application/x-obj": "{1, 2}"}
    assert safe["metadata"] == {}


# --- a real child, interrupted -------------------------------------------------------------
def test_sigint_interrupts_an_ipython_cell_in_a_real_child():
    executor = Executor(output_cap_bytes=CAP, shell="ipython")
    executor.start()
    try:
        # Given a child whose shell exists (the first execute made it)
        first = executor.run({"kind": "execute"}, serialization.dumps("kept = 7\nkept"), timeout_s=60)
        assert first.ok and first.execute_result is not None
        # When SIGINT arrives while a cell sleeps
        code = "import time\nfor _ in range(1200):\n    time.sleep(0.05)"
        outcome = executor.run({"kind": "execute"}, serialization.dumps(code), timeout_s=60,
                               after=[(0.5, lambda: executor.send_signal(signal.SIGINT))])
        # Then the cell fails with KeyboardInterrupt, drawn as IPython draws it, at the user's line
        assert not outcome.ok and outcome.error is not None and not outcome.namespace_lost
        assert outcome.error["ename"] == "KeyboardInterrupt"
        assert "time.sleep(0.05)" in outcome.error["traceback"]
        assert "interrupt_request" not in outcome.error["traceback"]
        # And the shell and its namespace serve the next cell
        after = executor.run({"kind": "execute"}, serialization.dumps("kept + 1"), timeout_s=60)
        assert after.execute_result is not None and after.execute_result["data"]["text/plain"] == "8"
    finally:
        executor.stop()

