"""@depend and @require checked in the engine's child before a call runs (dependency.py,
worker/binding.py), and what the retry policy makes of a refusal (schedulers/retry.py)."""

from __future__ import annotations

import types
from typing import Any

import pytest

from enginefarm import Reference, UnmetDependency, depend, interactive, require
from enginefarm.chunks import call_chunk
from enginefarm.schedulers import retry
from enginefarm.worker.commands import EngineState

from .engine_calls import run, value_of
MISSING = "enginefarm_no_such_module_xyz"


@pytest.fixture
def state() -> EngineState:
    return EngineState()




def lb_task(f: Any, *args: Any) -> dict[str, Any]:
    return {"call": (f, args, {}), "depend": None, "recovery": None}




def double(x: int) -> int:
    return 2 * x


def is_set(name: str) -> bool:
    return name == "yes"


# --- @depend ------------------------------------------------------------------------------
def test_depend_true_runs_the_function(state: EngineState) -> None:
    assert value_of(run(state, "map_task", lb_task(depend(is_set, "yes")(double), 4), lb=True)) == 8
    assert value_of(run(state, "apply", (depend(is_set, name="yes")(double), (4,), {}))) == 8


def test_depend_false_refuses_a_load_balanced_task_and_fails_a_targeted_call(state: EngineState) -> None:
    # Given a condition that is false on this engine
    guarded = depend(is_set, "no")(double)
    # When it comes load-balanced, the engine refuses it (it goes elsewhere)
    refusal = run(state, "map_task", lb_task(guarded, 4), lb=True)
    assert refusal["ok"] is False and refusal["unmet"] is True
    assert refusal["error"]["ename"] == "UnmetDependency"
    assert refusal["error"]["evalue"] == "is_set('no') is false on this engine"
    # When it is a targeted call, it fails with UnmetDependency (nowhere else to go)
    failed = run(state, "apply", (guarded, (4,), {}))
    assert failed["error"]["ename"] == "UnmetDependency" and "unmet" not in failed


def test_depend_raising_unmet_counts_as_false_and_other_errors_fail(state: EngineState) -> None:
    def refuses() -> bool:
        raise UnmetDependency("not on this one")

    def breaks() -> bool:
        raise KeyError("gpu")

    assert run(state, "map_task", lb_task(depend(refuses)(double), 1), lb=True)["unmet"] is True
    broken = run(state, "map_task", lb_task(depend(breaks)(double), 1), lb=True)
    assert broken["error"]["ename"] == "KeyError" and "unmet" not in broken


def test_depend_arguments_bind_to_the_engine(state: EngineState) -> None:
    @interactive
    def has(name: str) -> bool:
        return name in globals()

    run(state, "push", {"flag": "yes", "ready": 1})
    assert value_of(run(state, "apply", (depend(is_set, Reference("flag"))(double), (1,), {}))) == 2
    assert value_of(run(state, "apply", (depend(has, "ready")(double), (1,), {}))) == 2
    assert run(state, "map_task", lb_task(depend(has, "absent")(double), 1), lb=True)["unmet"] is True


def test_nested_dependents_are_all_checked_and_chunks_too(state: EngineState) -> None:
    both = depend(is_set, "yes")(depend(is_set, "no")(double))
    assert run(state, "map_task", lb_task(both, 1), lb=True)["unmet"] is True
    # A load-balanced map sends the function as call_chunk's argument.
    chunk = lb_task(call_chunk, depend(is_set, "no")(double), [(1,), (2,)])
    assert run(state, "map_task", chunk, lb=True)["unmet"] is True


def test_unmet_dependency_raised_by_the_task_itself_refuses_it(state: EngineState) -> None:
    def not_here() -> None:
        raise UnmetDependency("wrong engine")

    assert run(state, "map_task", lb_task(not_here), lb=True)["unmet"] is True
    assert "unmet" not in run(state, "apply", (not_here, (), {}))


# --- @require -----------------------------------------------------------------------------
def test_require_imports_modules_and_pushes_named_objects(state: EngineState) -> None:
    def helper(x: int) -> int:
        return x + 1

    @require("colorsys", "xml.dom", types, helper, offset=10)
    @interactive
    def uses() -> Any:
        return (colorsys.__name__, xml.dom.__name__, types.__name__,  # type: ignore[name-defined]  # noqa: F821
                helper(offset))  # type: ignore[name-defined]  # noqa: F821

    assert value_of(run(state, "map_task", lb_task(uses), lb=True)) == ("colorsys", "xml.dom", "types", 11)
    # The imports and pushes stay in the namespace, as in ipyparallel.
    assert value_of(run(state, "pull", ["colorsys", "offset"]))[1] == 10


def test_require_of_a_missing_module_refuses_the_task(state: EngineState) -> None:
    refusal = run(state, "map_task", lb_task(require(MISSING)(double), 1), lb=True)
    assert refusal["unmet"] is True and refusal["error"]["traceback"] == ""
    assert f"cannot import {MISSING!r} on this engine" in refusal["error"]["evalue"]


def test_require_survives_clear_before(state: EngineState) -> None:
    @require("colorsys")
    @interactive
    def uses() -> str:
        return colorsys.__name__  # type: ignore[name-defined]  # noqa: F821

    assert value_of(run(state, "map_task", lb_task(uses), lb=True, clear_before=True)) == "colorsys"


def test_require_refuses_what_it_cannot_name() -> None:
    with pytest.raises(TypeError, match="by keyword"):
        require(42)
    with pytest.raises(TypeError):
        depend(42)  # type: ignore[arg-type]
    guarded = require("colorsys")(double)
    assert guarded.__name__ == "double" and guarded(2) == 4  # a local call just calls it


# --- the retry policy ---------------------------------------------------------------------
def decide(ename: str, untried: int | None) -> retry.Decision:
    return retry.after_outcome(True, False, True, ename, 1, 0, 0, 3, untried)


def test_an_engine_refusal_requeues_until_every_live_engine_refused() -> None:
    assert decide("UnmetDependency", 1).requeue
    assert decide("UnmetDependency", None).requeue
    final = decide("UnmetDependency", 0)
    assert not final.requeue and final.ename == "ImpossibleDependency" and final.note
    # A depend on properties waits for them to change instead.
    assert decide("", 0).requeue
    assert retry.counts_refusals("UnmetDependency", depends_on_properties=False)
    assert not retry.counts_refusals("UnmetDependency", depends_on_properties=True)
    assert not retry.counts_refusals("", depends_on_properties=False)
