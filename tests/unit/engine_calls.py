"""Running one command in an engine's state, as its child process does, for the unit tests."""

from __future__ import annotations

import pickle
from typing import Any

from enginefarm import serialization
from enginefarm.worker.commands import EngineState, run_command

CAP = 1000


def run(state: EngineState, kind: str, request: Any = None, cap: int = CAP, **header: Any) -> dict[str, Any]:
    payload = serialization.dumps(request) if request is not None else b""
    return run_command(state, {"kind": kind, **header}, payload, cap)


def value_of(outcome: dict[str, Any]) -> Any:
    assert outcome["ok"] is True, outcome
    return pickle.loads(outcome["value"])


def error_of(outcome: dict[str, Any]) -> dict[str, Any]:
    assert outcome["ok"] is False, outcome
    return dict(outcome["error"])
