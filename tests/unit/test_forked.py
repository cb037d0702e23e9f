"""A forked daemon behaves to its parent as a subprocess does, and never runs the parent's code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from enginefarm.forked import Forked


def nothing() -> None:
    pass


def test_exit_code_of_the_run_function_and_of_sys_exit_reach_the_parent():
    assert Forked(lambda: 3, dict(os.environ), nothing).wait(timeout=30) == 3
    assert Forked(lambda: sys.exit(4), dict(os.environ), nothing).wait(timeout=30) == 4
    assert Forked(lambda: sys.exit(None), dict(os.environ), nothing).wait(timeout=30) == 0


def test_an_exception_in_the_child_is_exit_code_1(capfd):
    def boom() -> int:
        raise RuntimeError("child failed")

    assert Forked(boom, dict(os.environ), nothing).wait(timeout=30) == 1
    assert "RuntimeError: child failed" in capfd.readouterr().err


def test_child_gets_the_environment_it_is_given_and_runs_prepare_first(tmp_path):
    out = tmp_path / "seen"

    def prepare() -> None:
        out.write_text("prepared ")

    def run() -> int:
        with open(out, "a") as handle:
            handle.write(os.environ.get("FORKED_TEST", "missing"))
        return 0 if "PATH" not in os.environ else 5

    assert Forked(run, {"FORKED_TEST": "given"}, prepare).wait(timeout=30) == 0
    assert out.read_text() == "prepared given"


def test_child_never_returns_into_the_parents_code(tmp_path):
    marker = tmp_path / "after"
    try:
        child = Forked(lambda: 0, dict(os.environ), nothing)
    finally:
        # Only the parent may get here: a child returning from the fork would write its pid too.
        with open(marker, "a") as handle:
            handle.write(f"{os.getpid()}\n")
    assert child.wait(timeout=30) == 0
    assert marker.read_text() == f"{os.getpid()}\n"


def test_signals_poll_and_wait_timeout_as_with_popen():
    child = Forked(lambda: (time.sleep(60), 0)[1], dict(os.environ), nothing)
    try:
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.05)
        # The parent's handlers are not the child's: SIGTERM ends it as it would a fresh process.
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
        assert child.poll() == -signal.SIGTERM
        child.kill()  # a no-op once it has exited
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
