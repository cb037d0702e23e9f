"""The pieces of the %px magics that need no engines: --targets, %autopx's rewriting, how
outputs are drawn, and how remote errors render in IPython."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError

from enginefarm.errors import CompositeError, RemoteError
from enginefarm.ipython import display
from enginefarm.ipython.interrupt import running_engines
from enginefarm.ipython.magics import AutoPx, parse_targets


@pytest.mark.parametrize("text, key", [
    ("all", "all"), ("1", 1), ("-1", -1), (" 2 ", 2), ("0,2", [0, 2]), ("[0,2]", [0, 2]), ("[3]", [3]),
    ("::2", slice(None, None, 2)), ("1:3", slice(1, 3)), ("-2:", slice(-2, None)), (":", slice(None, None)),
])
def test_targets_take_ids_lists_slices_and_all(text, key):
    assert parse_targets(text) == key


@pytest.mark.parametrize("text", ["", "x", "1.5", "0:1:2:3", "[1:2]", "__import__('os')", "[]", ","])
def test_other_targets_are_a_usage_error_and_nothing_is_evaluated(text):
    with pytest.raises(UsageError):
        parse_targets(text)


def test_autopx_rewrites_a_cell_into_a_px_cell_magic():
    transform = AutoPx("px")
    cell = ["x = 1\n", "!echo {x}\n"]
    assert transform(cell) == ["get_ipython().run_cell_magic('px', '', 'x = 1\\n!echo {x}\\n')\n"]
    # %autopx itself runs here (it turns autopx off); blank input stays blank
    assert transform(["%autopx\n"]) == ["%autopx\n"] and transform(["  %autopx  \n"]) == ["  %autopx  \n"]
    assert transform(["\n"]) == ["\n"]
    # Another suffix's toggle is sent on, its own is not
    assert AutoPx("px2")(["%autopx2\n"]) == ["%autopx2\n"]
    assert AutoPx("px2")(["%autopx\n"]) != ["%autopx\n"]
    # IPython's completeness check skips transformers with side effects
    assert AutoPx.has_side_effects


class Result:
    """What ``display.show`` reads of an AsyncResult: its metadata."""

    def __init__(self, metadata: Any) -> None:
        self.metadata = metadata


def meta(engine_id: int, stdout: str = "", stderr: str = "", outputs: Any = (), value: Any = None) -> dict[str, Any]:
    return {"engine_id": engine_id, "stdout": stdout, "stderr": stderr, "outputs": list(outputs),
            "execute_result": value, "status": "completed", "started": 1.0}


def bundle(text: str, **more: Any) -> dict[str, Any]:
    return {"data": {"text/plain": text, **more}, "metadata": {}}


def test_outputs_without_a_shell_print_their_text(capsys):
    result = Result([meta(0, "a\n", "warn\n", [bundle("'shown'")], {**bundle("42"), "execution_count": 3}),
                     meta(1, "two\nlines\n")])
    display.show(result, None)
    out = capsys.readouterr()
    assert out.out.splitlines() == ["[stdout:0] a", "[stdout:1]", "two", "lines", "[output:0]", "'shown'",
                                    "Out[0:3]: 42"]
    assert out.err == "[stderr:0] warn\n"


def test_a_single_result_and_a_multiline_value(capsys):
    value = {**bundle("[1,\n 2]"), "execution_count": 5}
    display.show(Result(meta(4, value=value)), None)
    assert capsys.readouterr().out == "Out[4:5]: \n[1,\n 2]\n"


def test_streams_can_be_left_out(capsys):
    display.show(Result([meta(0, "printed\n", value={**bundle("1"), "execution_count": 1})]), None, streams=False)
    assert capsys.readouterr().out == "Out[0:1]: 1\n"


def test_unknown_grouping_is_refused():
    with pytest.raises(ValueError):
        display.show(Result([]), None, groupby="random")


class Publisher:
    def __init__(self) -> None:
        self.published: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def publish(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.published.append((data, metadata))


class Shell:
    def __init__(self) -> None:
        self.display_pub = Publisher()


def test_a_shell_gets_the_rich_bundles_with_the_engine_in_the_metadata():
    shell = Shell()
    value = {"data": {"text/plain": "T", "text/html": "<b>T</b>"}, "metadata": {"m": 1}, "execution_count": 2}
    display.show(Result([meta(3, outputs=[bundle("p", **{"image/png": "iVBO"})], value=value)]), shell)  # type: ignore[arg-type]
    header, image, shown = shell.display_pub.published
    assert header == ({"text/plain": "[output:3]"}, {})
    assert image == ({"text/plain": "p", "image/png": "iVBO"}, {"engine": 3})
    assert shown[0]["text/plain"] == "Out[3:2]: T" and shown[0]["text/html"].endswith("<b>T</b>")
    assert "Out[3:2]:" in shown[0]["text/html"] and shown[1] == {"m": 1, "engine": 3}


def test_only_started_unfinished_tasks_are_interrupted():
    rows = [meta(0), {**meta(1), "status": "running"}, {**meta(2), "status": "running", "started": None},
            {**meta(3), "status": "pending", "started": None}]
    assert running_engines(Result(rows)) == [1]


def test_remote_errors_render_as_their_remote_tracebacks_under_their_engine():
    one = RemoteError("ValueError", "bad", "Traceback...\nValueError: bad", engine_id=2)
    assert one._render_traceback_() == ["[engine 2]:", "Traceback...", "ValueError: bad"]
    bare = RemoteError("TaskAborted", "never ran", engine_id=1)
    assert bare._render_traceback_() == ["[engine 1] TaskAborted: never ran"]
    composite = CompositeError([one, bare, one])
    composite.tb_limit = 2
    assert composite._render_traceback_() == ["[engine 2]:", "Traceback...", "ValueError: bad", "",
                                              "[engine 1] TaskAborted: never ran", "",
                                              "... 1 more exceptions ..."]
