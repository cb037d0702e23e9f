"""The TaskController side of the Client (seed 003): submit tasks, collect TaskResults."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError, TaskError
from ..protocol import new_id, seal
from ..serialization import dumps
from ..store.records import ABORTED, PENDING, STATUSES, NewTask, error_fields
from .tasks import BaseTask, TaskResult

if TYPE_CHECKING:
    from .client import Client


class TaskFarming:
    """Mixed into Client: load-balanced submission through the scheduler."""

    def submit(self: Client, task: BaseTask) -> str:
        """Queue ``task`` for whichever engine the scheduler picks; returns its task id.

        Raises:
            SerializationError: the task (function, arguments, depend...) cannot be pickled.
        """
        return self.submit_many([task])[0]

    run = submit

    def submit_many(self: Client, tasks: Sequence[BaseTask]) -> list[str]:
        """Queue several tasks at once (one Redis transaction for their records)."""
        self._connect()
        new, bodies = [], []
        for task in tasks:
            if not isinstance(task, BaseTask):
                raise TypeError(f"submit takes a MapTask or StringTask, not {type(task).__name__}")
            task_id = new_id()
            header = {"task_id": task_id, "kind": task.kind, "client_id": self.client_id, "lb": True,
                      **task.header()}
            body = seal(self.ring, header, dumps(task.request(), repr(task)))
            extra = {"lb": "1", "_notify": self.names.scheduler_events, "retries": str(task.retries)}
            new.append(NewTask(task_id, task.kind, self.client_id, body, None, extra))
            bodies.append(body)
        self.records.create(new)
        for task in new:
            self.history.append(task.task_id)
            self.outstanding.add(task.task_id)
        for body in bodies:
            self.publisher.publish("", self.names.tasks_queue, body)
        return [t.task_id for t in new]

    def get_task_result(self: Client, task_id: str, block: bool = False,
                        timeout: float | None = None) -> TaskResult | None:
        """The TaskResult of a task; None if it has not finished and ``block`` is false.

        Raises:
            TaskError: no such task.
            TimeoutError: ``block`` and not finished within ``timeout`` seconds.
        """
        self._connect()
        if task_id not in self.results and self.records.get(task_id) is None:
            raise TaskError(f"no task {task_id!r} in cluster {self.settings.cluster!r}")
        if block:
            from ..errors import TimeoutError

            if not self.wait([task_id], -1 if timeout is None else timeout):
                raise TimeoutError(f"task {task_id} did not finish within {timeout}s")
        elif not self.wait([task_id], 0):
            return None
        value = self.results[task_id]
        meta = self.metadata_for(task_id)
        record_kind = self.records.get(task_id)
        kind = record_kind.kind if record_kind else ""
        failure = value if isinstance(value, RemoteError) else None
        if isinstance(value, BaseException) and failure is None:
            raise value
        return TaskResult(task_id, meta["engine_id"], kind, None if failure else value, failure, meta)

    def abort(self: Client, task_ids: str | Iterable[str]) -> Any:
        """Stop tasks that have not started: they never run, and their result says so.

        Returns:
            For one id, True if it was aborted (False: already running or finished);
            for a list, a list of those.
        Raises:
            TaskError: an id is unknown.
        """
        self._connect()
        single = isinstance(task_ids, str)
        ids = [task_ids] if single else list(task_ids)
        error = error_fields("TaskAborted", "the task was aborted before it started")
        done = []
        for task_id in ids:
            if self.records.get(task_id) is None:
                raise TaskError(f"no task {task_id!r} in cluster {self.settings.cluster!r}")
            done.append(self.records.fail(task_id, error, allowed=(PENDING,), status=ABORTED))
        return done[0] if single else done

    def barrier(self: Client, task_ids: Iterable[str], timeout: float | None = None) -> None:
        """Block until every task in ``task_ids`` has finished (failures included).

        Raises:
            TimeoutError: not all finished within ``timeout`` seconds.
        """
        from ..errors import TimeoutError

        ids = list(task_ids)
        if not self.wait(ids, -1 if timeout is None else timeout):
            raise TimeoutError(f"{len(ids)} tasks did not all finish within {timeout}s")

    def clear(self: Client) -> int:
        """Forget results of finished tasks held by this client, freeing their memory.

        The records stay in the cluster's history (see ``purge_results``).
        """
        finished = [t for t in self.results if t not in self.outstanding]
        for task_id in finished:
            self.results.pop(task_id, None)
            self._metadata.pop(task_id, None)
        return len(finished)

    def queue_status(self: Client) -> dict[str, Any]:
        """Counts by status, tasks waiting for the scheduler, and each engine's queue."""
        self._connect()
        counts = self.records.status_counts()
        return {
            **{status: counts.get(status, 0) for status in STATUSES},
            "unassigned": self.records.backlog_size(),
            "engines": {e: self.engine_queue_status(e) for e in self.ids},
        }

    def load_balanced_view(self: Client, targets: Any = None) -> Any:
        """A view that lets the scheduler pick the engine for each call."""
        from .lbview import LoadBalancedView

        return LoadBalancedView(self)
