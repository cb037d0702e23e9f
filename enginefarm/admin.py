"""What the admin CLI reports and does, as functions over a Client (the CLI only formats)."""

from __future__ import annotations

from typing import Any, TypedDict, cast

from .client import Client
from .errors import TaskError
from .store.records import ABORTED, PENDING, error_fields


class EngineStatus(TypedDict):
    """One engine in ``cluster_status``."""

    engine_id: int
    host: str | None
    pid: int | None
    alive: bool
    heartbeat_age_s: float | None
    properties: dict[str, Any]
    running: list[str]
    queued: int


def cluster_status(client: Client) -> dict[str, Any]:
    """Engines (with what each runs), queue depths and task counts by status."""
    client._connect()
    server_now = client.registry.server_time()
    live = set(client.ids)
    engines: list[EngineStatus] = []
    for engine_id, info in sorted(client.registry.info().items()):
        beat = info.get("last_heartbeat")
        engines.append({
            "engine_id": engine_id,
            "host": info.get("host"),
            "pid": info.get("pid"),
            "alive": engine_id in live,
            "heartbeat_age_s": round(server_now - beat, 2) if beat else None,
            "properties": client.registry.get_properties(engine_id),
            "running": client.registry.running(engine_id),
            "queued": client.registry.pending_count(engine_id),
        })
    names = client.names
    queues = [names.tasks_queue, names.work_queue, names.dead_queue,
              *(names.engine_queue(e["engine_id"]) for e in engines)]
    return {
        "cluster": client.settings.cluster,
        "engines": engines,
        "queues": client.publisher.link.queue_depths(queues),
        "tasks": client.records.status_counts(),
        "unassigned": len(client.records.unassigned(client.registry.info())),
        "history": client.history_store.size(),
    }


def purge(client: Client, task_ids: list[str], everything: bool, engine_id: int | None,
          queues: bool) -> dict[str, Any]:
    """Remove finished records (and with ``queues`` the messages waiting in RabbitMQ).

    Tasks whose messages are purged are first marked aborted, so none stays pending forever.
    """
    client._connect()
    report: dict[str, Any] = {"records": 0, "aborted": 0, "messages": {}}
    if queues:
        error = error_fields("TaskAborted", "purged by an administrator before it ran")
        pending = client.db_query({"status": PENDING}, keys=["task_id"])
        for row in pending:
            if client.records.fail(row["task_id"], error, allowed=(PENDING,), status=ABORTED):
                report["aborted"] += 1
        names = client.names
        for queue in [names.tasks_queue, names.work_queue, *(names.engine_queue(e) for e in client.registry.info())]:
            report["messages"][queue] = client.publisher.link.purge_queue(queue)
    if everything:
        report["records"] += client.purge_results("all")
    if task_ids:
        report["records"] += client.purge_results(task_ids)
    if engine_id is not None:
        report["records"] += client.purge_results(targets=[engine_id])
    return report


def abort(client: Client, task_ids: list[str]) -> dict[str, bool]:
    return dict(zip(task_ids, cast("list[bool]", client.abort(task_ids))))  # a list of ids gives a list


def resubmit(client: Client, task_ids: list[str]) -> dict[str, str]:
    """Resubmit each task; returns old id -> new id."""
    result = client.resubmit(list(task_ids), block=False)
    return dict(zip(task_ids, result.task_ids))


def require_known(client: Client, task_ids: list[str]) -> None:
    client._connect()
    for task_id, record in zip(task_ids, client.records.get_many(task_ids)):
        if record is None:
            raise TaskError(f"no task {task_id!r} in cluster {client.settings.cluster!r}")
