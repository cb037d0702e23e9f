"""Functions that run on engines when called: ipyparallel's ``@remote`` and ``@parallel``.

``@remote(view)``: calling the function calls ``view.apply(f, ...)``. ``@parallel(view)``:
calling it with sequences calls it once per part of them, and joins the parts' results in
order. Over a DirectView each target gets one part: contiguous (``dist='b'``: the first
``len % n`` targets get one item more) or every n-th item (``dist='r'``), as ``scatter``
splits (``partition``). Over a LoadBalancedView the scheduler farms out parts of
``chunksize`` items (1 by default). ``.map(...)`` calls the function on each item instead,
through the view's ``map``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union, cast

from . import partition
from .asyncresult import AsyncJoinedResult, AsyncResult
from .lbview import FLAGS, LoadBalancedView
from .view import DirectView

if TYPE_CHECKING:
    from .client import Client

View = Union[DirectView, LoadBalancedView]


def remote(view: View, block: bool | None = None, **flags: Any) -> Callable[[Callable[..., Any]], RemoteFunction]:
    """Decorator: calling the function runs it through ``view.apply``.

    >>> @remote(dview, block=True)
    ... def getpid(): import os; return os.getpid()
    """

    def remote_function(f: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(view, f, block=block, **flags)

    return remote_function


def parallel(view: View, dist: str = "b", block: bool | None = None, ordered: bool = True,
             **flags: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
    """Decorator: calling the function with sequences runs it on parts of them (see the module).

    >>> @parallel(dview, block=True)
    ... def double(part): return [2 * x for x in part]
    >>> double(range(8))       # each engine doubles its part
    """

    def parallel_function(f: Callable[..., Any]) -> ParallelFunction:
        return ParallelFunction(view, f, dist=dist, block=block, ordered=ordered, **flags)

    return parallel_function


class RemoteFunction:
    """A function whose calls run on a view's engines.

    Args:
        block: wait for the result (None: the view's setting).
        flags: ``targets`` for a DirectView; a LoadBalancedView's flags (``retries``,
            ``after``, ``timeout``, ``targets``...), set for this function's tasks only.

    Raises:
        KeyError: a flag the view does not take (as ``temp_flags``).
    """

    def __init__(self, view: View, f: Callable[..., Any], block: bool | None = None, **flags: Any) -> None:
        if not callable(f):
            raise TypeError(f"{f!r} is not callable")
        allowed = FLAGS if isinstance(view, LoadBalancedView) else frozenset({"targets"})
        unknown = set(flags) - allowed
        if unknown:
            raise KeyError(f"unknown flag {sorted(unknown)[0]!r} for {view!r}; flags are {', '.join(sorted(allowed))}")
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        self.__name__ = str(getattr(f, "__name__", None) or getattr(f, "name", None) or f)
        doc = getattr(f, "__doc__", None)
        if doc:
            self.__doc__ = f"{type(self).__name__} wrapping:\n{doc}"
        try:
            self.__signature__ = inspect.signature(f)
        except (TypeError, ValueError):
            pass  # builtins without a signature

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__} on {self.view!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        view = self.view
        if isinstance(view, LoadBalancedView):
            with self._flagged(view):
                return view.apply(self.func, *args, block=self.block, **kwargs)
        return view.apply_request(self.func, args, kwargs, targets=self.flags.get("targets"), block=self.block)

    @contextlib.contextmanager
    def _flagged(self, view: LoadBalancedView) -> Iterator[None]:
        with view.temp_flags(**self.flags):
            yield

    def _direct(self, view: DirectView) -> DirectView:
        """The view, or one on this function's ``targets``."""
        targets = self.flags.get("targets")
        return view if targets is None else DirectView(view.client, targets, view.block)

    def _blocking(self) -> bool:
        if self.block is not None:
            return self.block
        return self.view.block if self.view.block is not None else self.view.client.block


