"""The %px magics in a real IPython shell, on real engines (which run IPython themselves).

Cells are run with ``shell.run_cell`` as IPython runs what a user types; what the magics show
is read from the captured stdout and stderr.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from enginefarm import AsyncResult, Client, CompositeError, DirectView, RemoteError
from enginefarm.local import settings_env

from ..harness import Cluster, Daemon, wait_for
from .ipyshell import ipython_shell, magics_of

TIMEOUT_S = 60


@pytest.fixture
def shell(tmp_path) -> Iterator[InteractiveShell]:
    with ipython_shell(tmp_path / "ipython") as handle:
        yield handle


@pytest.fixture
def engines(cluster: Cluster) -> list[Daemon]:
    return cluster.start_engines(2)


@pytest.fixture
def px(shell: InteractiveShell, client: Client, engines: list[Daemon]) -> DirectView:
    return client.activate()


def run(shell: InteractiveShell, cell: str) -> Any:
    """Run a cell as typed; returns IPython's ExecutionResult."""
    return shell.run_cell(cell)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- %px and %%px -------------------------------------------------------------------------
def test_px_runs_a_line_everywhere_and_shows_each_engines_value(shell, px, engines, capsys):
    result = run(shell, "%px import os; os.getpid()")
    assert result.success and result.result is None
    shown = capsys.readouterr().out
    # ipyparallel's form: Out[engine:execution count]: value, one engine after the other
    pids = px.apply(os.getpid)
    assert re.findall(r"Out\[(\d+):\d+\]: (\d+)", shown) == [(str(e.engine_id), str(p)) for e, p in zip(engines, pids)]


def test_cell_px_prints_each_engines_output_under_its_label(shell, px, capsys):
    run(shell, "%%px\nimport sys\nprint('hello')\nprint('oops', file=sys.stderr)\n")
    out = capsys.readouterr()
    assert lines(out.out) == ["[stdout:0] hello", "[stdout:1] hello"]
    assert lines(out.err) == ["[stderr:0] oops", "[stderr:1] oops"]
    # Several lines start under their label
    run(shell, "%%px --targets 0\nprint('one')\nprint('two')")
    assert lines(capsys.readouterr().out) == ["[stdout:0]", "one", "two"]


@pytest.mark.parametrize("targets, expected", [("1", [1]), ("::2", [0]), ("[0,1]", [0, 1]), ("0,1", [0, 1]),
                                               ("all", [0, 1]), ("-1", [1]), ("1:", [1])])
def test_cell_px_targets(shell, px, capsys, targets, expected):
    run(shell, f"%%px --targets {targets}\nprint('here')")
    assert lines(capsys.readouterr().out) == [f"[stdout:{e}] here" for e in expected]


def test_unknown_targets_are_a_usage_error(shell, px, capsys):
    for targets in ("7", "x", "1:2:3:4"):
        result = run(shell, f"%%px --targets {targets}\nprint('never')")
        assert isinstance(result.error_in_exec, UsageError)
    assert "UsageError" in capsys.readouterr().err and px.pull("__name__") == ["__main__", "__main__"]


def test_noblock_returns_the_result_and_pxresult_shows_it(shell, px, capsys):
    # When a cell is sent without waiting
    result = run(shell, "%%px --noblock\nprint('later')\n6 * 7")
    ar = result.result
    # Then the magic's value is its AsyncResult, and nothing is shown yet
    assert isinstance(ar, AsyncResult) and magics_of(shell).last_result is ar
    assert "[stdout" not in capsys.readouterr().out
    assert ar.get(timeout=TIMEOUT_S) == [None, None]
    # And %pxresult (and its old name %result) show what it did, once it finished
    for magic in ("%pxresult", "%result"):
        run(shell, magic)
        shown = lines(capsys.readouterr().out)
        assert shown[:2] == ["[stdout:0] later", "[stdout:1] later"]
        assert [re.sub(r":\d+\]", "]", s) for s in shown[2:]] == ["Out[0]: 42", "Out[1]: 42"]
    # -o keeps it under a name
    run(shell, "%pxresult -o kept")
    assert shell.user_ns["kept"] is ar


def test_pxresult_without_a_result_is_a_usage_error(shell, px):
    assert isinstance(run(shell, "%pxresult").error_in_exec, UsageError)


DISPLAYS = "from IPython.display import display\nprint('out')\ndisplay('first')\ndisplay('second')\n"


