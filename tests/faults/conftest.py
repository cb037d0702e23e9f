"""The fault suite: every scenario counts outcomes from Redis records and an execution log,
and adds a row to the summary table printed at the end of the run."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pytest

from enginefarm import Client
from enginefarm.store.records import STATUSES, TERMINAL

ROWS: list[dict[str, object]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    columns = ["scenario", "tasks", "lost", "duplicate records", "re-runs (allowed)", "recover s", "seconds",
               "notes"]
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in ROWS)) for c in columns]
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    terminalreporter.write_line("-+-".join("-" * w for w in widths))
    for row in ROWS:
        terminalreporter.write_line(" | ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    path = os.environ.get("ENGINEFARM_FAULT_REPORT")
    if path:
        with open(path, "w") as handle:
            handle.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
            for row in ROWS:
                handle.write("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |\n")


@dataclass
class Tally:
    """What happened to a set of tasks: from their records and the execution log."""

    tasks: int
    lost: list[str] = field(default_factory=list)
    duplicate_records: list[str] = field(default_factory=list)
    executions: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def reruns(self) -> int:
        return sum(n - 1 for n in self.executions.values() if n > 1)


def runs(log_path: str) -> dict[str, list[str]]:
    """Each key's executions, as the pids of the processes that ran it (``work.run``'s log)."""
    out: dict[str, list[str]] = {}
    if os.path.exists(log_path):
        with open(log_path) as handle:
            for line in handle:
                key, _, pid = line.strip().partition(" ")
                if key:
                    out.setdefault(key, []).append(pid)
    return out


def executions(log_path: str) -> Counter[str]:
    return Counter({key: len(pids) for key, pids in runs(log_path).items()})


def ran_again(log_path: str) -> dict[str, list[str]]:
    """Keys that ran more than once, with the pids of the processes that ran them."""
    return {key: pids for key, pids in runs(log_path).items() if len(pids) > 1}


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them."""
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as handle:
            kids += [int(k) for k in handle.read().split()]
    return kids


def tally(client: Client, task_ids: list[str], log_path: str, keys: dict[str, str]) -> Tally:
    """``keys`` maps each task id to the key its executions write to the log."""
    result = Tally(len(task_ids))
    log = executions(log_path)
    statuses = client.records.statuses(task_ids)
    redis = client.records.redis
    pipe = redis.pipeline(transaction=False)
    for task_id in task_ids:
        for status in STATUSES:
            pipe.sismember(client.names.status_index(status), task_id)
    membership = pipe.execute()
    for n, (task_id, status) in enumerate(zip(task_ids, statuses)):
        result.statuses[status or "missing"] += 1
        if status not in TERMINAL:
            result.lost.append(task_id)
        member_of = [s for s, m in zip(STATUSES, membership[n * len(STATUSES):(n + 1) * len(STATUSES)]) if m]
        if member_of != [status]:
            result.duplicate_records.append(task_id)
        key = keys[task_id]
        if log[key]:
            result.executions[key] = log[key]
    return result


def report(scenario: str, t: Tally, seconds: float, allowed_reruns: int = 0,
           recover_s: float | None = None, notes: str = "") -> None:
    ROWS.append({
        "scenario": scenario, "tasks": t.tasks, "lost": len(t.lost),
        "duplicate records": len(t.duplicate_records), "re-runs (allowed)": f"{t.reruns} ({allowed_reruns})",
        "recover s": "" if recover_s is None else f"{recover_s:.1f}", "seconds": f"{seconds:.1f}", "notes": notes,
    })
