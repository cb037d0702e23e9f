"""The rest of seed 004's Client: the shared history, resubmission, purging, shutdown."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from ..errors import InvalidEngineID, SignatureError, TaskError
from ..task import TERMINAL, open_task, with_datetimes
from .asyncresult import AsyncResult

if TYPE_CHECKING:
    from .client import Client
    from .parts import ClientParts

Jobs = str | int | AsyncResult | Iterable[str | int | AsyncResult] | None


class HubMethods:
    """Mixed into Client."""

    def task_ids_of(self: ClientParts, jobs: Jobs) -> list[str]:
        """Task ids from ids, history indices, AsyncResults, or lists of them."""
        if jobs is None:
            return []
        items = [jobs] if isinstance(jobs, (str, int, AsyncResult)) else list(jobs)
        ids: list[str] = []
        for item in items:
            if isinstance(item, AsyncResult):
                ids.extend(item.task_ids)
            elif isinstance(item, bool):
                raise TypeError("a job is a task id, a history index or an AsyncResult")
            elif isinstance(item, int):
                try:
                    ids.append(self.history[item])
                except IndexError:
                    raise TaskError(f"no task at history index {item} ({len(self.history)} submitted)") from None
            elif isinstance(item, str):
                ids.append(item)
            else:
                raise TypeError(f"a job is a task id, a history index or an AsyncResult, not {item!r}")
        return ids

    def _known(self: ClientParts, task_ids: list[str]) -> None:
        self._connect()
        missing = [t for t, r in zip(task_ids, self.history_store.fetch(task_ids, [])) if r is None]
        if missing:
            raise TaskError(f"no task {missing[0]!r} in cluster {self.settings.cluster!r}")

    def get_result(self: ClientParts, indices_or_task_ids: Jobs = None, block: bool | None = None,
                   owner: bool = False) -> AsyncResult:
        """An AsyncResult for tasks by id or history index, whoever submitted them.

        With ``block`` (default: the client's), waits for them before returning. With
        ``owner``, the AsyncResult takes the results: once it has them, this client forgets
        its own copies (memory stays bounded for a long-lived client).
        Raises:
            TaskError: an id is unknown.
        """
        jobs = -1 if indices_or_task_ids is None else indices_or_task_ids
        ids = self.task_ids_of(jobs)
        self._known(ids)
        single = isinstance(jobs, (str, int))
        # Mixed into Client only: self is the Client.
        result = AsyncResult(cast("Client", self), ids, single=single, kind="result", owner=owner)
        if self.block if block is None else block:
            result.wait()
        return result

    def result_status(self: ClientParts, task_ids: Jobs, status_only: bool = True) -> dict[str, Any]:
        """Which tasks are pending and which completed; with ``status_only=False`` also the
        results of the completed ones, keyed by task id."""
        ids = self.task_ids_of(task_ids)
        self._known(ids)
        statuses = self.records.statuses(ids)
        done = [t for t, s in zip(ids, statuses) if s in TERMINAL]
        content: dict[str, Any] = {"pending": [t for t in ids if t not in done], "completed": done}
        if not status_only:
            self._absorb(done)
            content.update({t: self.results[t] for t in done})
        return content

    def hub_history(self: ClientParts) -> list[str]:
        """Every task id in the cluster's history, in submission order, across clients."""
        self._connect()
        return self.history_store.task_ids()

    def db_query(self: ClientParts, query: dict[str, Any], keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Task records matching a Mongo-style query (see ``enginefarm.store.query``), with
        moments as timezone-aware datetimes; a query may compare them with datetimes (or
        epoch seconds), and name ``task_id`` as ``msg_id``.

        Raises:
            QueryError: the query is malformed.
        """
        return [with_datetimes(row) for row in self.db_query_limited(query, None, keys)]

    def db_query_limited(self: ClientParts, query: dict[str, Any], limit: int | None,
                         keys: list[str] | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` records (the oldest matching), moments in epoch seconds (what
        the CLI prints and writes as JSON)."""
        self._connect()
        return self.history_store.query(query, keys, limit)

    def purge_local_results(self: ClientParts, jobs: Jobs | str = (), targets: Any = ()) -> int:
        """Forget results this client holds (the records stay in the hub): by id, by the
        engine that ran them (``targets``), or every finished one with 'all'. Returns how many.

        Raises:
            TaskError: a task named explicitly is still in flight here.
        """
        if jobs == "all":
            finished = [t for t in list(self.results) if t not in self.outstanding]
        else:
            finished = self.task_ids_of(None if not jobs else jobs)
            busy = [t for t in finished if t in self.outstanding]
            if busy:
                raise TaskError(f"cannot purge the local result of task {busy[0]} while it is in flight")
        engines = set(self.ids if targets == "all" else ([targets] if isinstance(targets, int) else targets or ()))
        if engines:
            finished += [t for t in list(self.results) if t not in self.outstanding and t in self._metadata
                         and self._metadata[t]["engine_id"] in engines]
        gone = 0
        for task_id in dict.fromkeys(finished):
            gone += self.results.pop(task_id, None) is not None
            self._metadata.pop(task_id, None)
        return gone

    def purge_hub_results(self: ClientParts, jobs: Jobs | str = (), targets: Any = ()) -> int:
        """Remove finished records from the hub (this client's copies stay): by id, by engine
        (``targets``), or every one with 'all'. Returns how many records were removed.

        Raises:
            TaskError: a task named explicitly is unknown or still in flight.
        """
        return self._purge(jobs, targets, local=False)

    def purge_everything(self: ClientParts) -> int:
        """Remove every finished record and result, here and in the hub, and this client's
        history (ipyparallel's purge_everything)."""
        removed = self.purge_results("all")
        self.history.clear()
        return removed

    def purge_results(self: ClientParts, jobs: Jobs | str = (), targets: Any = ()) -> int:
        """Forget finished tasks, here and in the hub: by id, by engine (``targets``), or
        everything with 'all'.

        Returns how many records were removed.
        Raises:
            TaskError: a task named explicitly is unknown or still in flight.
        """
        return self._purge(jobs, targets, local=True)

    def _purge(self: ClientParts, jobs: Jobs | str, targets: Any, local: bool) -> int:
        self._connect()
        if jobs == "all":
            removed = self.history_store.purge_all()
            if local:
                self.purge_local_results("all")
            return removed
        ids = self.task_ids_of(None if jobs is None or (isinstance(jobs, (list, tuple, set)) and not jobs) else jobs)
        if ids:
            self._known(ids)
            busy = [t for t, s in zip(ids, self.records.statuses(ids)) if s not in TERMINAL]
            if busy:
                raise TaskError(f"cannot purge task {busy[0]} while it is in flight")
        removed = self.history_store.purge(ids) if ids else 0
        engines = [targets] if isinstance(targets, int) else list(targets or [])
        if targets == "all":
            engines = self.ids
        for engine_id in engines:
            removed += self.history_store.purge_engine(int(engine_id))
        if local:
            for task_id in ids:
                self.results.pop(task_id, None)
                self._metadata.pop(task_id, None)
        return removed

    def resubmit(self: ClientParts, indices_or_task_ids: Jobs, block: bool | None = None) -> Any:
        """Run tasks again, as new tasks with the same request (a task still in flight goes
        on; the new one is another task with its own record, as in ipyparallel).

        Raises:
            TaskError: a task is unknown.
            InvalidEngineID: a task targeted an engine that is gone.
            SignatureError / DecodeError: a stored request is not a valid signed request of
                its task (nothing is resubmitted then).
        """
        jobs = indices_or_task_ids
        ids = self.task_ids_of(jobs)
        self._known(ids)
        # Check everything before submitting anything: a refusal leaves nothing half done.
        plans = []
        live = self.ids
        for task_id, record in zip(ids, self.records.get_many(ids)):
            if record is None:
                raise TaskError(f"no task {task_id!r} in cluster {self.settings.cluster!r}")
            # What runs, and where, comes from the signed request alone; the record's own
            # fields (kind, engine) are anyone's who can write to Redis.
            message = open_task(self.ring, record.request or b"")
            signed = message.header
            if signed.task_id != record.task_id:
                raise SignatureError("context", f"record {record.task_id} holds the request of task {signed.task_id}")
            if not signed.lb and signed.engine_id not in live:
                raise InvalidEngineID(f"task {record.task_id} targeted engine {signed.engine_id}, which is gone")
            plans.append((signed, message.payload))
        new_ids = []
        for signed, payload in plans:
            header = {k: v for k, v in signed.encode().items()
                      if k not in ("task_id", "client_id", "ts", "mid", "kind", "engine_id")}
            if signed.lb:
                new_ids += self._submit_sealed([(signed.kind.value, header, payload)])
            else:
                assert signed.engine_id is not None  # a targeted header always names its engine
                new_ids += self._send_sealed(signed.kind.value, payload, [signed.engine_id], header)
        # Mixed into Client only: self is the Client.
        result = AsyncResult(cast("Client", self), new_ids, single=isinstance(jobs, (str, int)), kind="resubmit")
        return result.get() if (self.block if block is None else block) else result

    def queue_status(self: ClientParts, targets: Any = None, verbose: bool = False) -> dict[Any, Any]:
        """Per engine: tasks waiting for it, running, and finished by status; 'unassigned'
        (pending and held by no engine yet); and totals by status. ``verbose`` lists task ids."""
        self._connect()
        engines = self.ids if targets in (None, "all") else self.resolve_targets(targets)
        status: dict[Any, Any] = {}
        for engine_id in engines:
            entry = self.engine_queue_status(engine_id)
            waiting = sorted(self.registry.pending(engine_id) - set(entry["running"]))
            entry.update(self.history_store.engine_tasks(engine_id, verbose))
            entry["queue"] = waiting if verbose else len(waiting)
            status[engine_id] = entry
        waiting = self.records.unassigned(self.registry.info())
        status["unassigned"] = waiting if verbose else len(waiting)
        status.update(self.records.status_counts())
        return status

    def clear(self: ClientParts, targets: Any = None, block: bool | None = None) -> Any:
        """With ``targets``: reset those engines' namespaces (seed 004). Without: forget the
        results of finished tasks this client holds, freeing their memory (seed 003); the
        records stay in the history (see ``purge_results``)."""
        if targets is not None:
            return self.direct_view(targets).reset(block=block)
        finished = [t for t in list(self.results) if t not in self.outstanding]
        for task_id in finished:
            self.results.pop(task_id, None)
            self._metadata.pop(task_id, None)
        return len(finished)

    def shutdown(self: ClientParts, targets: Any = "all", hub: bool = False, block: bool | None = None) -> None:
        """Stop engines (after what is queued before this call), and with ``hub`` the schedulers."""
        self._connect()
        if targets is not None and (targets != "all" or self.ids):
            self.direct_view(targets).kill(block=block)
        if hub:
            self.records.request_shutdown()
