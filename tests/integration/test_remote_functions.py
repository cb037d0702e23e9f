"""Functions that see the engine, against real engines: Reference and @interactive.

Each test has its own cluster (a scheduler and two engines); this module's functions travel
by value (see the end), so engines never import the test suite.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import pytest

from enginefarm import Client, MapTask, Reference, RemoteError, interactive

from ..harness import Cluster, Daemon, wait_for
from . import farm_tasks as ft

TIMEOUT_S = 60


@pytest.fixture
def engines(cluster: Cluster) -> list[Daemon]:
    """A scheduler and engines 0 and 1, both taking load-balanced work."""
    cluster.start_scheduler()
    daemons = cluster.start_engines(2)
    wait_for(lambda: ft.work_queue_consumers(cluster.settings) == 2, TIMEOUT_S, "both engines consuming")
    return daemons


def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs] if kwargs else list(args)


def task_value(client: Client, task: MapTask) -> Any:
    result = client.get_task_result(client.submit(task), block=True, timeout=TIMEOUT_S)
    assert result is not None
    result.raise_exception()
    return result.result


# --- Reference ----------------------------------------------------------------------------
def test_reference_takes_each_engines_own_value_in_direct_apply(client: Client, engines: list[Daemon]) -> None:
    # Given a name with a different value on each engine
    client[0].push({"a": "zero"})
    client[1].push({"a": "one"})
    ref = Reference("a")
    dv = client.direct_view()
    # When it is passed positionally, by keyword and inside containers
    result = dv.apply(echo, ref, [ref], k={"x": ref}, block=True)
    # Then each engine called the function with its own value
    assert result == [[["zero", ["zero"]], {"k": {"x": "zero"}}], [["one", ["one"]], {"k": {"x": "one"}}]]


def test_reference_to_a_function_and_to_an_expression(client: Client, engines: list[Daemon]) -> None:
    dv = client.direct_view()
    dv.execute("import os\nf = lambda x: 3 * x\ng = [10, 20]")
    assert dv.apply(Reference("f"), 5, block=True) == [15, 15]
    assert client[1].apply(echo, Reference("g[1]"), Reference("os.sep"), block=True) == [20, "/"]


def test_reference_in_load_balanced_apply_map_and_map_task(client: Client, engines: list[Daemon]) -> None:
    client.direct_view().push({"a": 7})
    lview = client.load_balanced_view()
    ref = Reference("a")
    assert lview.apply(echo, ref, k=[ref], block=True) == [[7], {"k": [7]}]
    assert lview.map(lambda x, y: x * y, [ref] * 3, [1, 2, 3], block=True) == [7, 14, 21]
    assert task_value(client, MapTask(echo, (ref,), {"k": (ref,)})) == [[7], {"k": (7,)}]


def test_missing_reference_fails_the_task_with_a_name_error(client: Client, engines: list[Daemon]) -> None:
    missing = Reference("elvis_has_left")
    with pytest.raises(RemoteError) as direct:
        client[0].apply(echo, missing, block=True)
    assert direct.value.ename == "NameError"
    assert "elvis_has_left" in direct.value.evalue and direct.value.engine_id == 0
    result = client.get_task_result(client.submit(MapTask(echo, (missing,))), block=True, timeout=TIMEOUT_S)
    assert result is not None and result.failure is not None
    assert result.failure.ename == "NameError" and "Reference('elvis_has_left')" in result.failure.evalue


# --- @interactive -------------------------------------------------------------------------
@interactive
def scale(x: int) -> int:
    """Reads ``factor`` and assigns ``scaled`` in the engine's namespace."""
    global scaled
    scaled = factor * x  # type: ignore[name-defined]  # noqa: F821  (pushed to the engine)
    return scaled  # type: ignore[name-defined]  # noqa: F821


def test_interactive_function_reads_and_assigns_pushed_names(client: Client, engines: list[Daemon]) -> None:
    # Given a name pushed to each engine
    dv = client.direct_view()
    dv.push({"factor": 10}, targets=0)
    dv.push({"factor": 100}, targets=1)
    # When an interactive function runs there
    assert dv.apply(scale, 2, block=True) == [20, 200]
    # Then it saw the engine's names and its global assignment stayed there
    assert dv.pull("scaled") == [20, 200]


def test_a_plain_function_keeps_its_own_globals(client: Client, engines: list[Daemon]) -> None:
    def reads_factor() -> Any:
        return factor  # type: ignore[name-defined]  # noqa: F821

    client[0].push({"factor": 10})
    with pytest.raises(RemoteError) as info:
        client[0].apply(reads_factor, block=True)
    assert info.value.ename == "NameError"


def test_interactive_with_load_balanced_apply_map_and_map_task(client: Client, engines: list[Daemon]) -> None:
    client.direct_view().push({"factor": 3})
    lview = client.load_balanced_view()
    assert lview.apply(scale, 2, block=True) == 6
    assert lview.map(scale, range(5), block=True) == [0, 3, 6, 9, 12]
    assert task_value(client, MapTask(scale, (7,))) == 21


def test_pushed_interactive_function_sees_the_namespace_from_executed_code(client: Client,
                                                                           engines: list[Daemon]) -> None:
    view = client[1]
    view.push_function({"scale": scale})
    view.push({"factor": 4})
    view.execute("r = scale(5)")
    assert view.pull("r") == 20


cloudpickle.register_pickle_by_value(sys.modules[__name__])
