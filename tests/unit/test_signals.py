"""Signals without servers: the signal header, which signals a client accepts, and a real
child process under SIGINT between and during requests."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from enginefarm import serialization
from enginefarm.client.signals import signal_number
from enginefarm.errors import DecodeError
from enginefarm.task import Kind, TaskHeader
from enginefarm.worker.executor import Executor, Outcome

SIGNAL_HEADER = {"task_id": "t-1", "kind": "signal", "client_id": "c-1", "engine_id": 0, "signum": 2}


# --- the header -----------------------------------------------------------------------------
def test_signal_header_round_trips():
    header = TaskHeader.decode(SIGNAL_HEADER)
    assert header.kind is Kind.SIGNAL and header.signum == 2 and header.engine_id == 0
    assert TaskHeader.decode(header.encode()) == header


@pytest.mark.parametrize("changes, field", [
    ({"signum": None}, "signum"),
    ({"signum": 0}, "signum"),
    ({"signum": signal.NSIG}, "signum"),
    ({"signum": "SIGINT"}, "signum"),
    ({"signum": True}, "signum"),
    ({"engine_id": None}, "engine_id"),
    ({"engine_id": None, "lb": True}, "kind"),
])
def test_signal_header_is_a_targeted_command_with_a_signal(changes, field):
    raw = {k: v for k, v in {**SIGNAL_HEADER, **changes}.items() if v is not None}
    with pytest.raises(DecodeError) as info:
        TaskHeader.decode(raw)
    assert info.value.field == field


def test_only_a_signal_carries_a_signal_number():
    with pytest.raises(DecodeError) as info:
        TaskHeader.decode({**SIGNAL_HEADER, "kind": "apply"})
    assert info.value.field == "signum"


# --- what a client accepts ----------------------------------------------------------------
@pytest.mark.parametrize("sig, number", [
    ("SIGINT", signal.SIGINT), (signal.SIGTERM, signal.SIGTERM), (9, 9), ("SIGUSR1", signal.SIGUSR1),
])
def test_signal_number_takes_numbers_and_names(sig, number):
    assert signal_number(sig) == number


@pytest.mark.parametrize("sig", ["SIGNOPE", "INT", "sigint", "SIG_IGN", "", 0, -2, 9999, 2.0, None, True, b"SIGINT"])
def test_signal_number_refuses_anything_else(sig):
    with pytest.raises(ValueError):
        signal_number(sig)


# --- a real child under SIGINT --------------------------------------------------------------
@pytest.fixture
def executor() -> Iterator[Executor]:
    # Plain exec: the tracebacks asserted here name its <execute-N> (tests/unit/test_ishell.py
    # interrupts IPython cells).
    handle = Executor(output_cap_bytes=10_000, shell="plain")
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def run(executor: Executor, kind: str, request: Any) -> Outcome:
    return executor.run({"kind": kind}, serialization.dumps(request), timeout_s=60)


def value(outcome: Outcome) -> Any:
    assert outcome.ok, outcome.error
    return serialization.loads(outcome.value or b"")


def test_sigint_while_the_child_starts_is_ignored(executor):
    # When SIGINT lands at once, while the new child is still starting up
    pid = executor.pid
    executor.send_signal(signal.SIGINT)
    # Then that child serves its first request
    assert value(run(executor, "apply", (os.getpid, (), {}))) == pid


def test_sigint_between_requests_is_ignored(executor):
    # Given a value in the child's namespace
    run(executor, "push", {"kept": 7})
    pid = executor.pid
    # When SIGINT lands while the child waits for a request (several, to be sure one does)
    for _ in range(5):
        executor.send_signal(signal.SIGINT)
        time.sleep(0.05)
    # Then the same child still serves, with its namespace
    assert value(run(executor, "pull", "kept")) == 7
    assert value(run(executor, "apply", (os.getpid, (), {}))) == pid


def interrupt_soon(executor: Executor, after_s: float) -> list[tuple[float, Any]]:
    return [(after_s, lambda: executor.send_signal(signal.SIGINT))]


def test_sigint_during_a_request_fails_it_with_keyboard_interrupt(executor):
    run(executor, "push", {"kept": 7})
    code = "import time\nfor _ in range(1200):\n    time.sleep(0.05)\nfinished = True"
    started = time.monotonic()
    # When SIGINT arrives half a second into a minute-long request
    outcome = executor.run({"kind": "execute"}, serialization.dumps(code), timeout_s=60,
                           after=interrupt_soon(executor, 0.5))
    # Then that request fails with KeyboardInterrupt at once, and nothing else is lost
    assert time.monotonic() - started < 10
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["ename"] == "KeyboardInterrupt" and "<execute-0>" in outcome.error["traceback"]
    assert not outcome.namespace_lost
    assert value(run(executor, "pull", "kept")) == 7
    # (the loop ran partly: its names are there, what came after it is not)
    assert "finished" not in value(run(executor, "keys", None))


def test_signal_to_no_child_is_refused():
    executor = Executor(output_cap_bytes=10_000)
    with pytest.raises(ProcessLookupError):
        executor.send_signal(signal.SIGINT)
