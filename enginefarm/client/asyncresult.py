"""AsyncResult: a handle on one or more tasks whose results arrive through Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO, cast

from ..errors import CompositeError, RemoteError, TimeoutError
from ..task import RESULT_FIELDS
from .output import OutputMethods
from .progress import ProgressBar

if TYPE_CHECKING:
    from .client import Client


class Metadata(dict[str, Any]):
    """Per-task metadata (seed 004): dict with attribute access to a fixed set of keys."""

    # The result fields of the record schema (``enginefarm.task``), less the sealed value.
    KEYS = tuple(name for name in RESULT_FIELDS if name != "result")
    _KEYSET = frozenset(KEYS)

    def __init__(self, **values: Any) -> None:
        unknown = values.keys() - self._KEYSET
        if unknown:
            raise KeyError(f"{sorted(unknown)[0]!r} is not a metadata key")
        super().__init__(dict.fromkeys(self.KEYS), **values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.KEYS:
            raise KeyError(f"{key!r} is not a metadata key")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class MetadataStore(MutableMapping[str, Metadata]):
    """Task id -> Metadata, built from a finished task's record only when first read (most
    results are collected without anyone looking at their metadata)."""

    def __init__(self, build: Callable[[Any], Metadata]) -> None:
        self._build = build
        self._data: dict[str, Any] = {}

    def put_record(self, task_id: str, record: Any) -> None:
        self._data[task_id] = record

    def __getitem__(self, task_id: str) -> Metadata:
        value = self._data[task_id]
        if not isinstance(value, Metadata):
            value = self._data[task_id] = self._build(value)
        return value

    def __setitem__(self, task_id: str, value: Metadata) -> None:
        self._data[task_id] = value

    def __delitem__(self, task_id: str) -> None:
        del self._data[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class AsyncResult(OutputMethods):
    """The pending result of a call on one or more engines.

    ``get`` returns a list (one entry per task, in target order), or the bare value when the
    call was made on a single engine. Failures are aggressive: if any task failed, ``get``
    raises its RemoteError, or a CompositeError listing each when several failed.
    """

    def __init__(self, client: Client, task_ids: list[str], single: bool = False, kind: str = "",
                 owner: bool = False) -> None:
        self._client = client
        self.task_ids = list(task_ids)
        self._single = single
        self.kind = kind
        # An owner keeps the values itself and takes them out of the client's caches.
        self.owner = owner
        self._owned: list[Any] | None = None

    @property
    def msg_ids(self) -> list[str]:
        return self.task_ids

    def __len__(self) -> int:
        return len(self.task_ids)

    def __repr__(self) -> str:
        state = "finished" if self.ready() else "pending"
        return f"<AsyncResult {self.kind or 'task'}: {len(self)} task(s), {state}>"

    def ready(self) -> bool:
        """True when every task has finished (checks Redis without waiting)."""
        return self._owned is not None or self._client.wait(self.task_ids, timeout=0)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None or negative: forever); True if all finished."""
        return self._owned is not None or self._client.wait(self.task_ids, timeout=-1 if timeout is None else timeout)

    def successful(self) -> bool:
        """True if every task finished without error.

        Raises:
            ValueError: not all tasks have finished.
        """
        if not self.ready():
            raise ValueError("the tasks have not finished yet")
        values = self._owned if self._owned is not None else [self._client.results[t] for t in self.task_ids]
        return not any(isinstance(v, BaseException) for v in values)

    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        """Wait for and return the results; with ``return_exceptions``, a failed task's entry
        is its exception instead of raising.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            RemoteError / CompositeError: one or several tasks failed.
            SignatureError: a stored result was not signed with the cluster key.
        """
        values = self._owned if self._owned is not None else self._collect(timeout)
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
    def metadata(self) -> Any:
        data = [self._client.metadata_for(t) for t in self.task_ids]
        return data[0] if self._single else data

    def _collect(self, timeout: float | None) -> list[Any]:
        if not self.wait(timeout):
            done = sum(1 for t in self.task_ids if t in self._client.results)
            raise TimeoutError(f"{done}/{len(self.task_ids)} tasks finished within {timeout}s")
        values = [self._client.results[t] for t in self.task_ids]
        if self.owner:
            self._owned = values
            for task_id in self.task_ids:
                self._client.results.pop(task_id, None)
        return values

    def abort(self) -> Any:
        """Abort the tasks that have not started; True for each that was aborted."""
        done = cast("list[bool]", self._client.abort(self.task_ids))  # a list of ids gives a list
        return done[0] if self._single else done

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

    @property
    def progress(self) -> int:
        """How many of the tasks have finished."""
        self._client.wait(self.task_ids, timeout=0)
        return sum(1 for t in self.task_ids if t in self._client.results)

    def wait_interactive(self, interval_s: float = 0.25, timeout: float | None = None,
                         stream: TextIO | None = None) -> bool:
        """Wait like ``wait``, drawing a progress bar when the output is a terminal."""
        bar = ProgressBar(len(self), stream=stream)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while not self.wait(interval_s):
            bar.update(self.progress)
            if deadline is not None and time.monotonic() > deadline:
                return False
        bar.finish(self.progress)
        return True


class AsyncMapResult(AsyncResult):
    """A load-balanced map: one task per chunk, items in the order of the input.

    Iterating yields items as their chunks finish: in order when ``ordered``, else in the
    order chunks complete. ``len()`` and ``progress`` count items, not chunks.
    """

    def __init__(self, client: Client, task_ids: list[str], chunk_sizes: list[int], ordered: bool = True) -> None:
        super().__init__(client, task_ids, single=False, kind="map")
        self.chunk_sizes = list(chunk_sizes)
        self.ordered = ordered

    def __len__(self) -> int:
        return sum(self.chunk_sizes)

    @property
    def progress(self) -> int:
        self._client.wait(self.task_ids, timeout=0)
        return sum(n for t, n in zip(self.task_ids, self.chunk_sizes) if t in self._client.results)

    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> list[Any]:
        chunks = super().get(timeout, return_exceptions)
        items: list[Any] = []
        for chunk, size in zip(chunks, self.chunk_sizes):
            # A failed chunk stands for each of its items.
            items.extend([chunk] * size if isinstance(chunk, BaseException) else chunk)
        return items

    def _items(self, task_id: str) -> list[Any]:
        value = self._client.results[task_id]
        if isinstance(value, BaseException):
            raise value
        return cast("list[Any]", value)  # a map chunk's result: the list of its items

    def __iter__(self) -> Iterator[Any]:
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
        super().__init__(client, [], single, kind)
        self._value = value

    def ready(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def successful(self) -> bool:
        return True

    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        return self._value

    @property
    def metadata(self) -> Any:
        return None if self._single else []


class AsyncJoinedResult(AsyncResult):
    """One value made from every target's answer once all have arrived: gather joins the
    parts, zip_pull regroups the values by name. ``join`` gets the answers in target order.
    """

    def __init__(self, client: Client, task_ids: list[str], join: Callable[[list[Any]], Any],
                 kind: str = "") -> None:
        super().__init__(client, task_ids, single=False, kind=kind)
        self._join = join

    def get(self, timeout: float | None = None, return_exceptions: bool = False) -> Any:
        """The joined value; with ``return_exceptions`` and a failed target, the answers
        unjoined (a failure cannot be joined).

        Raises:
            TimeoutError, RemoteError, CompositeError: as ``AsyncResult.get``.
        """
        answers = super().get(timeout, return_exceptions)
        if any(isinstance(a, BaseException) for a in answers):
            return answers
        return self._join(answers)
