"""References and @interactive, bound in the engine's child (worker/binding.py) before a
request runs; ``run_command`` is called in-process, exactly as the child calls it."""

from __future__ import annotations

from typing import Any

import pytest

from enginefarm import Reference, interactive, serialization
from enginefarm.chunks import call_chunk
from enginefarm.reference import is_interactive
from enginefarm.worker.binding import Binder, mentions_engine_side
from enginefarm.worker.commands import EngineState, run_command

from .engine_calls import CAP, error_of, run, value_of


@pytest.fixture
def state() -> EngineState:
    return EngineState()








def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


# --- Reference ----------------------------------------------------------------------------
def test_reference_arguments_take_the_engine_value_positional_keyword_and_nested(state: EngineState) -> None:
    # Given a name defined on the engine
    run(state, "push", {"a": 5})
    ref = Reference("a")
    # When it is passed as an argument, alone or inside lists, tuples and dicts
    request = (echo, (ref, [ref, (ref,)]), {"k": ref, "d": {"x": ref}})
    # Then the function sees the value
    assert value_of(run(state, "apply", request)) == ((5, [5, (5,)]), {"k": 5, "d": {"x": 5}})


def test_reference_is_looked_up_when_the_task_runs(state: EngineState) -> None:
    run(state, "push", {"a": 1})
    payload = serialization.dumps((echo, (Reference("a"),), {}))
    run(state, "push", {"a": 2})
    outcome = run_command(state, {"kind": "apply"}, payload, CAP)
    assert value_of(outcome) == ((2,), {})


def test_reference_in_place_of_the_function_and_as_an_expression(state: EngineState) -> None:
    run(state, "execute", "f = lambda x: 3 * x\ng = [10, 20]\nclass A: pass\nobj = A(); obj.b = 7")
    assert value_of(run(state, "apply", (Reference("f"), (5,), {}))) == 15
    assert value_of(run(state, "apply", (echo, (Reference("g[1]"), Reference("obj.b")), {}))) == ((20, 7), {})


def test_missing_reference_fails_with_a_name_error_naming_it(state: EngineState) -> None:
    error = error_of(run(state, "apply", (echo, (Reference("elvis_has_left"),), {})))
    assert error["ename"] == "NameError"
    assert "elvis_has_left" in error["evalue"] and "Reference('elvis_has_left')" in error["evalue"]


def test_references_in_map_tasks_chunks_and_pushed_values(state: EngineState) -> None:
    run(state, "push", {"a": 4})
    ref = Reference("a")
    # A load-balanced map chunk carries its items four levels down.
    chunk = {"call": (call_chunk, (echo, [(ref,), (1,)]), {}), "depend": None, "recovery": None}
    assert value_of(run(state, "map_task", chunk, lb=True)) == [((4,), {}), ((1,), {})]
    run(state, "push", {"b": ref})
    assert value_of(run(state, "pull", "b")) == 4
    task = {"expression": "c = b + 1", "push": {"b": ref}, "pull": "c"}
    assert value_of(run(state, "string_task", task, lb=True)) == {"c": 5}


def test_reference_checks_its_argument_here() -> None:
    with pytest.raises(TypeError):
        Reference(5)  # type: ignore[arg-type]
    with pytest.raises(SyntaxError):
        Reference("a b")
    ref = Reference("a")
    assert repr(ref) == "<Reference: 'a'>" and ref == Reference("a") and ref != Reference("b")
    with pytest.raises(TypeError, match="only the engine"):
        ref()


# --- @interactive -------------------------------------------------------------------------
def test_interactive_function_reads_and_assigns_the_namespace(state: EngineState) -> None:
    @interactive
    def scale(x: int) -> int:
        global scaled
        scaled = factor * x  # type: ignore[name-defined]  # noqa: F821  (defined on the engine)
        return scaled  # type: ignore[name-defined]  # noqa: F821

    run(state, "push", {"factor": 3})
    assert value_of(run(state, "apply", (scale, (2,), {}))) == 6
    assert value_of(run(state, "pull", "scaled")) == 6


def test_a_plain_function_does_not_see_the_namespace(state: EngineState) -> None:
    def read() -> Any:
        return factor  # type: ignore[name-defined]  # noqa: F821

    run(state, "push", {"factor": 3})
    assert error_of(run(state, "apply", (read, (), {})))["ename"] == "NameError"


def test_interactive_in_map_chunks_and_pushed_functions(state: EngineState) -> None:
    @interactive
    def add_base(x: int) -> int:
        return base + x  # type: ignore[name-defined]  # noqa: F821

    run(state, "push", {"base": 100})
    chunk = {"call": (call_chunk, (add_base, [(1,), (2,)]), {}), "depend": None, "recovery": None}
    assert value_of(run(state, "map_task", chunk, lb=True)) == [101, 102]
    # A pushed interactive function works from executed code too.
    run(state, "push_function", {"add_base": add_base})
    run(state, "execute", "r = add_base(5)")
    assert value_of(run(state, "pull", "r")) == 105


def test_interactive_keeps_the_local_function_and_its_behaviour() -> None:
    def plain(x: int, *, y: int = 2) -> int:
        """doc"""
        return x * y

    marked = interactive(plain)
    assert is_interactive(marked) and not is_interactive(plain)
    assert plain.__module__ == __name__ and marked.__module__ == "__main__"
    assert marked(3) == 6 and marked.__doc__ == "doc" and marked.__name__ == "plain"
    assert interactive(len) is len  # nothing to rebind in a builtin


# --- what is walked -----------------------------------------------------------------------
def test_plain_requests_are_not_walked() -> None:
    assert not mentions_engine_side(serialization.dumps((echo, (list(range(1000)),), {})))
    assert mentions_engine_side(serialization.dumps((echo, (Reference("a"),), {})))
    assert mentions_engine_side(serialization.dumps((interactive(echo), (), {})))


def test_binding_copies_only_what_changed() -> None:
    binder = Binder({"a": 1, "__builtins__": __builtins__})
    untouched = ([1, 2], {"k": (3,)})
    assert binder.bind(untouched) is untouched
    bound = binder.bind(([Reference("a")], {"k": (3,)}))
    assert bound == ([1], {"k": (3,)})
