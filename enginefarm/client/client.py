"""The Client: a connection to one cluster, its engines, and the results of its tasks.

A Client is meant for one thread (like ipyparallel's). It connects lazily on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from ..broker import Publisher
from ..broker.publisher import Outgoing
from ..broker.topology import declare_cluster
from ..config import Settings
from ..errors import BrokerError, InvalidEngineID, NoEnginesRegistered, PayloadTooLarge, RemoteError, SignatureError, StoreError
from ..names import Names
from ..protocol import new_id, seal
from ..recovery import Reaper
from ..buffers import is_packed, pack, unpack
from .blobowners import BlobOwners
from ..serialization import dumps_oob, loads, loads_oob
from ..task import Kind, TaskHeader, with_datetimes
from ..store import Stores, TaskOutput, TaskRecord
from ..store.records import ABORTED, COMPLETED, PENDING, NewTask, error_fields
from .asyncresult import AsyncResult, Metadata, MetadataStore
from .collector import Collector
from .farming import TaskFarming
from .hub import HubMethods, Jobs
from .signals import signal_number
from .targets import ViewKey, view_targets, wait_for_count
from .view import DirectView

log = logging.getLogger(__name__)

Targets = int | list[int] | tuple[int, ...] | str | None


class Client(TaskFarming, HubMethods):
    """Connects to a cluster by name; see ``Settings`` for where each argument comes from."""

    def __init__(
        self,
        cluster: str | None = None,
        amqp_url: str | None = None,
        redis_url: str | None = None,
        key_file: str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.load(
                cluster=cluster, amqp_url=amqp_url, redis_url=redis_url, key_file=key_file, **overrides
            )
        self.settings = settings
        self.names = Names(settings.cluster)
        self.client_id = new_id()
        # Views block unless told otherwise (seed 000's synchronous interface).
        self.block = True
        self.history: list[str] = []
        self.outstanding: set[str] = set()
        self.results: dict[str, Any] = {}
        self.blob_owners = BlobOwners()
        self._metadata = MetadataStore(metadata_of)
        self._connected = False
        self._ids_cache: tuple[float, list[int]] | None = None

    # --- connections ----------------------------------------------------------------
    def _connect(self) -> None:
        if self._connected:
            return
        s = self.settings
        stores = Stores.open(s)
        self.ring, self.registry, self.records, self.history_store, self.output_store, self.blobs = (
            stores.ring, stores.registry, stores.records, stores.history, stores.output, stores.blobs)
        self.publisher = Publisher(
            s.amqp_url,
            s.amqp_heartbeat_s,
            f"enginefarm-client-{s.cluster}",
            on_open=lambda channel: declare_cluster(channel, self.names),
            reconnect_window_s=s.reconnect_window_s,
        )
        self._connected = True
        # pika's connection belongs to the thread that opened it.
        self._home = threading.get_ident()
        self.collector = Collector(self)

    _LAZY = frozenset({"ring", "registry", "records", "history_store", "output_store", "publisher", "collector"})

    def __getattr__(self, name: str) -> Any:
        # Connections open on first use, whichever part of the client asks first.
        if name in Client._LAZY and not self.__dict__.get("_connected", False):
            self._connect()
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def close(self, confirm_timeout_s: float = 30.0) -> None:
        """Close the connections, once the broker has confirmed every message sent."""
        if self._connected:
            try:
                left = self.publisher.pump(wait_s=confirm_timeout_s)
                if left:
                    log.warning("closing with %d messages the broker never confirmed", left)
            except BrokerError as exc:
                log.warning("closing without the broker's last confirms: %s", exc)
            self.collector.stop()
            self.publisher.close()
            self.collector.join()
            self.registry.redis.close()
            self._connected = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- engines --------------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        """Ids of the engines alive now (heartbeat fresher than the engine timeout)."""
        self._connect()
        live = self.registry.live_ids()
        # What the caller just saw is what targets resolve to next: an engine seen gone is
        # never targeted from an older look-up.
        self._ids_cache = (time.monotonic(), live)
        return live

    def __len__(self) -> int:
        """How many engines are alive now."""
        return len(self.ids)

    def __iter__(self) -> Iterator[int]:
        """The ids of the engines alive now."""
        return iter(self.ids)

    def __bool__(self) -> bool:
        # A client is a client, engines or not: ``client or Client()`` must not reconnect.
        return True

    def __getitem__(self, key: ViewKey) -> DirectView:
        """``client[1]``, ``client[-1]``, ``client[:]``, ``client[::2]``, ``client[[0, 2]]``: a
        view on those engines, resolved against the live ids now.

        Raises:
            InvalidEngineID: an id not alive, an index out of range or a bad slice.
        """
        return DirectView(self, view_targets(key, self._recent_ids(), self.settings.cluster))

    def direct_view(self, targets: ViewKey | None = "all") -> DirectView:
        """A view for explicit, per-engine control over ``targets``; 'all' (the default)
        means the engines alive at each call, anything else is resolved now as by
        ``client[targets]`` (None: the engines alive now)."""
        if isinstance(targets, str) and targets == "all":
            return DirectView(self, "all")
        return self[slice(None) if targets is None else targets]

    def activate(self, targets: ViewKey = "all", suffix: str = "") -> DirectView:
        """A blocking view on ``targets``, with the %px magics registered on it in the running
        IPython: %px{suffix}, %%px{suffix}, %autopx{suffix}, %pxresult{suffix}, %pxconfig{suffix}.

        Raises:
            RuntimeError: no IPython shell is running.
        """
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view

    def wait_for_engines(self, n: int | None = None, *, timeout: float = -1) -> None:
        """Block until at least ``n`` engines are alive (``timeout`` negative: no limit).

        Raises:
            TimeoutError: fewer than ``n`` within ``timeout`` seconds.
            TypeError: no ``n`` (this client does not own the cluster: it cannot know how many).
        """
        def alive() -> int:
            # What it saw is what the next ``client[-1]`` resolves against.
            return len(self.ids)

        wait_for_count(alive, n, timeout, self.settings.cluster)

    def _recent_ids(self, max_age_s: float = 0.25) -> list[int]:
        """Live ids, read at most every ``max_age_s``: back-to-back calls share one look-up."""
        now = time.monotonic()
        if self._ids_cache is None or now - self._ids_cache[0] > max_age_s:
            return self.ids
        return self._ids_cache[1]

    def resolve_targets(self, targets: Targets) -> list[int]:
        """Turn a targets argument into a list of live engine ids.

        Raises:
            InvalidEngineID: a target is not an int, list of ints or 'all', or not registered.
            NoEnginesRegistered: targets='all' and no engine is alive.
        """
        live = self._recent_ids()
        if targets is None or targets == "all":
            if not live:
                raise NoEnginesRegistered(f"no engines are registered in cluster {self.settings.cluster!r}")
            return live
        if isinstance(targets, bool) or not isinstance(targets, (int, list, tuple)):
            raise InvalidEngineID(f"targets must be an int, a list of ints or 'all', not {targets!r}")
        wanted = [targets] if isinstance(targets, int) else list(targets)
        if not wanted:
            raise InvalidEngineID("targets is an empty list")
        for target in wanted:
            if isinstance(target, bool) or not isinstance(target, int):
                raise InvalidEngineID(f"engine ids are ints, not {target!r}")
            if target not in live:
                raise InvalidEngineID(
                    f"engine {target} is not registered in cluster {self.settings.cluster!r} (ids: {live})"
                )
        return wanted

    def engine_queue_status(self, engine_id: int) -> dict[str, Any]:
        """Tasks routed to ``engine_id`` and not finished, and those it is running (a fast
        engine claims the next few of a batch together)."""
        self._connect()
        running = self.registry.running(engine_id)
        waiting = len(self.registry.pending(engine_id) - set(running))
        return {"engine_id": engine_id, "queue": waiting, "running": running}

    def clear_engine_queue(self, engine_id: int) -> int:
        """Abort every task still waiting for ``engine_id``; returns how many were aborted."""
        self._connect()
        error = error_fields("TaskAborted", f"cleared from engine {engine_id}'s queue before it ran")
        aborted = 0
        for task_id in sorted(self.registry.pending(engine_id)):
            if self.records.fail(task_id, error, allowed=(PENDING,), status=ABORTED):
                aborted += 1
        return aborted

    # --- sending --------------------------------------------------------------------
    def send_signal(self, signum: int | str, targets: Targets = None, block: bool | None = None) -> Any:
        """Send a signal to each target engine's process at once: it does not wait behind
        the task an engine is running. SIGINT interrupts that task with KeyboardInterrupt
        (it fails; the namespace and the engine go on); other signals act as they do on any
        process (SIGTERM or SIGKILL end it: a task it was running fails with
        EngineProcessDied and the namespace is lost). Each target's outcome is recorded
        once its engine has sent the signal (failed if it had no process to send it to).

        Args:
            signum: a signal number or name ('SIGINT').
            targets: engine ids (int, list of ints) or 'all' (None: 'all').
            block: wait for every engine's outcome (default: ``self.block``); else return
                the AsyncResult of the signals.

        Raises:
            ValueError: ``signum`` is not a signal (nothing is published).
            InvalidEngineID, NoEnginesRegistered: as for any targeted command.
        """
        number = signal_number(signum)
        engine_ids = self.resolve_targets(targets)
        blocking = self.block if block is None else block
        task_ids = self.send_direct(Kind.SIGNAL.value, None, engine_ids, {"signum": number}, confirm=not blocking)
        result = AsyncResult(self, task_ids, isinstance(targets, int), Kind.SIGNAL.value)
        return result.get() if blocking else result

    def send_direct(
        self,
        kind: str,
        request: Any,
        engine_ids: list[int],
        header: dict[str, Any] | None = None,
        what: str = "",
        confirm: bool = True,
    ) -> list[str]:
        """Publish one command to each engine in ``engine_ids``; returns the task ids once
        the broker has confirmed them (``confirm=False``: once it has them, for a caller that
        waits for the results next and so takes the confirms then).

        Raises:
            SerializationError: ``request`` cannot be pickled (nothing is published).
            InvalidEngineID: a target is not a registered engine. (One that leaves between
                this check and the message's routing fails the task with EngineLost.)
        """
        self._connect()
        payload = self.pickle_request(request, what or f"the {kind} request") if request is not None else b""
        return self._send_sealed(kind, payload, engine_ids, header, confirm)

    def send_direct_each(
        self,
        kind: str,
        requests: Sequence[tuple[int, Any]],
        what: str = "",
        confirm: bool = True,
    ) -> list[str]:
        """Publish one command per ``(engine_id, request)``, each engine its own request
        (scatter's parts, map's slices); returns the task ids in that order. Every request is
        pickled before any is published, so a failure leaves nothing half sent.

        Raises:
            SerializationError, PayloadTooLarge: a request cannot be sent (nothing is published).
        """
        self._connect()
        payloads = [(engine_id, self.pickle_request(request, what or f"the {kind} request"))
                    for engine_id, request in requests]
        for _, payload in payloads:
            self.check_size(payload, f"the {kind} request")
        return self._send_sealed_each(kind, payloads, None, confirm)

    def unpickle_value(self, payload: bytes, what: str, take: bool = False) -> Any:
        """A verified payload's value, its out-of-band buffers read back and checked (and,
        with ``take``, removed from the store once the value is made).

        Raises:
            SerializationError, DataExpired, SignatureError, StoreError.
        """
        if not is_packed(payload):
            return loads(payload, what)
        refs, stream = unpack(payload)
        value = loads_oob(stream, self.blobs.fetch(refs, what), what)
        if take:
            self.blobs.forget(refs)
        return value

    def pickle_request(self, request: Any, what: str) -> bytes:
        """Pickle a request; its large buffers are stored first, out of band, and the
        payload names them (see enginefarm.buffers).

        Raises:
            SerializationError, PayloadTooLarge: it cannot be sent (nothing is published).
        """
        pickled = dumps_oob(request, what)
        if not pickled.buffers:
            return pickled.stream
        return pack(self.blobs.put(pickled.buffers, what), pickled.stream)

    def check_size(self, payload: bytes, what: str) -> None:
        """Raises: PayloadTooLarge before anything is recorded or published."""
        cap = self.settings.max_message_bytes
        if len(payload) > cap:
            raise PayloadTooLarge(f"{what} is {len(payload):,} bytes pickled, over the cluster's cap of "
                                  f"{cap:,} bytes (max_message_bytes); send a reference to the data instead")

    def _send_sealed(self, kind: str, payload: bytes, engine_ids: list[int],
                     header: dict[str, Any] | None = None, confirm: bool = True) -> list[str]:
        self.check_size(payload, f"the {kind} request")
        return self._send_sealed_each(kind, [(e, payload) for e in engine_ids], header, confirm)

    def _send_sealed_each(self, kind: str, payloads: list[tuple[int, bytes]],
                          header: dict[str, Any] | None = None, confirm: bool = True) -> list[str]:
        tasks, bodies = [], []
        for engine_id, payload in payloads:
            task_id = new_id()
            head = TaskHeader.decode({
                "task_id": task_id, "kind": kind, "client_id": self.client_id,
                "engine_id": engine_id, **(header or {}),
            })
            body = seal(self.ring, head.encode(), payload)
            tasks.append(NewTask(task_id, kind, self.client_id, body, engine_id))
            self.blob_owners.hold(task_id, payload)
            bodies.append(body)
        self.records.create(tasks, wait=False)
        self.collector.start()
        self.history.extend(t.task_id for t in tasks)
        self.outstanding.update(t.task_id for t in tasks)
        # Signals go to the engine's control queue, so they need not wait behind its tasks.
        route = self.names.control_routing_key if kind == Kind.SIGNAL else self.names.engine_routing_key
        try:
            self.publisher.send([
                # Each task was made for one of the engine ids, an int; mypy infers no type for a
                # lambda with a default argument, so the callback's is spelled out.
                Outgoing(self.names.direct_exchange, route(cast(int, task.engine_id)), body,
                         on_return=cast("Callable[[], None]", lambda task=task: self._engine_gone(task)))
                for task, body in zip(tasks, bodies)
            ], confirm=confirm)
        finally:
            self.records.created()
        return [t.task_id for t in tasks]

    def _engine_gone(self, task: NewTask) -> None:
        """The broker could not route a task: its engine left after the targets were checked."""
        log.warning("engine %s left before task %s reached it", task.engine_id, task.task_id)
        error = error_fields("EngineLost", f"engine {task.engine_id} left before the task reached it")
        self.records.fail(task.task_id, error, allowed=(PENDING,))

    # --- results --------------------------------------------------------------------
    def wait(self, jobs: Jobs = None, timeout: float = -1, any_of: bool = False,
             return_when: str | None = None) -> bool:
        """Wait until the given task ids (default: all outstanding) have finished.

        ``return_when`` is one of ``concurrent.futures``' constants: ALL_COMPLETED (the
        default), FIRST_COMPLETED (as ``any_of``) or FIRST_EXCEPTION (until one fails or
        all finished).

        Returns:
            True when the condition holds, False when ``timeout`` seconds (negative or None:
            no limit) ran out first.
        """
        self._connect()
        wanted = set(self.outstanding if jobs is None else self.task_ids_of(jobs))
        any_of = any_of or return_when == futures.FIRST_COMPLETED
        first_error = return_when == futures.FIRST_EXCEPTION
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        collector = self.collector
        if collector.on_thread:
            raise RuntimeError("a done-callback cannot wait for results: it runs on the client's result "
                               "thread, which takes them in (wait in your own thread instead)")
        with collector.lock:
            # Registered under the same hold that reads the results: an outcome taken in
            # after this is struck from ``missing`` by the result thread.
            missing = {t for t in wanted if t not in self.results}
            collector.watching(missing)
        foreign = missing - self.outstanding
        poll_s, next_poll = 0.02, 0.0
        try:
            while True:
                if foreign and time.monotonic() >= next_poll:
                    # Other clients' tasks (and ours taken in before, then forgotten) never
                    # reach our inbox: read their statuses.
                    foreign &= missing
                    try:
                        self._absorb_finished(sorted(foreign))
                    except StoreError as exc:
                        log.warning("waiting for Redis: %s", exc)
                    next_poll = time.monotonic() + poll_s
                    poll_s = min(poll_s * 2, 0.5)
                # Confirms and returns are read on this thread (the broker connection's).
                confirming = self._pump()
                with collector.lock:
                    if (not missing or (any_of and len(missing) < len(wanted))
                            or (first_error and any(isinstance(self.results.get(t), BaseException)
                                                    for t in wanted - missing))):
                        return True
                    now = time.monotonic()
                    remaining = None if deadline is None else deadline - now
                    if remaining is not None and remaining <= 0:
                        return False
                    step = 0.2 if remaining is None else min(0.2, remaining)
                    if foreign:
                        step = max(min(step, next_poll - now), 0.0)
                    if not confirming and step > 0:
                        # Checked and waited under one hold of the lock: no arrival slips between.
                        collector.arrived.wait(step)
                if confirming:
                    self._pump(min(step, 0.05))
        finally:
            collector.unwatch(missing)

    def _pump(self, wait_s: float = 0.0) -> int:
        """Take in the broker's confirms and returns, on the thread that owns its connection
        (elsewhere: nothing to do, that thread takes them); returns how many are awaited."""
        if threading.get_ident() != self._home:
            return 0
        return self.publisher.pump(wait_s=wait_s)

    def wait_interactive(self, jobs: Jobs = None, interval: float = 1.0, timeout: float = -1,
                         return_when: str = futures.ALL_COMPLETED) -> bool:
        """``wait`` with a progress bar (a widget in Jupyter, a text bar on a terminal)."""
        self._connect()
        ids = list(self.outstanding) if jobs is None else self.task_ids_of(jobs)
        return AsyncResult(self, ids).wait_interactive(interval, timeout, return_when=return_when)

    def spin(self) -> None:
        """Take in every result that has arrived, without waiting."""
        self._connect()
        self._absorb_inbox(self.records.pop_inbox(self.client_id, 0.0))

    def _absorb_finished(self, task_ids: list[str]) -> None:
        statuses = self.records.statuses(task_ids)
        self._absorb([t for t, s in zip(task_ids, statuses) if s in ("completed", "failed", "aborted")])

    def _absorb_inbox(self, entries: list[tuple[str, TaskRecord | None]]) -> None:
        """Take in what the inbox brought: finished records, and ids whose record is read."""
        self._absorb([t for t, record in entries if record is None],
                     [record for _, record in entries if record is not None])

    def _absorb(self, task_ids: list[str], records: list[TaskRecord] | None = None) -> None:
        fresh = [t for t in dict.fromkeys(task_ids) if t not in self.results]
        read = self.records.get_many(fresh, with_request=False) if fresh else []
        taken: list[str] = []
        with self.collector.lock:
            for record in [*(records or []), *read]:
                if record is not None and record.done and record.task_id not in self.results:
                    taken.append(record.task_id)
                    self.results[record.task_id] = self._value_of(record, own=record.client_id == self.client_id)
                    record.result = None  # only its metadata is kept
                    self._metadata.put_record(record.task_id, record)
                    self.outstanding.discard(record.task_id)
            complete = self.collector.arrivals(taken) if taken else []
        freed = self.blob_owners.release(taken)
        if freed:
            self.blobs.forget(freed)
        # Outside the lock: done-callbacks run user code, which may ask this client things.
        for result in complete:
            result._settle()

    def _track(self, result: AsyncResult) -> None:
        """Settle ``result`` (a future) once every one of its tasks has an outcome."""
        self._connect()
        if self.collector.track(result, result.task_ids):
            result._settle()

    @property
    def reaper(self) -> Reaper:
        return self.collector.reaper

    def _value_of(self, record: TaskRecord, own: bool = False) -> Any:
        """The value or error of a finished record. ``own``: the result is this client's to
        take, and its out-of-band buffers leave the store once read (this client keeps the
        value)."""
        if record.invalid:
            return RemoteError("DecodeError", f"the record of task {record.task_id} does not decode: {record.invalid}",
                               task_id=record.task_id)
        if record.status == COMPLETED:
            try:
                return self.unpickle_value(self.records.open_value(record.task_id, "result", record.result or b""),
                                           "the result", take=own)
            except SignatureError as exc:
                return SignatureError(exc.reason, f"result of task {record.task_id} refused: {exc}")
            except Exception as exc:
                return exc
        error = dict(record.error or error_fields("UnknownError", "the task failed without an error"))
        error.setdefault("engine_id", record.engine_id)
        error["task_id"] = record.task_id
        return RemoteError.from_dict(error)

    def live_output(self, task_ids: list[str], offsets: Sequence[tuple[int, int]] | None = None) -> list[TaskOutput]:
        """Each task's status and output, in one round trip: a finished task's from its
        record, a running one's as printed so far (after ``offsets``: the live bytes of
        stdout and stderr already read), see ``enginefarm.store.output``.

        Raises:
            StoreError: Redis failed.
        """
        self._connect()
        return self.output_store.read(task_ids, offsets)

    def metadata_for(self, task_id: str) -> Metadata:
        if task_id not in self._metadata:
            self._connect()
            record = self.records.get(task_id)
            return metadata_of(record) if record else Metadata(task_id=task_id)
        return self._metadata[task_id]

    def metadata_for_many(self, task_ids: list[str]) -> list[Metadata]:
        return [self.metadata_for(t) for t in task_ids]

    @property
    def metadata(self) -> MetadataStore:
        return self._metadata


def metadata_of(record: TaskRecord) -> Metadata:
    """ipyparallel's metadata: moments as timezone-aware datetimes."""
    values = {key: getattr(record, key) for key in Metadata.KEYS}
    return Metadata(**with_datetimes(values))
