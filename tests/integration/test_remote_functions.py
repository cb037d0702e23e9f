"""Functions that see the engine, against real engines: Reference, @interactive, @depend,
@require, @remote, @parallel and sync_imports.

Each test has its own cluster (a scheduler and two engines); this module's functions travel
by value (see the end), so engines never import the test suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from enginefarm import (AsyncResult, Client, CompositeError, ImpossibleDependency, MapTask, ParallelFunction, Reference,
                        RemoteError, RemoteFunction, UnmetDependency, depend, interactive, parallel, remote,
                        require)

from ..harness import Cluster, Daemon, wait_for
from . import farm_tasks as ft

TIMEOUT_S = 60
MISSING = "enginefarm_no_such_module_xyz"


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



# --- @depend and @require -----------------------------------------------------------------
@pytest.fixture
def zones(cluster: Cluster) -> list[Daemon]:
    """A scheduler, engine 0 in zone 'a' and engine 1 in zone 'b' (an environment variable:
    something only the engine itself can tell)."""
    cluster.start_scheduler()
    daemons = [cluster.start_engine(env_extra={"EF_ZONE": zone}) for zone in ("a", "b")]
    assert [d.engine_id for d in daemons] == [0, 1]
    wait_for(lambda: ft.work_queue_consumers(cluster.settings) == 2, TIMEOUT_S, "both engines consuming")
    return daemons


def in_zone(zone: str) -> bool:
    import os

    return os.environ.get("EF_ZONE") == zone


def my_zone(tag: object = None) -> Any:
    import os

    return os.environ.get("EF_ZONE") if tag is None else (os.environ.get("EF_ZONE"), tag)


def engines_of(results: list[Any]) -> list[int]:
    return [r.metadata["engine_id"] for r in results]


def test_depend_runs_tasks_only_where_the_condition_holds(client: Client, zones: list[Daemon]) -> None:
    # Given a function that depends on being in zone 'b'
    where = depend(in_zone, "b")(my_zone)
    lview = client.load_balanced_view()
    # When several calls and a map go out load-balanced
    results = [lview.apply(where, i, block=False) for i in range(4)]
    mapped = lview.map(where, range(6), block=True)
    # Then each ran on engine 1, whichever engine took it first
    assert [r.get(timeout=TIMEOUT_S) for r in results] == [("b", i) for i in range(4)]
    assert engines_of(results) == [1, 1, 1, 1]
    assert mapped == [("b", i) for i in range(6)]


def test_depend_false_everywhere_fails_with_impossible_dependency(client: Client, zones: list[Daemon]) -> None:
    ar = client.load_balanced_view().apply(depend(in_zone, "c")(my_zone), block=False)
    with pytest.raises(ImpossibleDependency) as info:
        ar.get(timeout=TIMEOUT_S)
    assert info.value.ename == "ImpossibleDependency"
    assert "in_zone('c') is false on this engine (every live engine refused the task)" == info.value.evalue
    # Both engines were asked: one handed it back, the other recorded the failure.
    record = client.records.get(ar.task_ids[0])
    assert record is not None and len(record.unmet) == 1 and {*record.unmet, record.engine_id} == {0, 1}


def test_depend_false_on_every_target_of_a_view_fails(client: Client, zones: list[Daemon]) -> None:
    # Given a view whose tasks may only run on engine 0, where the condition is false
    ar = client.load_balanced_view(targets=[0]).apply(depend(in_zone, "b")(my_zone), block=False)
    # Then engine 0's refusal is final: engine 1 is not one of the task's engines
    with pytest.raises(ImpossibleDependency):
        ar.get(timeout=TIMEOUT_S)
    record = client.records.get(ar.task_ids[0])
    assert record is not None and record.engine_id == 0 and record.unmet == ()


def test_depend_on_a_direct_view_fails_where_unmet(client: Client, zones: list[Daemon]) -> None:
    ar = client.direct_view().apply(depend(in_zone, "b")(my_zone), block=False)
    refused, ran = ar.get(timeout=TIMEOUT_S, return_exceptions=True)
    assert isinstance(refused, RemoteError) and refused.ename == "UnmetDependency" and refused.engine_id == 0
    assert ran == "b"


def test_unmet_dependency_raised_by_the_task_sends_it_elsewhere(client: Client, zones: list[Daemon]) -> None:
    def only_in_b() -> str:
        import os

        from enginefarm import UnmetDependency

        if os.environ.get("EF_ZONE") != "b":
            raise UnmetDependency("zone b only")
        return "ran in b"

    lview = client.load_balanced_view()
    assert [lview.apply(only_in_b, block=True) for _ in range(3)] == ["ran in b"] * 3
    assert UnmetDependency.__module__ == "enginefarm.errors"


def zone_noted(zone: str, path: str) -> bool:
    """``in_zone``, noting in ``path`` each engine that evaluated it."""
    import os

    with open(path, "a", encoding="utf-8") as handle:
        handle.write(os.environ.get("EF_ZONE", "") + "\n")
    return os.environ.get("EF_ZONE") == zone


def test_depend_and_the_property_depend_both_hold(client: Client, zones: list[Daemon], tmp_path: Path) -> None:
    # Given both engines with gpu=no, and a task that needs gpu=yes (properties) and zone b
    noted = tmp_path / "evaluated"
    client.direct_view().set_properties({"gpu": "no"})
    task = MapTask(depend(zone_noted, "b", str(noted))(my_zone), ("t",),
                   depend=lambda props: props.get("gpu") == "yes")
    task_id = client.submit(task)
    # Then it waits, as a property depend does (properties can change); the engines refused
    # it on their properties before looking at its zone
    wait_for(lambda: getattr(client.records.get(task_id), "waiting", ""), TIMEOUT_S, "the task to wait")
    assert client.records.get(task_id).status == "pending"  # type: ignore[union-attr]
    assert not noted.exists()
    # When engine 0 gets the gpu, its zone refuses the task; the task still waits, since
    # engine 1 refused it for properties it may yet change
    client[0].set_properties({"gpu": "yes"})
    wait_for(lambda: noted.exists() and "a" in noted.read_text().split(), TIMEOUT_S, "engine 0 to look at the zone")
    wait_for(lambda: getattr(client.records.get(task_id), "waiting", ""), TIMEOUT_S, "the task to wait again")
    assert client.records.get(task_id).status == "pending"  # type: ignore[union-attr]
    # When engine 1 gets the gpu too, the task runs there
    client[1].set_properties({"gpu": "yes"})
    result = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert result is not None and result.result == ("b", "t") and result.engineid == 1
    assert noted.read_text().split()[-1] == "b"


@interactive
def hue_of_red(helper_arg: int) -> Any:
    """Uses a module and a function that @require put in the namespace."""
    return colorsys.rgb_to_hsv(1.0, 0.0, 0.0)[0], bump(helper_arg)  # type: ignore[name-defined]  # noqa: F821


def bump(x: int) -> int:
    return x + 1


def test_require_imports_modules_and_pushes_functions_first(client: Client, engines: list[Daemon]) -> None:
    needs = require("colorsys", bump)(hue_of_red)
    assert client.direct_view().apply(needs, 1, block=True) == [(0.0, 2), (0.0, 2)]
    assert client.load_balanced_view().apply(needs, 2, block=True) == (0.0, 3)
    assert task_value(client, MapTask(needs, (3,))) == (0.0, 4)
    assert all({"colorsys", "bump"} <= set(keys) for keys in client.direct_view().keys())


def test_require_sends_tasks_to_the_engine_that_has_the_module(cluster: Cluster, client: Client,
                                                              tmp_path: Path) -> None:
    # Given a module that only engine 1 can import
    only_here = tmp_path / "only_on_engine_1"
    only_here.mkdir()
    (only_here / "ef_only_here.py").write_text("ANSWER = 42\n")
    path = os.pathsep.join(p for p in (str(only_here), os.environ.get("PYTHONPATH", "")) if p)
    cluster.start_scheduler()
    cluster.start_engine()
    cluster.start_engine(env_extra={"PYTHONPATH": path})
    wait_for(lambda: ft.work_queue_consumers(cluster.settings) == 2, TIMEOUT_S, "both engines consuming")

    @require("ef_only_here")
    @interactive
    def answer(i: int) -> tuple[int, int]:
        return ef_only_here.ANSWER, i  # type: ignore[name-defined]  # noqa: F821

    # When tasks that require it go out load-balanced
    lview = client.load_balanced_view()
    results = [lview.apply(answer, i, block=False) for i in range(4)]
    # Then they all ran on engine 1
    assert [r.get(timeout=TIMEOUT_S) for r in results] == [(42, i) for i in range(4)]
    assert engines_of(results) == [1, 1, 1, 1]


def test_require_a_module_no_engine_has_fails_with_impossible_dependency(client: Client,
                                                                          engines: list[Daemon]) -> None:
    result = client.get_task_result(client.submit(MapTask(require(MISSING)(echo), (1,))), block=True,
                                    timeout=TIMEOUT_S)
    assert result is not None and isinstance(result.failure, ImpossibleDependency)
    assert f"cannot import {MISSING!r}" in result.failure.evalue
    with pytest.raises(RemoteError) as direct:
        client[0].apply(require(MISSING)(echo), block=True)
    assert direct.value.ename == "UnmetDependency"



# --- @remote and @parallel ----------------------------------------------------------------
def test_remote_calls_apply_on_a_direct_view(client: Client, engines: list[Daemon]) -> None:
    # Given a function made remote on all engines
    @remote(client.direct_view(), block=True)
    def foo(x: int, y: int = 5) -> int:
        """multiply x * y"""
        return x * y

    # Then calling it runs it on each engine, with positional and keyword arguments
    assert isinstance(foo, RemoteFunction) and foo.__name__ == "foo"
    assert foo.__doc__ is not None and "RemoteFunction" in foo.__doc__ and "multiply x" in foo.__doc__
    assert foo(5) == [25, 25] and foo(2, 3) == [6, 6] and foo(x=5, y=2) == [10, 10]
    # On one engine it returns the bare value; a targets flag picks the engine
    assert remote(client[1], block=True)(foo.func)(3) == 15
    ar = remote(client.direct_view(), block=False, targets=[1])(foo.func)(4)
    assert isinstance(ar, AsyncResult) and ar.get(timeout=TIMEOUT_S) == [20]
    # Flags a view does not take, and unknown distributions, fail before anything is sent
    with pytest.raises(KeyError, match="retries"):
        remote(client.direct_view(), retries=1)(foo.func)
    with pytest.raises(KeyError, match="colour"):
        remote(client.load_balanced_view(), colour="red")(foo.func)
    with pytest.raises(ValueError, match="dist"):
        parallel(client.direct_view(), dist="x")(foo.func)


def test_remote_on_a_load_balanced_view_takes_task_options(client: Client, engines: list[Daemon],
                                                           tmp_path: Path) -> None:
    # Given a function that fails the first time it runs, made remote with retries=1
    def flaky(marker: str) -> str:
        import os

        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first run fails")
        return "second run"

    again = remote(client.load_balanced_view(), block=True, retries=1)(flaky)
    # Then the retry the option asked for makes it succeed
    assert again(str(tmp_path / "ran-once")) == "second run"


@interactive
def tag_part(part: list[int]) -> list[tuple[int, int]]:
    """Each item of the part with the id of the engine it ran on (pushed as ``me``)."""
    return [(me, x) for x in part]  # type: ignore[name-defined]  # noqa: F821


def push_ids(client: Client) -> None:
    for engine_id in client.ids:
        client[engine_id].push({"me": engine_id})


def test_parallel_gives_each_target_one_part(client: Client, engines: list[Daemon]) -> None:
    push_ids(client)
    dv = client.direct_view()

    @parallel(dv, block=True)
    def foo(x: list[int]) -> list[int]:
        """multiply x * 2"""
        return x * 2

    assert isinstance(foo, ParallelFunction) and "ParallelFunction" in (foo.__doc__ or "")
    # The function gets its part (a list times two repeats the list)
    assert foo([1, 2, 3, 4]) == [1, 2, 1, 2, 3, 4, 3, 4]
    # Contiguous parts: the first len % n engines get one item more
    assert parallel(dv, block=True)(tag_part)(range(5)) == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]
    # Round robin: every n-th item, joined back in item order
    assert parallel(dv, dist="r", block=True)(tag_part)(list(range(5))) == [(0, 0), (1, 1), (0, 2), (1, 3), (0, 4)]
    # Several sequences are split alike; without blocking, get() joins the parts
    ar = parallel(dv, block=False)(lambda a, b: [x + y for x, y in zip(a, b)])([1, 2, 3], [10, 20, 30])
    assert ar.get(timeout=TIMEOUT_S) == [11, 22, 33]
    with pytest.raises(ValueError, match="same length"):
        foo([1, 2], [1])
    assert foo([]) == []


def test_parallel_map_calls_the_function_on_each_item(client: Client, engines: list[Daemon]) -> None:
    push_ids(client)

    @parallel(client.direct_view(), block=True)
    @interactive
    def tag(x: int) -> tuple[int, int]:
        return me, x  # type: ignore[name-defined]  # noqa: F821

    assert tag.map(range(5)) == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]
    assert parallel(client.direct_view(), block=True)(lambda x, y: x * y).map([1, 2, 3], [1, 2, 3]) == [1, 4, 9]


def test_parallel_on_a_load_balanced_view_chunks_and_maps(client: Client, engines: list[Daemon]) -> None:
    lview = client.load_balanced_view()

    def sizes(part: list[int]) -> list[int]:
        return [len(part)]

    # One task per item by default, per chunksize items when asked
    assert parallel(lview, block=True)(sizes)(range(3)) == [1, 1, 1]
    assert ParallelFunction(lview, sizes, chunksize=2, block=True)(range(5)) == [2, 2, 1]

    @parallel(lview, block=True)
    def foo(x: int, y: int = 5) -> int:
        return x * y

    assert foo.map([1, 2, 3]) == [5, 10, 15]
    assert foo.map([1, 2, 3], [1, 2, 3]) == [1, 4, 9]


def test_views_make_remote_and_parallel_functions_as_ipyparallel_writes_them(client: Client,
                                                                           engines: list[Daemon]) -> None:
    dview, lview = client.direct_view(), client.load_balanced_view()

    @dview.remote(block=True)
    def twice(x: int) -> int:
        return 2 * x

    @dview.parallel(block=True)
    def lengths(part: list[int]) -> list[int]:
        return [len(part)]

    @lview.remote(block=True)
    def thrice(x: int) -> int:
        return 3 * x

    @lview.parallel(block=True)
    def squares(part: list[int]) -> list[int]:
        return [x * x for x in part]

    assert twice(4) == [8, 8] and lengths(range(5)) == [3, 2]
    assert thrice(4) == 12 and squares(range(4)) == [0, 1, 4, 9]



# --- sync_imports -------------------------------------------------------------------------
@interactive
def user_names() -> list[str]:
    return sorted(k for k in globals() if not k.startswith("__"))


def test_sync_imports_imports_here_and_on_every_engine(client: Client, engines: list[Daemon],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    dv = client.direct_view()
    # When modules are imported inside the block
    with dv.sync_imports():
        import colorsys
        import xml.dom.minidom as minidom
        from json import dumps
    # Then they are imported here as usual
    assert colorsys.__name__ == "colorsys" and dumps([1]) == "[1]" and minidom.__name__ == "xml.dom.minidom"
    # And on each engine exactly the block's own imports were made (not the ones they make)
    assert dv.apply(user_names, block=True) == [["colorsys", "dumps", "xml"]] * 2
    assert capsys.readouterr().out.splitlines() == [
        "importing colorsys on engine(s)",
        "importing xml.dom.minidom on engine(s)",
        "importing dumps from json on engine(s)",
    ]


def test_sync_imports_quiet_and_on_one_target(client: Client, engines: list[Daemon],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with client[1].sync_imports(quiet=True):
        import colorsys  # noqa: F401
    assert capsys.readouterr().out == ""
    assert client.direct_view().apply(user_names, block=True) == [[], ["colorsys"]]


def test_sync_imports_raises_what_an_engine_cannot_import(client: Client, engines: list[Daemon], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a module only this process can import
    (tmp_path / "ef_client_only.py").write_text("HERE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # When it is imported in the block, the engines' failures surface when it ends
    try:
        with pytest.raises(CompositeError) as info:
            with client.direct_view().sync_imports(quiet=True):
                import ef_client_only  # noqa: F401
        assert [e.ename for e in info.value.errors] == ["ModuleNotFoundError", "ModuleNotFoundError"]
        assert "ef_client_only" in sys.modules  # the local import happened
    finally:
        sys.modules.pop("ef_client_only", None)


cloudpickle.register_pickle_by_value(sys.modules[__name__])