class ParallelFunction(RemoteFunction):
    """A function called on parts of its sequence arguments, on a view's engines.

    Args:
        dist: 'b' (contiguous parts) or 'r' (round robin); see ``partition``.
        chunksize: items per part on a LoadBalancedView (default 1); ignored on a DirectView.
        ordered: a load-balanced ``map`` yields items in input order (else as they finish).
    """

    def __init__(self, view: View, f: Callable[..., Any], dist: str = "b", block: bool | None = None,
                 chunksize: int | None = None, ordered: bool = True, **flags: Any) -> None:
        partition.check_dist(dist)
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        super().__init__(view, f, block=block, **flags)
        self.dist = dist
        self.chunksize = chunksize
        self.ordered = ordered

    def __call__(self, *sequences: Any, **kwargs: Any) -> Any:
        """Call the function on each part; returns the parts' results joined
        (``partition.join``: lists and arrays into one, anything else one per part).

        Raises:
            ValueError: the sequences differ in length.
        """
        if kwargs:
            raise TypeError(f"a parallel function takes sequences only, not {sorted(kwargs)}")
        seqs = _sequences(sequences)
        lengths = {len(s) for s in seqs}
        if len(lengths) > 1:
            raise ValueError(f"all sequences must have the same length, not {[len(s) for s in seqs]}")
        n = lengths.pop()
        if n == 0:
            return []
        view = self.view
        result = self._farm_parts(view, seqs, n) if isinstance(view, LoadBalancedView) else \
            self._spread_parts(self._direct(view), seqs, n)
        return result.get() if self._blocking() else result

    def map(self, *sequences: Any) -> Any:
        """``[f(*items) for items in zip(*sequences)]`` on the view's engines (its ``map``)."""
        seqs = _sequences(sequences)
        view = self.view
        blocking = self._blocking()
        if isinstance(view, LoadBalancedView):
            with self._flagged(view):
                return view.map(self.func, *seqs, chunksize=self.chunksize, ordered=self.ordered, block=blocking)
        return self._direct(view).map(self.func, *seqs, block=blocking)

    def _farm_parts(self, view: LoadBalancedView, seqs: list[Sequence[Any]], n: int) -> AsyncJoinedResult:
        """One load-balanced task per part of ``chunksize`` items."""
        count = math.ceil(n / (self.chunksize or 1))
        per_seq = [[partition.part(s, i, count, self.dist) for i in range(count)] for s in seqs]
        with self._flagged(view):
            chunks = cast(AsyncResult, view.map(self.func, *per_seq, chunksize=1, ordered=self.ordered, block=False))
        # Each task is a map chunk of one call: its value is [f(part)].
        return AsyncJoinedResult(view.client, chunks.task_ids,
                                 lambda answers: partition.join([a[0] for a in answers], self.dist), "parallel")

    def _spread_parts(self, view: DirectView, seqs: list[Sequence[Any]], n: int) -> AsyncJoinedResult:
        """One part per target, each engine sent its own."""
        client: Client = view.client
        engine_ids = client.resolve_targets(view.targets)
        requests: list[tuple[int, Any]] = []
        for index, engine_id in enumerate(engine_ids):
            parts = tuple(partition.part(s, index, len(engine_ids), self.dist) for s in seqs)
            if any(len(p) for p in parts):  # fewer items than targets: the rest get nothing
                requests.append((engine_id, (self.func, parts, {})))
        what = f"function {self.__name__!r} or its parts"
        task_ids = client.send_direct_each("apply", requests, what, confirm=not self._blocking())
        return AsyncJoinedResult(client, task_ids, lambda answers: partition.join(answers, self.dist), "parallel")


def _sequences(sequences: tuple[Any, ...]) -> list[Sequence[Any]]:
    """Each argument as something with a length (generators become lists)."""
    if not sequences:
        raise TypeError("a parallel function needs at least one sequence")
    return [partition.sized(s) for s in sequences]