@pytest.mark.parametrize("grouping, expected", [
    ("type", ["[stdout:0] out", "[stdout:1] out", "[output:0]", "'first'", "'second'",
              "[output:1]", "'first'", "'second'"]),
    ("engine", ["[stdout:0] out", "[output:0]", "'first'", "'second'",
                "[stdout:1] out", "[output:1]", "'first'", "'second'"]),
    ("order", ["[stdout:0] out", "[stdout:1] out", "[output:0]", "'first'", "[output:1]", "'first'",
               "[output:0]", "'second'", "[output:1]", "'second'"]),
])
def test_group_outputs(shell, px, capsys, grouping, expected):
    run(shell, f"%%px --group-outputs={grouping}\n{DISPLAYS}")
    assert lines(capsys.readouterr().out) == expected


def test_local_also_runs_the_cell_here(shell, px, capsys):
    run(shell, "%%px --local\nboth = 'here and there'\nprint(both)")
    assert shell.user_ns["both"] == "here and there"
    assert px.pull("both") == ["here and there", "here and there"]
    assert lines(capsys.readouterr().out) == ["here and there", "[stdout:0] here and there",
                                              "[stdout:1] here and there"]


def test_stream_is_accepted_and_shows_the_output(shell, px, capsys):
    # (results that cannot stream show their output at the end)
    run(shell, "%%px --stream\nprint('streamed')")
    assert lines(capsys.readouterr().out) == ["[stdout:0] streamed", "[stdout:1] streamed"]


def test_ipython_syntax_runs_on_the_engines(shell, px, capsys):
    run(shell, "%%px --targets 0\n!echo from a shell escape\n%time t = 1\nt")
    shown = capsys.readouterr().out
    assert "from a shell escape" in shown and "Wall time" in shown and re.search(r"Out\[0:\d+\]: 1", shown)


# --- errors -------------------------------------------------------------------------------
def test_a_remote_error_is_drawn_as_the_remote_traceback(shell, px, capsys):
    result = run(shell, "%%px\nprint('before')\ndef f():\n    return 1 / 0\nf()")
    # The failure raised is the remote one: a CompositeError of both engines' ZeroDivisionError
    error = result.error_in_exec
    assert isinstance(error, CompositeError) and [e.ename for e in error.errors] == ["ZeroDivisionError"] * 2
    shown = capsys.readouterr().out
    # What the cell printed comes first; then each engine's traceback as IPython draws it
    assert shown.index("[stdout:1] before") < shown.index("[engine 0]:") < shown.index("[engine 1]:")
    assert shown.count("----> 3     return 1 / 0") == 2 and "ZeroDivisionError: division by zero" in shown
    # ...and not a traceback of the client's magic machinery
    assert "magics.py" not in shown and "asyncresult.py" not in shown and "run_cell_magic" not in shown


def test_one_engines_error_is_its_remote_error(shell, px, capsys):
    result = run(shell, "%%px --targets 1\nraise KeyError('missing')")
    error = result.error_in_exec
    assert isinstance(error, RemoteError) and error.ename == "KeyError" and error.engine_id == 1
    shown = capsys.readouterr().out
    assert shown.startswith("[engine 1]:") and "KeyError: 'missing'" in shown and "magics.py" not in shown


# --- %autopx ------------------------------------------------------------------------------
def test_autopx_sends_every_cell_until_toggled_off(shell, px, capsys):
    run(shell, "%autopx")
    assert "%autopx enabled" in capsys.readouterr().out
    # While on, cells run on the engines, not here (IPython syntax included)
    run(shell, "remote_only = 3\nprint(remote_only * 2)")
    run(shell, "!echo autopx shell")
    shown = capsys.readouterr().out
    assert lines(shown)[:2] == ["[stdout:0] 6", "[stdout:1] 6"] and shown.count("autopx shell") == 2
    assert "remote_only" not in shell.user_ns and px.pull("remote_only") == [3, 3]
    # A remote failure shows as the remote traceback, and autopx stays on
    assert isinstance(run(shell, "1 / 0").error_in_exec, CompositeError)
    capsys.readouterr()
    # %autopx again turns it off: cells run here again
    run(shell, "%autopx")
    assert "%autopx disabled" in capsys.readouterr().out
    run(shell, "here_again = 1")
    assert shell.user_ns["here_again"] == 1 and "[stdout" not in capsys.readouterr().out


