"""imap: a lazy load-balanced map over an iterable that need not fit in memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from itertools import islice
from typing import TYPE_CHECKING, Any

from ..chunks import call_chunk
from .asyncresult import AsyncMapResult
from .tasks import MapTask

if TYPE_CHECKING:
    from .lbview import LoadBalancedView


def outstanding_limit(max_outstanding: int | str, engines: int) -> int:
    """How many tasks imap keeps in flight: 'auto' keeps each engine busy with one task
    while a second waits for it (an engine never idles between two).

    Raises:
        ValueError: not 'auto' nor a positive int.
    """
    if max_outstanding == "auto":
        return 2 * max(engines, 1)
    if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int) or max_outstanding < 1:
        raise ValueError(f"max_outstanding is 'auto' or a positive int, not {max_outstanding!r}")
    return max_outstanding


def imap(view: LoadBalancedView, f: Callable[..., Any], *iterables: Iterable[Any], ordered: bool = True,
         max_outstanding: int | str = "auto", chunksize: int = 1) -> Iterator[Any]:
    """``f(*items)`` for each ``items`` of ``zip(*iterables)``, read lazily: at most
    ``max_outstanding`` tasks (of ``chunksize`` items each) are in flight, and results are
    yielded as they come (``ordered=False``) or in input order.

    A failed task raises its RemoteError where its items would have been yielded. Closing the
    iterator early aborts the tasks it had in flight that have not started. The client
    forgets each result once it is yielded, so memory stays bounded by what is in flight.

    Raises:
        TypeError: no iterable; ValueError: a bad ``max_outstanding`` or ``chunksize``.
    """
    if not iterables:
        raise TypeError("imap needs at least one iterable")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize is a positive int, not {chunksize!r}")
    limit = outstanding_limit(max_outstanding, len(view.client.ids))
    return _results(view, f, zip(*iterables), ordered, limit, chunksize)


def _results(view: LoadBalancedView, f: Callable[..., Any], items: Iterator[tuple[Any, ...]], ordered: bool,
             limit: int, chunksize: int) -> Iterator[Any]:
    client = view.client
    chunks = iter(lambda: list(islice(items, chunksize)), [])
    in_flight: deque[AsyncMapResult] = deque()

    def top_up() -> None:
        batch = list(islice(chunks, limit - len(in_flight)))
        if not batch:
            return
        tasks = [MapTask(call_chunk, (f, chunk), **view.task_options) for chunk in batch]
        # One publish and one confirm round trip for the whole batch.
        task_ids = view._submit(tasks, blocking=False)
        in_flight.extend(AsyncMapResult(client, [t], [len(c)]) for t, c in zip(task_ids, batch))

    def taken(result: AsyncMapResult) -> list[Any]:
        in_flight.remove(result)
        error = result.exception()
        values = result.get() if error is None else []
        for task_id in result.task_ids:
            client.results.pop(task_id, None)
            client.metadata.pop(task_id, None)
        if error is not None:
            raise error
        return list(values)

    try:
        top_up()
        while in_flight:
            if ordered:
                ready = [in_flight[0]]
                ready[0].wait()
            else:
                done, _ = futures.wait(list(in_flight), return_when=futures.FIRST_COMPLETED)
                ready = [r for r in in_flight if r in done]
            for result in ready:
                values = taken(result)
                top_up()  # before yielding: the engines work while the caller does
                yield from values
    finally:
        left = [t for r in in_flight for t in r.task_ids]
        if left:
            client.abort(left)
