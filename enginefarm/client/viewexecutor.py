"""A ``concurrent.futures.Executor`` over a view, for code written against that interface."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any

from ..errors import TimeoutError
from .asyncresult import AsyncMapResult, AsyncResult

if TYPE_CHECKING:
    from .lbview import LoadBalancedView
    from .view import DirectView


class ViewExecutor(futures.Executor):
    """``submit`` is the view's ``apply_async``; ``map`` its ``map_async``; the futures are
    the view's AsyncResults. ``shutdown`` stops new work and waits for the work given."""

    def __init__(self, view: LoadBalancedView | DirectView) -> None:
        self.view = view
        self._pending: set[AsyncResult] = set()
        self._shut = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ViewExecutor {self.view!r}>"

    def _open(self) -> None:
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Run ``fn(*args, **kwargs)`` through the view (on a direct view of several engines:
        on each, and the result is their list)."""
        with self._lock:
            self._open()
            result = self.view.apply_async(fn, *args, **kwargs)
            self._pending.add(result)
        result.add_done_callback(self._pending.discard)
        return result

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None) -> Iterator[Any]:
        """The results of ``fn`` over ``zip(*iterables)``, in order, as the stdlib's map.

        Every call is submitted now. ``chunksize=None`` takes the view's automatic chunking
        (1 gives one task per item); a direct view splits the items among its engines.

        Raises:
            TimeoutError: (while iterating) a result was not there ``timeout`` seconds after
                the call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._open()
            from .lbview import LoadBalancedView

            if isinstance(self.view, LoadBalancedView):
                result = self.view.map_async(fn, *iterables, chunksize=chunksize)
            else:
                result = self.view.map_async(fn, *iterables)
            self._pending.add(result)
        result.add_done_callback(self._pending.discard)
        return _in_order(result, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work after this; ``cancel_futures`` aborts what has not started, ``wait``
        waits for the rest."""
        with self._lock:
            self._shut = True
            pending = list(self._pending)
        if cancel_futures:
            for result in pending:
                result.cancel()
        if wait:
            futures.wait(pending)


def _in_order(result: AsyncMapResult, deadline: float | None) -> Iterator[Any]:
    for part in result.split():
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not part.wait(remaining):
            raise TimeoutError(f"a result of the map was not ready within its timeout ({part.progress}/{len(part)})")
        yield from part
