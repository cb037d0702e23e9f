"""When a process may judge its peers dead: only after it has seen Redis healthy long enough
that a live peer's heartbeat would show, and longer after an outage, when live peers reach
the server again at different times."""

from __future__ import annotations

import pytest

from enginefarm import recovery
from enginefarm.names import Names
from enginefarm.recovery import Reaper
from enginefarm.store import outages

TIMEOUT_S = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    # One clock for judging and for noting broken connections (both read time.monotonic).
    monkeypatch.setattr(recovery.time, "monotonic", c)
    monkeypatch.setattr(outages, "_last_broken", None)
    return c


def reaper() -> Reaper:
    # Judging reads only the clock; the stores are never touched here.
    return Reaper(None, None, None, Names("judgement"), TIMEOUT_S)  # type: ignore[arg-type]


def healthy_for(r: Reaper, clock: Clock, seconds: float, step: float = 0.5) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(clock.now + step, end)
        r.observe(True)


def test_a_new_process_judges_after_one_engine_timeout(clock):
    r = reaper()
    assert not r.may_judge
    r.observe(True)
    healthy_for(r, clock, TIMEOUT_S - 0.5)
    assert not r.may_judge
    healthy_for(r, clock, 0.5)
    assert r.may_judge


def test_after_failed_calls_it_waits_a_reconnect_window_more(clock):
    r = reaper()
    r.observe(True)
    healthy_for(r, clock, TIMEOUT_S)
    assert r.may_judge
    r.observe(False)  # the primary is gone
    assert not r.may_judge
    clock.now += 5.0
    r.observe(False)
    clock.now += 0.5
    r.observe(True)  # found the new primary
    healthy_for(r, clock, TIMEOUT_S)
    assert not r.may_judge, "a peer still reconnecting would be judged dead"
    healthy_for(r, clock, r.reconnect_window_s - 0.5)
    assert not r.may_judge
    healthy_for(r, clock, 0.5)
    assert r.may_judge
    assert r.reconnect_window_s >= TIMEOUT_S


def test_a_pause_that_held_everyone_costs_one_timeout_only(clock):
    r = reaper()
    r.observe(True)
    healthy_for(r, clock, TIMEOUT_S)
    clock.now += 4.0  # one call blocked (a paused Redis): continuity is broken, nothing failed
    r.observe(True)
    assert not r.may_judge
    healthy_for(r, clock, TIMEOUT_S)
    assert r.may_judge


def test_it_never_judges_while_its_last_healthy_call_is_old(clock):
    r = reaper()
    r.observe(True)
    healthy_for(r, clock, TIMEOUT_S + 1)
    assert r.may_judge
    clock.now += r.max_gap_s + 0.1  # the observing thread is stuck in a call
    assert not r.may_judge


def test_a_broken_connection_its_retries_hid_counts_as_an_outage(clock, monkeypatch):
    r = reaper()
    r.observe(True)
    healthy_for(r, clock, TIMEOUT_S)
    assert r.may_judge
    # Every call succeeded (the retries found the new primary within the gap), but one
    # connection broke on the way: peers may still be reconnecting.
    outages.note_broken()
    healthy_for(r, clock, TIMEOUT_S)
    assert not r.may_judge
    healthy_for(r, clock, r.reconnect_window_s)
    assert r.may_judge


def test_the_store_connection_notes_a_connection_that_failed(monkeypatch):
    import socket

    from enginefarm.errors import StoreError
    from enginefarm.store import connect, translate_errors

    monkeypatch.setattr(outages, "_last_broken", None)
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", retry_window_s=1)
    with pytest.raises(StoreError), translate_errors():
        client.ping()
    assert outages.last_broken() is not None
