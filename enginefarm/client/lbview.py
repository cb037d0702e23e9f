"""LoadBalancedView: apply and map through the scheduler."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from ..chunks import call_chunk
from .asyncresult import AsyncMapResult, AsyncResult
from .tasks import MapTask

if TYPE_CHECKING:
    from .remotefunction import ParallelFunction, RemoteFunction
    from .viewexecutor import ViewExecutor
    from .client import Client

# Automatic chunking aims at this many chunks per engine: enough to balance uneven items,
# few enough that per-task overhead stays small next to the work.
CHUNKS_PER_ENGINE = 4
MAX_AUTO_CHUNK = 2000


def auto_chunksize(items: int, engines: int) -> int:
    return max(1, min(MAX_AUTO_CHUNK, math.ceil(items / max(engines, 1) / CHUNKS_PER_ENGINE)))


# Flags a view passes to every task it submits (BaseTask's options).
FLAGS = frozenset({"retries", "after", "follow", "timeout", "targets", "label", "depend", "priority",
                   "clear_before", "clear_after", "recovery_task"})


class LoadBalancedView:
    """Submits through the scheduler; ``targets`` restricts its tasks to those engines.

    ``set_flags`` / ``temp_flags`` set what every task of the view carries (retries, after,
    follow, timeout, targets, label, depend, priority...). ``timeout`` is the run-time limit
    of a task here (ipyparallel: the time a task may wait for its dependencies).
    """

    def __init__(self, client: Client, block: bool | None = None, targets: Any = None,
                 **task_options: Any) -> None:
        self.client = client
        self.block = block
        # Every task this view submitted, in order (ipyparallel's view.history).
        self.history: list[str] = []
        self.task_options: dict[str, Any] = {}
        self.set_flags(targets=targets, **task_options)

    def __repr__(self) -> str:
        targets = self.task_options.get("targets")
        return "<LoadBalancedView>" if targets is None else f"<LoadBalancedView targets={targets!r}>"

    @property
    def targets(self) -> Any:
        return self.task_options.get("targets")

    def set_flags(self, **flags: Any) -> None:
        """Set flags for every later task of this view (None clears one).

        Raises:
            KeyError: a flag that tasks do not take.
        """
        unknown = set(flags) - FLAGS
        if unknown:
            raise KeyError(f"unknown flag {sorted(unknown)[0]!r}; flags are {', '.join(sorted(FLAGS))}")
        for name, value in flags.items():
            if value is None:
                self.task_options.pop(name, None)
            else:
                self.task_options[name] = value

    @property
    def outstanding(self) -> set[str]:
        """Tasks of this view not finished yet (as far as its client knows)."""
        return {t for t in self.history if t in self.client.outstanding}

    def abort(self, jobs: Any = None) -> Any:
        """Abort tasks of this view that have not started (default: all it has outstanding)."""
        return self.client.abort(sorted(self.outstanding) if jobs is None else jobs)

    def _submit(self, tasks: list[MapTask], blocking: bool) -> list[str]:
        task_ids = self.client._submit_tasks(tasks, confirm=not blocking)
        self.history.extend(task_ids)
        return task_ids

    def remote(self, block: bool | None = None, **flags: Any) -> Callable[[Callable[..., Any]], RemoteFunction]:
        """``@view.remote(block=True)``: calling the function runs it through this view."""
        from .remotefunction import remote

        return remote(self, block, **flags)

    def parallel(self, dist: str = "b", block: bool | None = None,
                 **flags: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
        """``@view.parallel(block=True)``: calling the function runs it on parts of its sequences."""
        from .remotefunction import parallel

        return parallel(self, dist, block, **flags)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[None]:
        """Flags for the tasks submitted inside the ``with`` block only."""
        saved = dict(self.task_options)
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.task_options = saved

    def _block(self, block: bool | None) -> bool:
        if block is not None:
            return block
        return self.block if self.block is not None else self.client.block

    def apply(self, f: Callable[..., Any], *args: Any, block: bool | None = None, stream: bool = False,
              **kwargs: Any) -> Any:
        """Run ``f(*args, **kwargs)`` on one engine chosen by the scheduler. With ``stream``,
        blocks and prints the output as it arrives (``stream_outputs``), then returns the
        result; ``block`` and ``stream`` are the view's (not passed to ``f``)."""
        blocking = stream or self._block(block)
        task_id = self._submit([MapTask(f, args, kwargs, **self.task_options)], blocking)[0]
        result = AsyncResult(self.client, [task_id], single=True, kind="apply")
        if stream:
            result.stream_outputs()
        return result.get() if blocking else result

    def apply_async(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
        return cast(AsyncResult, self.apply(f, *args, block=False, **kwargs))

    def apply_sync(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.apply(f, *args, block=True, **kwargs)

    def map(self, f: Callable[..., Any], *sequences: Iterable[Any], chunksize: int | None = None,
            ordered: bool = True, block: bool | None = None) -> Any:
        """``[f(*items) for items in zip(*sequences)]``, farmed out in chunks.

        ``chunksize=None`` picks one from the number of items and live engines.
        """
        if not sequences:
            raise TypeError("map needs at least one sequence")
        arg_tuples = list(zip(*sequences))
        size = chunksize or auto_chunksize(len(arg_tuples), len(self.client.ids))
        chunks = [arg_tuples[i : i + size] for i in range(0, len(arg_tuples), size)]
        tasks = [MapTask(call_chunk, (f, chunk), **self.task_options) for chunk in chunks]
        blocking = self._block(block)
        task_ids = self._submit(tasks, blocking)
        result = AsyncMapResult(self.client, task_ids, [len(c) for c in chunks], ordered)
        return result.get() if blocking else result

    def imap(self, f: Callable[..., Any], *iterables: Iterable[Any], ordered: bool = True,
             max_outstanding: int | str = "auto", chunksize: int = 1) -> Iterator[Any]:
        """A lazy ``map``: reads the iterables as tasks finish, at most ``max_outstanding``
        tasks in flight ('auto': two per engine); see ``enginefarm.client.imap``."""
        from .imap import imap

        return imap(self, f, *iterables, ordered=ordered, max_outstanding=max_outstanding, chunksize=chunksize)

    def executor(self) -> ViewExecutor:
        """A ``concurrent.futures.Executor`` that submits through this view."""
        from .viewexecutor import ViewExecutor

        return ViewExecutor(self)

    def map_async(self, f: Callable[..., Any], *sequences: Iterable[Any], **kwargs: Any) -> AsyncMapResult:
        return cast(AsyncMapResult, self.map(f, *sequences, block=False, **kwargs))

    def map_sync(self, f: Callable[..., Any], *sequences: Iterable[Any], **kwargs: Any) -> list[Any]:
        return cast("list[Any]", self.map(f, *sequences, block=True, **kwargs))
