"""Connecting to Redis (one server, the primary Redis Sentinel names, or a Redis Cluster), and
turning redis-py errors into StoreError."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis
import redis.exceptions
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import REDIS_CLUSTER_SCHEMES, SENTINEL_SCHEME, parse_sentinel_url, url_scheme
from ..errors import ReplicationError, StoreError
from .outages import retry_for
from .sharded import REDIRECTED, connect_sharded, pool_for

UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)
# How long one sentinel may take to answer where the primary is before the next is asked.
SENTINEL_TIMEOUT_S = 1.0


def connect(url: str, retry_window_s: float = 30.0) -> redis.Redis:
    """A client for ``url``: one server (``redis://``, ``rediss://``, ``unix://``), the primary
    of a Sentinel deployment (``redis+sentinel://``) or a Redis Cluster
    (``redis+cluster://host:port,host:port``, see ``sharded``). A single server's connections
    open lazily from a thread-safe pool.

    A command that meets a broken connection is retried with backoff for about
    ``retry_window_s`` (a Redis restart, or a Sentinel failover: a connection to a primary
    that died or was demoted breaks, and the next one goes where the sentinels say). Every
    enginefarm write is safe to repeat: state changes are guarded scripts, and a lost pop is
    made good by reading statuses.

    Raises:
        StoreError: a Redis Cluster did not answer (it is asked for its layout at once).
    """
    if url_scheme(url) in REDIS_CLUSTER_SCHEMES:
        return connect_sharded(url, retry_window_s)
    options: dict[str, Any] = dict(
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=retry_for(retry_window_s),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )
    return _OPENERS.get(url_scheme(url), _open_server)(url, options)


def _open_server(url: str, options: dict[str, Any]) -> redis.Redis:
    """redis://, rediss://, unix://: one server."""
    return redis.Redis.from_url(url, **options)


class _SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """Asks the sentinels where the primary is on every reconnect. redis-py's own class asks
    only in ``connect()``, but a command's retry reconnects through ``send_packed_command``,
    which would dial the dead or demoted server again for the whole retry window."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _Sentinels(redis.sentinel.Sentinel):
    """Believes the sentinel with the newest configuration, not the first that answers.

    redis-py takes the first sentinel whose primary looks healthy. Right after a failover a
    sentinel that has not heard of it yet still names the old primary, and once that server is
    restarted (an empty primary until the sentinels demote it) it looks healthy: clients
    sent there would write into a dataset about to be thrown away. Each failover raises the
    configuration epoch, so the highest epoch among the sentinels that answer names the
    primary in force."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        best: tuple[int, tuple[str, int]] | None = None
        errors = []
        for sentinel in self.sentinels:
            try:
                masters = sentinel.sentinel_masters()
                state = masters.get(service_name) if isinstance(masters, dict) else None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                epoch = int(state.get("config-epoch", 0))
                if best is None or epoch > best[0]:
                    best = (epoch, (str(state["ip"]), int(state["port"])))
        if best is None:
            raise redis.sentinel.MasterNotFoundError(
                f"no sentinel names a healthy primary for {service_name!r}" + (f": {'; '.join(errors)}" if errors else ""))
        return best[1]


def _open_sentinel(url: str, options: dict[str, Any]) -> redis.Redis:
    """redis+sentinel://: the primary the sentinels name, looked up again on every new
    connection. A connection that finds its server demoted (READONLY) is dropped by redis-py's
    SentinelConnectionPool as a ConnectionError, which the retry above covers."""
    where = parse_sentinel_url(url)
    # A sentinel that is down is skipped at once, not retried: the next one answers.
    sentinel_options = dict(socket_connect_timeout=SENTINEL_TIMEOUT_S, socket_timeout=SENTINEL_TIMEOUT_S,
                            retry=Retry(NoBackoff(), 0))
    # redis-py's sentinel module is typed from 8.2 only: called through Any, it type-checks
    # the same with every release the dependency allows.
    factory: Any = _Sentinels
    sentinels = factory(list(where.sentinels), sentinel_kwargs=sentinel_options, **options)
    client: redis.Redis = sentinels.master_for(
        where.service, db=where.db, username=where.username, password=where.password,
        connection_class=_SentinelConnection)
    return client


# URL scheme -> how to open it; a scheme not listed is one server.
_OPENERS: dict[str, Callable[[str, dict[str, Any]], redis.Redis]] = {SENTINEL_SCHEME: _open_sentinel}


@dataclass(frozen=True)
class ReplicaWait:
    """What a write waits for before it counts as done: ``replicas`` replicas confirming it
    (Redis WAIT) within ``timeout_s``. WAIT cannot run inside a script; it is sent right
    after one, on the same connection (WAIT covers what that connection wrote)."""

    replicas: int
    timeout_s: float

    def command(self) -> tuple[Any, ...]:
        return ("WAIT", self.replicas, max(1, int(self.timeout_s * 1000)))

    def check(self, acked: Any) -> None:
        """Raises: ReplicationError when fewer replicas confirmed than asked."""
        if int(acked) < self.replicas:
            raise ReplicationError(f"a write reached {int(acked)} of the {self.replicas} replicas asked for "
                                   f"within {self.timeout_s:g}s (redis_min_replicas)")


class _HeldConnection(Protocol):
    """What ``HeldScript`` uses of a pooled redis-py connection (whose methods are untyped)."""

    def send_command(self, *args: Any) -> None: ...

    def send_packed_command(self, command: Any) -> None: ...

    def pack_commands(self, commands: list[tuple[Any, ...]]) -> Any: ...

    def read_response(self) -> Any: ...

    def disconnect(self) -> None: ...


class HeldScript:
    """A Lua script run over a connection each thread keeps for it, skipping the pool on every
    call (the hot path of engines). With ``replicas``, each call is followed by WAIT in the
    same round trip, and a call confirmed by too few replicas raises ReplicationError.

    A broken connection (a restart, a failover, a demoted primary) is dropped and the call made
    again with the client's retry and backoff: the next connection goes where the client's
    pool says (for Sentinel, the primary the sentinels name now). A missing script is loaded.
    The first key of every call says which server runs it: on a Redis Cluster, the primary
    serving that key's slot (every key of a call shares the cluster's hash tag); a redirection
    (the slot moving) is left to RedisCluster's own path, which follows it."""

    def __init__(self, client: redis.Redis, source: str, replicas: ReplicaWait | None = None) -> None:
        self.client = client
        self.script = client.register_script(source)
        self.replicas = replicas if replicas is not None and replicas.replicas > 0 else None
        # RedisCluster keeps its Retry as an attribute; redis.Redis hands it out.
        get_retry = getattr(client, "get_retry", None)
        retry = get_retry() if get_retry is not None else getattr(client, "retry", None)
        self._retry: Retry = retry or Retry(NoBackoff(), 0)
        self._local = threading.local()

    def _conn(self, key: str) -> _HeldConnection:
        pool = pool_for(self.client, key)
        held = getattr(self._local, "held", None)
        if held is not None:
            if held[0] is pool:
                return cast(_HeldConnection, held[1])
            held[0].release(held[1])  # the slot moved to another node
        conn = pool.get_connection()
        self._local.held = (pool, conn)
        return cast(_HeldConnection, conn)

    def _broken(self, _error: BaseException | None = None) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            held[1].disconnect()  # the next command connects afresh

    def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        self.collect()
        try:
            return self._retry.call_with_retry(lambda: self._run(keys, args), self._broken)
        except REDIRECTED:
            return self._redirected(keys, args)

    def _redirected(self, keys: list[Any], args: list[Any]) -> Any:
        """The call made through the client's own path, which follows a moved slot."""
        reply = self.script(keys=keys, args=args)
        if self.replicas is not None:
            self.replicas.check(cast(Any, self.client).execute_command(*self.replicas.command()))
        return reply

    def _run(self, keys: list[Any], args: list[Any]) -> Any:
        return self._read(self._send(keys, args), keys, args)

    def _send(self, keys: list[Any], args: list[Any]) -> _HeldConnection:
        conn = self._conn(keys[0])
        commands: list[tuple[Any, ...]] = [("EVALSHA", self.script.sha, len(keys), *keys, *args)]
        if self.replicas is not None:
            commands.append(self.replicas.command())
        conn.send_packed_command(conn.pack_commands(commands))
        return conn

    def _read(self, conn: _HeldConnection, keys: list[Any], args: list[Any]) -> Any:
        """The replies of one ``_send``, all of them, so the connection owes none after."""
        try:
            reply = conn.read_response()
        except redis.exceptions.NoScriptError:
            self._read_wait(conn, check=False)
            conn.send_command("SCRIPT", "LOAD", self.script.script)
            conn.read_response()
            return self._run(keys, args)
        except redis.exceptions.ResponseError:
            self._read_wait(conn, check=False)
            raise
        self._read_wait(conn, check=True)
        return reply

    def _read_wait(self, conn: _HeldConnection, check: bool) -> None:
        if self.replicas is not None:
            acked = conn.read_response()
            if check:
                self.replicas.check(acked)

    def send(self, keys: list[Any], args: list[Any]) -> None:
        """Send a call and return at once; ``collect`` reads its reply.

        Until then this thread's connection has a reply owed. Once the bytes are sent, the
        call is Redis's even if this process is killed: nothing owed to us can be unread yet,
        so the kernel closes the connection gracefully, after the bytes.
        """
        self.collect()
        try:
            self._local.owed = (self._send(keys, args), keys, args)
        except REDIRECTED:
            self._redirected(keys, args)
        except UNAVAILABLE:
            self._broken()
            self(keys, args)

    def collect(self) -> Any:
        """The reply of the call ``send`` sent (None if none is owed); a call that failed is
        made again the ordinary way (every enginefarm script is safe to repeat).

        Raises:
            ReplicationError: it reached too few replicas (made again, it waits again).
        """
        owed = getattr(self._local, "owed", None)
        if owed is None:
            return None
        self._local.owed = None
        conn, keys, args = owed
        try:
            return self._read(conn, keys, args)
        except REDIRECTED:
            return self._redirected(keys, args)
        except UNAVAILABLE:
            self._broken()
        return self(keys, args)


def redact(url: str) -> str:
    """``url`` without its user and password (in the authority, or a ``password=`` option),
    for any scheme, a Sentinel URL's list of hosts too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    path = re.sub(r"(?i)(?<=[?&]password=)[^&#]*", "***", path)
    return f"{scheme}{sep}{netloc}{slash}{path}"


@contextlib.contextmanager
def translate_errors(what: str = "Redis") -> Iterator[None]:
    """Re-raise redis-py errors as StoreError, keeping the cause."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreError(f"{what} unavailable: {exc}") from exc
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise StoreError(f"{what} error: {type(exc).__name__}: {exc}") from exc
