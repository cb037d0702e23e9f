"""DirectView: explicit control of chosen engines (seed 000's MultiEngine).

Every method takes ``targets`` (int, list of ints or 'all'; default the view's) and
``block`` (default the view's, then the client's). Blocking calls return one entry per
target in target order, or the bare value when the targets are a single int.

Data movement follows ipyparallel: ``scatter``/``gather`` split and join a sequence over
the targets, ``map`` runs one share per target, ``view['x']`` pulls and ``view['x'] = v``
pushes (see ``partition`` for how sequences are split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..chunks import call_map
from . import partition
from .asyncresult import AsyncJoinedResult, AsyncMapResult, AsyncResult, LocalResult

if TYPE_CHECKING:
    from .remotefunction import ParallelFunction, RemoteFunction
    from .client import Client, Targets
    from .syncimports import SyncImports
    from .viewexecutor import ViewExecutor

_UNSET: Any = object()


class DirectView:
    def __init__(self, client: Client, targets: Targets = "all", block: bool | None = None) -> None:
        self.client = client
        self.targets = targets
        self.block = block

    def __repr__(self) -> str:
        return f"<DirectView targets={self.targets!r}>"

    def __len__(self) -> int:
        """How many engines the view targets ('all': how many are alive now)."""
        if isinstance(self.targets, int):
            return 1
        if self.targets is None or self.targets == "all":
            return len(self.client.ids)
        return len(self.targets)

    def __bool__(self) -> bool:
        # A view is a view even while 'all' has no engines (and truth needs no round trip).
        return True

    # --- plumbing -------------------------------------------------------------------
    def _plan(self, targets: Targets) -> tuple[list[int], bool]:
        chosen = self.targets if targets is _UNSET or targets is None else targets
        return self.client.resolve_targets(chosen), isinstance(chosen, int)

    def _block(self, block: bool | None) -> bool:
        if block is not None:
            return block
        return self.block if self.block is not None else self.client.block

    def _send(
        self,
        kind: str,
        request: Any,
        targets: Targets,
        block: bool | None,
        header: dict[str, Any] | None = None,
        what: str = "",
        stream: bool = False,
    ) -> Any:
        engine_ids, single = self._plan(targets)
        blocking = stream or self._block(block)
        task_ids = self.client.send_direct(kind, request, engine_ids, header, what, confirm=not blocking)
        result = AsyncResult(self.client, task_ids, single, kind)
        if stream:
            result.stream_outputs()
        return result.get() if blocking else result

    def _local(self, targets: Targets, block: bool | None, fn: Callable[[int], Any], kind: str) -> Any:
        engine_ids, single = self._plan(targets)
        values = [fn(engine_id) for engine_id in engine_ids]
        value = values[0] if single else values
        return value if self._block(block) else LocalResult(self.client, value, single, kind)

    # --- code and namespace ---------------------------------------------------------
    def execute(self, code: str, targets: Targets = _UNSET, block: bool | None = None,
                stream: bool = False) -> Any:
        """Run ``code`` in each target's namespace; output lands in the metadata. With
        ``stream``, blocks and prints the output as it arrives (``stream_outputs``)."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a string, not {type(code).__name__}")
        return self._send("execute", code, targets, block, stream=stream)

    def run(self, filename: str, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Execute the contents of a local file on the targets."""
        with open(filename, encoding="utf-8") as handle:
            # A last line that is indented whitespace without a newline would not compile.
            return self.execute(handle.read() + "\n", targets, block)

    def apply(self, f: Callable[..., Any], *args: Any, targets: Targets = _UNSET,
              block: bool | None = None, stream: bool = False, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` on each target. With ``stream``, blocks and prints the
        output as it arrives (``stream_outputs``), then returns the result.

        ``targets``, ``block`` and ``stream`` are taken by the view; to pass arguments of
        those names to ``f``, use ``apply_request``.
        """
        return self.apply_request(f, args, kwargs, targets=targets, block=block, stream=stream)

    def apply_sync(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.apply_request(f, args, kwargs, block=True)

    def apply_async(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
        return cast(AsyncResult, self.apply_request(f, args, kwargs, block=False))

    def apply_request(self, f: Callable[..., Any], args: tuple[Any, ...] = (),
                      kwargs: dict[str, Any] | None = None,
                      targets: Targets = _UNSET, block: bool | None = None, stream: bool = False) -> Any:
        if not callable(f):
            raise TypeError(f"{f!r} is not callable")
        return self._send("apply", (f, tuple(args), dict(kwargs or {})), targets, block,
                          what=f"function {getattr(f, '__qualname__', f)!r} or its arguments", stream=stream)

    def push(self, namespace: dict[str, Any], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Update each target's namespace with ``namespace``."""
        if not isinstance(namespace, dict):
            raise TypeError("push takes a dict of names to values")
        return self._send("push", namespace, targets, block, what=_what(namespace))

    def pull(self, names: str | list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Values of ``names`` (a name or a list of names) from each target."""
        return self._send("pull", names, targets, block)

    def push_function(self, namespace: dict[str, Callable[..., Any]], targets: Targets = _UNSET,
                      block: bool | None = None) -> Any:
        return self._send("push_function", namespace, targets, block, what=_what(namespace))

    def pull_function(self, names: str | list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._send("pull_function", names, targets, block)

    def get_result(self, i: int | None = None, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """The i-th (default: last) executed command on each target: input, stdout, stderr."""
        return self._send("get_result", i, targets, block)

    def reset(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Clear each target's namespace."""
        return self._send("reset", None, targets, block)

    def keys(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Names defined in each target's namespace."""
        return self._send("keys", None, targets, block)

    def send_signal(self, signum: int | str, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Send a signal to each target engine's process at once (see ``Client.send_signal``)."""
        chosen = self.targets if targets is _UNSET or targets is None else targets
        return self.client.send_signal(signum, chosen, self._block(block))

    def kill(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Stop the target engines once the commands queued before this one have run."""
        return self._send("kill", None, targets, block)

    def push_serialized(self, namespace: dict[str, bytes], targets: Targets = _UNSET,
                        block: bool | None = None) -> Any:
        """Like push, for values already serialized with ``enginefarm.serialization.dumps``:
        the bytes travel as they are and each engine loads them.

        Raises:
            TypeError: a value is not bytes (nothing is sent).
        """
        if not isinstance(namespace, dict):
            raise TypeError("push_serialized takes a dict of names to serialized bytes")
        for name, data in namespace.items():
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"push_serialized takes bytes from serialization.dumps; {name!r} is "
                                f"{type(data).__name__}")
        return self._send("push_serialized", namespace, targets, block, what=_what(namespace))

    def pull_serialized(self, names: str | list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Like pull, but each value comes back as ``serialization.dumps`` bytes, not loaded
        (to pass on, store or load later with ``serialization.loads``)."""
        return self._send("pull_serialized", names, targets, block)

    def zip_pull(self, keys: str | Sequence[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Seed 000's ``zip_pull``: per name, a tuple of its value on each target, in target
        order: ``[(a_on_0, a_on_1), (b_on_0, b_on_1)]``. One pull of all names per engine."""
        names = [keys] if isinstance(keys, str) else list(keys)
        engine_ids, _ = self._plan(targets)
        blocking = self._block(block)
        task_ids = self.client.send_direct("pull", names, engine_ids, confirm=not blocking)
        result = AsyncJoinedResult(self.client, task_ids, lambda answers: list(zip(*answers)), "zip_pull")
        return result.get() if blocking else result

    # --- dictionary access (ipyparallel) ------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        """``view['x']``: pull ``x``, blocking (the bare value on a view of one int)."""
        if not isinstance(key, str):
            raise TypeError(f"a view is indexed by a name, not {key!r}")
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        """``view['x'] = v``: push ``x``, blocking."""
        if not isinstance(key, str):
            raise TypeError(f"a view is indexed by a name, not {key!r}")
        self.push({key: value}, block=True)

    def get(self, key_s: str | list[str]) -> Any:
        """Pull, blocking."""
        return self.pull(key_s, block=True)

    def update(self, ns: dict[str, Any]) -> Any:
        """Push ``ns`` (blocking as the view does)."""
        return self.push(ns)

    def clear(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Reset the targets' namespaces (ipyparallel's ``DirectView.clear``; ``Client.clear``
        without targets forgets held results instead)."""
        return self.reset(targets, block)

    # --- scatter, gather, map -----------------------------------------------------------
    def scatter(self, key: str, seq: Any, dist: str = "b", flatten: bool = False,
                targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Split ``seq`` over the targets and push part i to target i as ``key``.

        ``dist`` 'b': contiguous parts, the first ``len(seq) % n`` one item longer; 'r':
        target i gets ``seq[i::n]``. With ``flatten``, a part of one item is pushed as that
        item. Blocking: returns None once every part is in place; else an AsyncResult.

        Raises:
            ValueError: an unknown ``dist`` (nothing is sent).
        """
        partition.check_dist(dist)
        engine_ids, _ = self._plan(targets)
        parts = partition.split(seq, len(engine_ids), dist)
        requests = [(e, {key: partition.flattened(p, flatten)}) for e, p in zip(engine_ids, parts)]
        blocking = self._block(block)
        task_ids = self.client.send_direct_each("push", requests, f"a part of {key!r}", confirm=not blocking)
        result = AsyncResult(self.client, task_ids, kind="scatter")
        if blocking:
            result.get()
            return None
        return result

    def gather(self, key: str, dist: str = "b", targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Pull ``key`` from every target and join the parts: the inverse of ``scatter``.

        Arrays come back as one array, other sequences as one list (see ``partition.join``).
        """
        partition.check_dist(dist)
        engine_ids, _ = self._plan(targets)
        blocking = self._block(block)
        task_ids = self.client.send_direct("pull", key, engine_ids, confirm=not blocking)
        result = AsyncJoinedResult(self.client, task_ids, lambda parts: partition.join(parts, dist), "gather")
        return result.get() if blocking else result

    def map(self, f: Callable[..., Any], *sequences: Iterable[Any], block: bool | None = None,
            return_exceptions: bool = False) -> Any:
        """``list(map(f, *sequences))``, one contiguous share per target (the block rule of
        ``scatter``), results in input order. Non-blocking: an AsyncMapResult (iterate it)."""
        if not callable(f):
            raise TypeError(f"{f!r} is not callable")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        seqs = [partition.sized(s) for s in sequences]
        length = min(len(s) for s in seqs)  # as builtin map: the shortest sequence decides
        engine_ids, _ = self._plan(_UNSET)
        requests: list[tuple[int, Any]] = []
        sizes: list[int] = []
        for index, engine_id in enumerate(engine_ids):
            low, high = partition.block_bounds(length, index, len(engine_ids))
            if high > low:
                parts = [partition.part(s, index, len(engine_ids), length=length) for s in seqs]
                requests.append((engine_id, (call_map, (f, *parts), {})))
                sizes.append(high - low)
        blocking = self._block(block)
        what = f"function {getattr(f, '__qualname__', f)!r} or its arguments"
        task_ids = self.client.send_direct_each("apply", requests, what, confirm=not blocking) if requests else []
        result = AsyncMapResult(self.client, task_ids, sizes)
        return result.get(return_exceptions=return_exceptions) if blocking else result

    def map_sync(self, f: Callable[..., Any], *sequences: Iterable[Any], **kwargs: Any) -> list[Any]:
        return cast("list[Any]", self.map(f, *sequences, block=True, **kwargs))

    def map_async(self, f: Callable[..., Any], *sequences: Iterable[Any], **kwargs: Any) -> AsyncMapResult:
        return cast(AsyncMapResult, self.map(f, *sequences, block=False, **kwargs))

    # --- properties (kept in Redis) ---------------------------------------------------
    def set_properties(self, properties: dict[str, Any], targets: Targets = _UNSET,
                       block: bool | None = None) -> Any:
        """Merge JSON-serializable ``properties`` into each target's properties."""
        return self._local(targets, block, lambda e: self.client.registry.set_properties(e, properties),
                           "set_properties")

    def get_properties(self, keys: list[str] | None = None, targets: Targets = _UNSET,
                       block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.get_properties(e, keys),
                           "get_properties")

    def has_properties(self, keys: list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.has_properties(e, list(keys)),
                           "has_properties")

    def del_properties(self, keys: list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.del_properties(e, list(keys)),
                           "del_properties")

    def clear_properties(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.clear_properties(e),
                           "clear_properties")

    # --- queues ---------------------------------------------------------------------
    def queue_status(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """For each target: tasks waiting for it and the tasks it has claimed (running)."""
        return self._local(targets, block, self.client.engine_queue_status, "queue_status")

    def clear_queue(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Abort every task waiting for the targets; the running one finishes."""
        return self._local(targets, block, self.client.clear_engine_queue, "clear_queue")

    def abort(self, jobs: Any = None, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Abort tasks that have not started: ``jobs`` (ids or AsyncResults), or every task
        this client has outstanding on the targets. True for each task aborted."""
        if jobs is not None:
            return self.client.abort(jobs)
        engine_ids, _ = self._plan(targets)
        mine = sorted(self.client.outstanding)
        held = [r.task_id for r in self.client.records.get_many(mine, with_request=False)
                if r is not None and r.engine_id in engine_ids and not r.done]
        return self.client.abort(held)

    def activate(self, suffix: str = "") -> None:
        """Register the %px magics on this view in the running IPython (``Client.activate``).

        Raises:
            RuntimeError: no IPython shell is running.
        """
        from ..ipython import activate

        activate(self, suffix)

    def get_ids(self) -> list[int]:
        return self.client.ids

    def remote(self, block: bool | None = None, **flags: Any) -> Callable[[Callable[..., Any]], RemoteFunction]:
        """``@view.remote(block=True)``: calling the function runs it through this view."""
        from .remotefunction import remote

        return remote(self, block, **flags)

    def parallel(self, dist: str = "b", block: bool | None = None,
                 **flags: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
        """``@view.parallel(block=True)``: calling the function runs it on parts of its sequences."""
        from .remotefunction import parallel

        return parallel(self, dist, block, **flags)

    def executor(self) -> ViewExecutor:
        """A ``concurrent.futures.Executor`` that runs each call on every engine of this view."""
        from .viewexecutor import ViewExecutor

        return ViewExecutor(self)

    def sync_imports(self, local: bool = True, quiet: bool = False) -> SyncImports:
        """``with view.sync_imports():`` imports in the block happen here and on the targets."""
        from .syncimports import SyncImports

        return SyncImports(self, local, quiet)


def _what(namespace: dict[str, Any]) -> str:
    return "value(s) for " + ", ".join(repr(k) for k in list(namespace)[:5])
