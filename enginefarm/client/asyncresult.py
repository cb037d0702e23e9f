"""AsyncResult: a handle on one or more tasks whose results arrive through Redis.

An AsyncResult is a ``concurrent.futures.Future``: the client's result thread settles it
when the last of its tasks has an outcome, so ``add_done_callback``, ``await``,
``concurrent.futures.wait`` and ``as_completed`` work as for any future.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from itertools import chain
from typing import TYPE_CHECKING, Any, TextIO, cast

from ..errors import CompositeError, RemoteError, TimeoutError
from .metadata import Metadata, MetadataStore
from .output import OutputMethods
from .progress import progress_bar

if TYPE_CHECKING:
    from .client import Client

__all__ = ["AsyncJoinedResult", "AsyncMapResult", "AsyncResult", "LocalResult", "Metadata", "MetadataStore"]


class AsyncResult(OutputMethods, futures.Future[Any]):
    """The pending result of a call on one or more engines.

    ``get`` returns a list (one entry per task, in target order), or the bare value when the
    call was made on a single engine. Failures are aggressive: if any task failed, ``get``
    raises its RemoteError, or a CompositeError listing each when several failed.
    """

    def __init__(self, client: Client, task_ids: list[str], single: bool = False, kind: str = "",
                 owner: bool = False) -> None:
        super().__init__()
        self._client = client
        self.task_ids = list(task_ids)
        self._single = single
        self.kind = kind
        # An owner keeps the values itself and takes them out of the client's caches.
        self.owner = owner
        self._released = False
        self._values: list[Any] | None = None
        self._left = 0  # tasks without an outcome yet (the collector counts them down)
        self._track()

    def _track(self) -> None:
        self._client._track(self)

    def _settle(self) -> None:
        """Every task has an outcome: finish the future with what ``get`` gives."""
        if self.done():
            return
        results = self._client.results
        try:
            self._values = [results[t] for t in self.task_ids]
            value = self._shape(self._values, False)
        except Exception as exc:
            self._end(None, exc)
        else:
            self._end(value, None)

    def _end(self, value: Any, error: BaseException | None) -> None:
        try:
            if error is None:
                self.set_result(value)
            else:
                self.set_exception(error)
        except futures.InvalidStateError:
            pass  # cancelled meanwhile: the cancel stands

    def _shape(self, values: list[Any], return_exceptions: bool) -> Any:
        """What ``get`` returns for these task outcomes (raising a failure unless told not to)."""
        if return_exceptions:
            return values[0] if self._single else values
        errors = [v for v in values if isinstance(v, BaseException)]
        remote = [e for e in errors if isinstance(e, RemoteError)]
        if errors and len(errors) != len(remote):
            raise next(e for e in errors if not isinstance(e, RemoteError))
        if len(remote) == 1:
            raise remote[0]
        if remote:
            raise CompositeError(remote)
        return values[0] if self._single else values

    @property
    def msg_ids(self) -> list[str]:
        return self.task_ids

    def __len__(self) -> int:
        return len(self.task_ids)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.ready() else "pending"
        return f"<AsyncResult {self.kind or 'task'}: {len(self)} task(s), {state}>"

    # --- waiting --------------------------------------------------------------------
    def ready(self) -> bool:
        """True when every task has finished (without waiting)."""
        return self.done() or all(t in self._client.results for t in self.task_ids)

    def wait(self, timeout: float | None = None, return_when: str | None = None) -> Any:
        """Wait up to ``timeout`` seconds (None or negative: forever); True if all finished.

        With ``return_when`` (``concurrent.futures``' FIRST_COMPLETED, FIRST_EXCEPTION or
        ALL_COMPLETED): ``(done, pending)``, sets of this result's single-task parts
        (``split``), as ``concurrent.futures.wait`` returns them.
        """
        timeout = None if timeout is None or timeout < 0 else timeout
        if return_when is not None:
            return futures.wait(self.split(), timeout, return_when)
        if self.done():
            return True
        if self._client.collector.on_thread:
            raise RuntimeError("a done-callback cannot wait for results: it runs on the client's result "
                               "thread, which takes them in (wait in your own thread instead)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            confirming = self._client._pump()
            with self._condition:
                if self.done():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                step = 0.2 if remaining is None else min(0.2, remaining)
                if not confirming:
                    self._condition.wait(step)
            if confirming:
                self._client._pump(min(step, 0.05))

    def successful(self) -> bool:
        """True if every task finished without error.

        Raises:
            ValueError: not all tasks have finished.
        """
        if not self.ready():
            raise ValueError("the tasks have not finished yet")
        self.wait()
        return not self.cancelled() and not any(isinstance(v, BaseException) for v in self._values or [])

    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        """Wait for and return the results; with ``return_exceptions``, a failed task's entry
        is its exception instead of raising.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            RemoteError / CompositeError: one or several tasks failed.
            SignatureError: a stored result was not signed with the cluster key.
            CancelledError: the result was cancelled (its tasks aborted before they ran).
        """
        if not self.wait(timeout):
            done = sum(1 for t in self.task_ids if t in self._client.results)
            raise TimeoutError(f"{done}/{len(self.task_ids)} tasks finished within {timeout}s")
        if self.owner and not self._released:
            self._released = True
            for task_id in self.task_ids:
                self._client.results.pop(task_id, None)
        if return_exceptions and not self.cancelled():
            return self._shape(self._values or [], True)
        return super().result(0)

    # --- the Future interface -----------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """``get(timeout)``: the Future's name for it."""
        return self.get(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The failure ``get`` would raise, or None if the tasks succeeded.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            CancelledError: the result was cancelled.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"the tasks did not finish within {timeout}s")
        return super().exception(0)

    def cancel(self) -> bool:
        """Abort the tasks; True (and the future cancelled) only if none of them had started.
        A task that is running or finished goes on and keeps its outcome."""
        if self.done() or not self.task_ids:
            return self.cancelled()
        # Held so the aborted outcomes, which arrive at once, find the future cancelled
        # rather than finish it first.
        with self._client.collector.lock:
            aborted = cast("list[bool]", self._client.abort(self.task_ids))  # a list of ids gives a list
            if not all(aborted) or not super().cancel():
                return False
        # Wakes concurrent.futures.wait and as_completed, as an executor does for a cancel.
        self.set_running_or_notify_cancel()
        return True

    def running(self) -> bool:
        """True while one of the tasks runs on an engine (reads their status)."""
        if self.done() or not self.task_ids:
            return False
        return "running" in self._client.records.statuses(self.task_ids)

    def __await__(self) -> Generator[Any, None, Any]:
        # The event loop is told from the result thread (call_soon_threadsafe): no thread
        # per result, and the loop never blocks.
        return asyncio.wrap_future(self).__await__()

    def split(self) -> tuple[AsyncResult, ...]:
        """One result per task (one per chunk of a map), to wait for them one by one."""
        if len(self.task_ids) == 1:
            return (self,)
        return tuple(AsyncResult(self._client, [t], single=True, kind=self.kind) for t in self.task_ids)

    @classmethod
    def join(cls, *results: AsyncResult) -> AsyncResult:
        """One result for the tasks of several (the inverse of ``split``).

        Raises:
            ValueError: no results given.
        """
        if not results:
            raise ValueError("join needs at least one AsyncResult")
        if len(results) == 1:
            return results[0]
        return AsyncResult(results[0]._client, list(chain.from_iterable(r.task_ids for r in results)),
                           kind=results[0].kind)

    # --- what the tasks were ----------------------------------------------------------
    def abort(self) -> Any:
        """Abort the tasks that have not started; True for each that was aborted."""
        done = cast("list[bool]", self._client.abort(self.task_ids))  # a list of ids gives a list
        return done[0] if self._single else done

    @property
    def metadata(self) -> Any:
        data = [self._client.metadata_for(t) for t in self.task_ids]
        return data[0] if self._single else data

    @property
    def msg_id(self) -> str:
        """The one task id of a single-task result (ipyparallel's name)."""
        if len(self.task_ids) != 1:
            raise AttributeError("msg_id is for a result of one task; see msg_ids")
        return self.task_ids[0]

    def _stamps(self, key: str) -> list[float]:
        return [m[key].timestamp() for m in self._client.metadata_for_many(self.task_ids) if m[key] is not None]

    @property
    def elapsed(self) -> float:
        """Seconds since the first of the tasks was submitted."""
        stamps = self._stamps("submitted")
        return time.time() - min(stamps) if stamps else 0.0

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last completion (0 until one completes)."""
        submitted, completed = self._stamps("submitted"), self._stamps("completed")
        return max(completed) - min(submitted) if submitted and completed else 0.0

    @property
    def serial_time(self) -> float:
        """Seconds the tasks ran, added up: what they would take one after the other."""
        # Metadata's items are Any; its completed and started are datetimes.
        return cast(float, sum((m["completed"] - m["started"]).total_seconds()
                               for m in self._client.metadata_for_many(self.task_ids)
                               if m["completed"] is not None and m["started"] is not None))

    def get_dict(self, timeout: float | None = None) -> dict[int, Any]:
        """The results keyed by the engine that produced each.

        Raises:
            ValueError: several tasks ran on one engine (a dict would lose results).
        """
        values = self.get(timeout)
        values = [values] if self._single else values
        engines = [m["engine_id"] for m in self._client.metadata_for_many(self.task_ids)]
        if len(set(engines)) != len(engines):
            raise ValueError(f"several results came from one engine ({engines}); use get()")
        return dict(zip(engines, values))

    def __getattr__(self, key: str) -> Any:
        # Metadata as attributes (ar.engine_id, ar.stdout...): one value for a single task,
        # else one per task.
        if key.startswith("_") or key not in Metadata.KEYS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        values = [m[key] for m in self._client.metadata_for_many(self.task_ids)]
        return values[0] if self._single else values

    def __getitem__(self, key: int | slice | str) -> Any:
        """``ar['engine_id']``: metadata; ``ar[0]``, ``ar[1:]``: results (waiting for them)."""
        if isinstance(key, str):
            return self.__getattr__(key)
        value = self.get()
        return ([value] if self._single else value)[key]

    def __iter__(self) -> Iterator[Any]:
        value = self.get()
        yield from ([value] if self._single else value)

    # --- progress ---------------------------------------------------------------------
    @property
    def progress(self) -> int:
        """How many of the tasks have finished."""
        if self.done():
            return len(self.task_ids)
        results = self._client.results
        return sum(1 for t in self.task_ids if t in results)

    def wait_interactive(self, interval_s: float = 0.25, timeout: float | None = None,
                         stream: TextIO | None = None, return_when: str = futures.ALL_COMPLETED) -> bool:
        """Wait like ``wait`` (or ``Client.wait``'s ``return_when``), with a progress bar: a
        widget in Jupyter, a text bar on a terminal, nothing when output goes elsewhere."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with progress_bar(len(self), file=stream) as bar:
            while True:
                step = interval_s if deadline is None else max(min(interval_s, deadline - time.monotonic()), 0.0)
                if return_when == futures.ALL_COMPLETED:
                    finished = bool(self.wait(step))
                else:
                    finished = self._client.wait(self.task_ids, step, return_when=return_when)
                bar.update(self.progress - bar.n)
                if finished:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False


class AsyncMapResult(AsyncResult):
    """A load-balanced map: one task per chunk, items in the order of the input.

    Iterating yields items as their chunks finish: in order when ``ordered``, else in the
    order chunks complete. ``len()`` and ``progress`` count items, not chunks.
    """

    def __init__(self, client: Client, task_ids: list[str], chunk_sizes: list[int], ordered: bool = True) -> None:
        self.chunk_sizes = list(chunk_sizes)
        self.ordered = ordered
        super().__init__(client, task_ids, single=False, kind="map")

    def __len__(self) -> int:
        return sum(self.chunk_sizes)

    @property
    def progress(self) -> int:
        if self.done():
            return len(self)
        results = self._client.results
        return sum(n for t, n in zip(self.task_ids, self.chunk_sizes) if t in results)

    def _shape(self, values: list[Any], return_exceptions: bool) -> Any:
        chunks = super()._shape(values, return_exceptions)
        items: list[Any] = []
        for chunk, size in zip(chunks, self.chunk_sizes):
            # A failed chunk stands for each of its items.
            items.extend([chunk] * size if isinstance(chunk, BaseException) else chunk)
        return items

    def split(self) -> tuple[AsyncResult, ...]:
        if len(self.task_ids) == 1:
            return (self,)
        return tuple(AsyncMapResult(self._client, [t], [n], self.ordered)
                     for t, n in zip(self.task_ids, self.chunk_sizes))

    @classmethod
    def join(cls, *results: AsyncResult) -> AsyncResult:
        if not all(isinstance(r, AsyncMapResult) for r in results):
            return AsyncResult.join(*results)
        maps = cast("tuple[AsyncMapResult, ...]", results)
        if len(maps) == 1:
            return maps[0]
        return AsyncMapResult(maps[0]._client, list(chain.from_iterable(r.task_ids for r in maps)),
                              list(chain.from_iterable(r.chunk_sizes for r in maps)), maps[0].ordered)

    def _items(self, task_id: str) -> list[Any]:
        value = self._client.results[task_id]
        if isinstance(value, BaseException):
            raise value
        return cast("list[Any]", value)  # a map chunk's result: the list of its items

    def __iter__(self) -> Iterator[Any]:
        if self._values is not None:
            # Settled: the values it holds (the client may have forgotten its copies).
            for value in self._values:
                if isinstance(value, BaseException):
                    raise value
                yield from value
            return
        results = self._client.results
        if self.ordered:
            for task_id in self.task_ids:
                if task_id not in results:
                    self._client.wait([task_id], timeout=-1)
                yield from self._items(task_id)
            return
        remaining = list(self.task_ids)
        while remaining:
            ready = [t for t in remaining if t in results]
            if not ready:
                self._client.wait(remaining, timeout=-1, any_of=True)
                continue
            for task_id in ready:
                remaining.remove(task_id)
                yield from self._items(task_id)


class LocalResult(AsyncResult):
    """A result computed without a round trip to engines (e.g. properties held in Redis)."""

    def __init__(self, client: Client, value: Any, single: bool, kind: str = "") -> None:
        self._value = value
        super().__init__(client, [], single, kind)

    def _track(self) -> None:
        self._values = []
        self.set_result(self._value)

    def _shape(self, values: list[Any], return_exceptions: bool) -> Any:
        return self._value

    @property
    def metadata(self) -> Any:
        return None if self._single else []


class AsyncJoinedResult(AsyncResult):
    """One value made from every target's answer once all have arrived: gather joins the
    parts, zip_pull regroups the values by name. ``join`` gets the answers in target order.
    With ``return_exceptions`` and a failed target, ``get`` gives the answers unjoined (a
    failure cannot be joined).
    """

    def __init__(self, client: Client, task_ids: list[str], join: Callable[[list[Any]], Any],
                 kind: str = "") -> None:
        self._join = join
        super().__init__(client, task_ids, single=False, kind=kind)

    def _shape(self, values: list[Any], return_exceptions: bool) -> Any:
        answers = super()._shape(values, return_exceptions)
        if any(isinstance(a, BaseException) for a in answers):
            return answers
        return self._join(answers)
