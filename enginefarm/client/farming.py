"""The TaskController side of the Client (seed 003): submit tasks, collect TaskResults."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from ..broker.publisher import Outgoing
from ..errors import RemoteError, TaskError
from ..protocol import new_id, seal
from ..task import TaskHeader
from ..store.records import ABORTED, PENDING, NewTask, error_fields
from .tasks import BaseTask, TaskResult

if TYPE_CHECKING:
    from .client import Client
    from .viewexecutor import ViewExecutor
    from .lbview import LoadBalancedView
    from .parts import ClientParts

# A large submission goes out in runs of 64, 128, ... tasks: the first reaches an engine at
# once, and the later ones are big enough that a run's Redis write and publish cost little.
FIRST_RUN, MAX_RUN = 64, 1024


class TaskFarming:
    """Mixed into Client: load-balanced submission through the scheduler."""

    def submit(self: ClientParts, task: BaseTask) -> str:
        """Queue ``task`` for whichever engine the scheduler picks; returns its task id.

        Raises:
            SerializationError: the task (function, arguments, depend...) cannot be pickled.
        """
        return self.submit_many([task])[0]

    run = submit

    def submit_many(self: ClientParts, tasks: Sequence[BaseTask]) -> list[str]:
        """Queue several tasks at once (one Redis transaction for their records). Returns
        once the broker has confirmed every message: they survive this client and a broker
        restart."""
        return self._submit_tasks(tasks, confirm=True)

    def _submit_tasks(self: ClientParts, tasks: Sequence[BaseTask], confirm: bool) -> list[str]:
        """``confirm=False`` returns as soon as the broker has the messages, for a caller that
        waits for the results next: the confirms are taken while it waits, and a message the
        broker did not confirm is sent again."""
        self._connect()
        prepared = []
        for task in tasks:
            if not isinstance(task, BaseTask):
                raise TypeError(f"submit takes a MapTask or StringTask, not {type(task).__name__}")
            prepared.append((task.kind, {"lb": True, **task.header()}, self.pickle_request(task.request(), task.describe())))
        return self._submit_sealed(prepared, confirm)

    def _submit_sealed(self: ClientParts, prepared: list[tuple[str, dict[str, Any], bytes]],
                       confirm: bool = True) -> list[str]:
        """Record and publish (kind, header, pickled request) triples.

        Plain FIFO work goes straight to the engines' shared queue; tasks that need the
        scheduler (depend, priority, or a LIFO/priority scheme) go through it. Every size is
        checked before anything is sent; then the tasks go out in growing runs, so engines
        start on the first while the rest are sealed and recorded.
        """
        for kind, _, payload in prepared:
            self.check_size(payload, f"the {kind} request")
        scheme = self._scheme()
        # From the first task on, outcomes are taken in as they arrive.
        self.collector.start()
        ids: list[str] = []
        start, run = 0, FIRST_RUN
        try:
            while start < len(prepared):
                new, messages = self._seal_run(prepared[start : start + run], scheme)
                self.records.create(new, wait=False)
                for task in new:
                    self.history.append(task.task_id)
                    self.outstanding.add(task.task_id)
                    ids.append(task.task_id)
                self.publisher.send(messages, confirm=False)
                start, run = start + run, min(run * 2, MAX_RUN)
            if confirm:
                self.publisher.send([], confirm=True)
        finally:
            self.records.created()
        return ids

    def _seal_run(self: ClientParts, prepared: list[tuple[str, dict[str, Any], bytes]],
                  scheme: str | None) -> tuple[list[NewTask], list[Outgoing]]:
        new, messages = [], []
        for kind, header, payload in prepared:
            task_id = new_id()
            head = TaskHeader.decode({"task_id": task_id, "kind": kind, "client_id": self.client_id, **header})
            body = seal(self.ring, head.encode(), payload)
            extra = {"lb": "1", "retries": str(head.retries)}
            if head.label is not None:
                extra["label"] = head.label
            if head.needs_scheduler or scheme not in (None, "fifo"):
                extra["_notify"] = self.names.scheduler_events
                messages.append(Outgoing("", self.names.tasks_queue, body))
            else:
                messages.append(Outgoing("", self.names.work_queue, body))
            new.append(NewTask(task_id, kind, self.client_id, body, None, extra))
            self.blob_owners.hold(task_id, payload)
        return new, messages

    def _scheme(self: ClientParts, max_age_s: float = 2.0) -> str | None:
        """The active scheduler's scheme, read at most every ``max_age_s``."""
        now = time.monotonic()
        cached = self.__dict__.get("_scheme_cache")
        if cached is None or now - cached[0] > max_age_s:
            cached = (now, self.records.scheme())
            self.__dict__["_scheme_cache"] = cached
        return cached[1]

    @overload
    def get_task_result(self: ClientParts, task_id: str, block: Literal[True],
                        timeout: float | None = None) -> TaskResult: ...

    @overload
    def get_task_result(self: ClientParts, task_id: str, block: bool = False,
                        timeout: float | None = None) -> TaskResult | None: ...

    def get_task_result(self: ClientParts, task_id: str, block: bool = False,
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

    def abort(self: ClientParts, task_ids: str | Iterable[str]) -> bool | list[bool]:
        """Stop tasks that have not started: they never run, and their result says so.

        Returns:
            For one id, True if it was aborted (False: already running or finished);
            for a list, a list of those.
        Raises:
            TaskError: an id is unknown.
        """
        self._connect()
        single = isinstance(task_ids, (str, int))
        ids = self.task_ids_of(task_ids)
        error = error_fields("TaskAborted", "the task was aborted before it started")
        self._known(ids)
        done = []
        for task_id in ids:
            done.append(self.records.fail(task_id, error, allowed=(PENDING,), status=ABORTED))
        return done[0] if single else done

    def barrier(self: ClientParts, task_ids: Iterable[str], timeout: float | None = None) -> None:
        """Block until every task in ``task_ids`` has finished (failures included).

        Raises:
            TimeoutError: not all finished within ``timeout`` seconds.
        """
        from ..errors import TimeoutError

        ids = self.task_ids_of(task_ids)
        if not self.wait(ids, -1 if timeout is None else timeout):
            raise TimeoutError(f"{len(ids)} tasks did not all finish within {timeout}s")

    def load_balanced_view(self: ClientParts, targets: Any = None) -> LoadBalancedView:
        """A view that lets the scheduler pick the engine for each call, among ``targets``
        (engine ids; None or 'all': any engine).

        Raises:
            InvalidEngineID: a target is not a registered engine.
        """
        from .lbview import LoadBalancedView

        client = cast("Client", self)  # mixed into Client only: self is the Client
        if targets is None or targets == "all":
            return LoadBalancedView(client)
        return LoadBalancedView(client, targets=self.resolve_targets(targets))

    def executor(self: ClientParts, targets: Any = None) -> ViewExecutor:
        """A ``concurrent.futures.Executor`` over a load-balanced view of ``targets``."""
        return TaskFarming.load_balanced_view(self, targets).executor()
