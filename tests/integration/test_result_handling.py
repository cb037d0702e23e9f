"""Results and remote errors as ipyparallel users handle them, against real engines."""

from __future__ import annotations

import pytest

from enginefarm import MapTask, error
from enginefarm.errors import CompositeError, RemoteError

from . import farm_tasks as ft

TIMEOUT_S = 60


def fails(label: str) -> None:
    raise ValueError(f"failed on purpose: {label}")


def shout(text: str) -> str:
    import sys

    print(f"out {text}")
    print(f"err {text}", file=sys.stderr)
    return text.upper()


def test_remote_failures_raise_subclasses_by_meaning(cluster, client, tmp_path, gates):
    engine = cluster.start_engine()
    view = client[engine.engine_id]
    # A task that ran past its time limit is a TaskTimeout
    with pytest.raises(error.TaskTimeout) as late:
        client.get_task_result(client.submit(MapTask(ft.square, (2, 30.0), timeout=0.5)), block=True,
                               timeout=TIMEOUT_S).raise_exception()
    assert isinstance(late.value, RemoteError) and late.value.ename == "TaskTimeout"
    # A task whose engine process died is an EngineError
    with pytest.raises(error.EngineError) as died:
        view.apply(ft.exit_engine_process, str(tmp_path / "trace"))
    assert died.value.ename == "EngineProcessDied"
    # A task aborted before it ran is a TaskAborted, and `except RemoteError` catches it too
    gate = gates()
    blocker = view.apply(ft.gate, gate, block=False)
    queued = view.apply(pow, 2, 2, block=False)
    assert client.abort(queued.task_ids[0]) is True
    ft.Gates.open(gate)
    blocker.get(timeout=TIMEOUT_S)
    with pytest.raises(RemoteError) as aborted:
        queued.get(timeout=TIMEOUT_S)
    assert isinstance(aborted.value, error.TaskAborted)
    # An ordinary exception stays a plain RemoteError
    with pytest.raises(RemoteError) as plain:
        view.apply(fails, "x")
    assert type(plain.value) is RemoteError and plain.value.ename == "ValueError"


def test_composite_error_renders_raises_and_limits_tracebacks(cluster, client, capsys):
    cluster.start_engines(2)
    with pytest.raises(CompositeError) as both:
        client.direct_view().apply(fails, "both")
    composite = both.value
    # Each failure can be re-raised on its own, and its traceback printed
    with pytest.raises(RemoteError) as second:
        composite.raise_exception(1)
    assert second.value is composite.errors[1] and second.value.engine_id == 1
    composite.print_traceback(0)
    assert "failed on purpose: both" in capsys.readouterr().out
    # Drawing every traceback stops at tb_limit
    composite.tb_limit = 1
    rendered = composite.render_traceback()
    assert rendered.count("failed on purpose: both") == 1 and "1 more exceptions" in rendered


def test_async_result_attributes_and_items(cluster, client):
    engines = cluster.start_engines(2)
    ar = client.direct_view().apply(shout, "hi", block=False)
    assert ar.get(timeout=TIMEOUT_S) == ["HI", "HI"]
    ids = [d.engine_id for d in engines]
    # Metadata as attributes and items, one entry per task
    assert ar.engine_id == ids == ar["engine_id"]
    assert ar.stdout == ["out hi\n", "out hi\n"] and ar.stderr == ["err hi\n", "err hi\n"]
    assert all(s <= b <= c for s, b, c in zip(ar.submitted, ar.started, ar.completed))
    assert ar.get_dict() == {ids[0]: "HI", ids[1]: "HI"}
    assert ar[1] == "HI"
    # Timings: the wall time spans the tasks, the serial time adds their runs up
    assert ar.wall_time >= max(c - b for b, c in zip(ar.started, ar.completed)) > 0
    assert ar.serial_time == pytest.approx(sum(c - b for b, c in zip(ar.started, ar.completed)))
    assert ar.elapsed >= ar.wall_time
    # A single-engine result gives bare values and its one id
    one = client[ids[0]].apply(shout, "one", block=False)
    assert one.get(timeout=TIMEOUT_S) == "ONE"
    assert one.engine_id == ids[0] and one.msg_id == one.task_ids[0] and one.stdout == "out one\n"
    assert one.get_dict() == {ids[0]: "ONE"}


def test_get_can_return_exceptions_instead_of_raising(cluster, client):
    cluster.start_scheduler()
    cluster.start_engines(2)
    view = client.load_balanced_view()
    ar = view.map(lambda x: 1 / x, [1, 0, 2, 4], block=False, chunksize=1)
    values = ar.get(timeout=TIMEOUT_S, return_exceptions=True)
    assert values[0] == 1.0 and values[2] == 0.5 and values[3] == 0.25
    assert isinstance(values[1], RemoteError) and values[1].ename == "ZeroDivisionError"
    with pytest.raises(RemoteError):
        ar.get(timeout=TIMEOUT_S)