def test_autopx_leaves_incomplete_input_to_ipython(shell, px):
    run(shell, "%autopx")
    # The terminal's "is this input complete?" check must see the cell as typed
    assert shell.check_complete("for i in range(3):")[0] == "incomplete"
    run(shell, "%autopx")


# --- %pxconfig ----------------------------------------------------------------------------
def test_pxconfig_sets_targets_blocking_and_verbosity(shell, px, capsys):
    run(shell, "%pxconfig --targets 1 --noblock --verbose")
    ar = run(shell, "%px 40 + 2").result
    assert isinstance(ar, AsyncResult) and ar.get(timeout=TIMEOUT_S) is None
    assert "Async parallel execution on engine(s): 1" in capsys.readouterr().out
    run(shell, "%pxresult")
    assert re.fullmatch(r"Out\[1:\d+\]: 42\n", capsys.readouterr().out)
    run(shell, "%pxconfig --targets all --block --no-verbose")
    assert run(shell, "%px print('both')").result is None
    assert lines(capsys.readouterr().out) == ["[stdout:0] both", "[stdout:1] both"]


# --- Ctrl-C -------------------------------------------------------------------------------
def test_ctrl_c_interrupts_the_engines_cell_and_they_serve_the_next(shell, px, tmp_path, capsys):
    # Given a cell that marks that it runs on each engine, then sleeps ten minutes
    marks = tmp_path / "running"
    marks.mkdir()
    cell = f"%%px\nimport os, time\nopen(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\ntime.sleep(600)"
    missed: list[str] = []

    def press_ctrl_c() -> None:
        try:
            wait_for(lambda: len(os.listdir(marks)) == 2, TIMEOUT_S, "the cell to run on both engines")
        except AssertionError as exc:
            missed.append(str(exc))  # interrupt anyway: the test must not wait ten minutes
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    # When Ctrl-C reaches the client while %%px waits for it
    started = time.monotonic()
    result = run(shell, cell)
    presser.join(TIMEOUT_S)
    assert not missed, missed
    # Then the engines' cell stops at once, failed with KeyboardInterrupt where it slept
    assert time.monotonic() - started < TIMEOUT_S
    error = result.error_in_exec
    assert isinstance(error, CompositeError), error
    assert [(e.ename, e.engine_id) for e in error.errors] == [("KeyboardInterrupt", 0), ("KeyboardInterrupt", 1)]
    out = capsys.readouterr()
    assert "sending SIGINT to engine(s) [0, 1]" in out.err
    assert out.out.count("----> 3 time.sleep(600)") == 2
    records = magics_of(shell).last_result.metadata
    assert [(m["status"], m["error"]["ename"]) for m in records] == [("failed", "KeyboardInterrupt")] * 2
    # And the engines, their processes and namespaces serve the next cell
    run(shell, "%px print(time.time() > 0)")
    assert lines(capsys.readouterr().out) == ["[stdout:0] True", "[stdout:1] True"]


# --- loading ------------------------------------------------------------------------------
def test_load_ext_uses_the_cluster_from_the_environment(shell, settings, engines, monkeypatch, capsys):
    # Given the settings a user of ``enginefarm cluster`` has in the environment
    for name, value in settings_env(settings, {}).items():
        monkeypatch.setenv(name, value)
    # When the extension is loaded
    run(shell, "%load_ext enginefarm")
    run(shell, "%px print('via load_ext')")
    assert lines(capsys.readouterr().out) == ["[stdout:0] via load_ext", "[stdout:1] via load_ext"]
    assert magics_of(shell).view.client.settings.cluster == settings.cluster
    magics_of(shell).view.client.close()


def test_activate_with_a_suffix_adds_a_second_family(shell, client, engines, capsys):
    client.activate(targets=0)
    client.activate(targets=[1], suffix="1")
    run(shell, "%px print('zero')")
    run(shell, "%%px1\nprint('one')")
    assert lines(capsys.readouterr().out) == ["[stdout:0] zero", "[stdout:1] one"]
    assert shell.find_line_magic("pxresult1") and shell.find_line_magic("autopx1")
    assert shell.find_line_magic("pxconfig1") and not shell.find_line_magic("result1")
    # %load_ext keeps the magics already activated
    run(shell, "%load_ext enginefarm")
    assert magics_of(shell).view.targets == 0
