"""The supervisor's side of live output: a running task's output into Redis as it arrives,
and its live strings removed once they are no longer the task's latest word.

Live output is a convenience beside the record, never a condition for it: a Redis write
that fails stops the live output of that task (so what is there stays a prefix of the
record) and the task goes on. A task that prints nothing costs nothing here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import StoreError
from ..store import LiveOutput

log = logging.getLogger(__name__)


class OutputRelay:
    """Used from the engine's worker thread only, one task at a time."""

    def __init__(self, store: LiveOutput) -> None:
        self.store = store
        self._task_id = ""
        self._written = False
        self._broken = False
        self._finished: list[str] = []  # tasks with live strings, removed once recorded

    def begin(self, task_id: str) -> Callable[[dict[str, str]], None]:
        """A task starts: returns where its output goes while it runs (``Executor.run``)."""
        self._task_id, self._written, self._broken = task_id, False, False
        return self._append

    def _append(self, chunks: dict[str, str]) -> None:
        if self._broken:
            return
        try:
            self.store.append(self._task_id, chunks, fresh=not self._written)
            self._written = True
        except StoreError as exc:
            self._broken = True
            log.warning("live output of task %s stops (the record will hold it all): %s", self._task_id, exc)

    def end(self) -> None:
        """The task's run is over; its live strings go once its record is written
        (``clear_finished``): until then they are what a reader sees."""
        if self._written:
            self._finished.append(self._task_id)
        self._written = False

    def discard(self, task_id: str) -> None:
        """The task goes back for another attempt: its strings go now, before another engine
        can start it (the next attempt's output replaces this one's, as in the record)."""
        if task_id in self._finished:
            self._finished.remove(task_id)
            self._delete([task_id])

    def clear_finished(self) -> None:
        """Remove the live strings of the tasks whose records were just written (one round
        trip, none when no task printed live)."""
        if self._finished:
            done, self._finished = self._finished, []
            self._delete(done)

    def _delete(self, task_ids: list[str]) -> None:
        try:
            self.store.discard(task_ids)
        except StoreError as exc:
            # They expire on their own (LiveOutput.ttl_s); readers of a finished record ignore them.
            log.warning("live output of %d task(s) left to expire: %s", len(task_ids), exc)
