"""Settings: explicit arguments win, then ``ENGINEFARM_*`` variables, then defaults.

Nothing is read at import time; ``Settings.load()`` reads the environment when it is called.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

_CLUSTER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENGINE_SHELLS = ("auto", "ipython", "plain")
ENV_PREFIX = "ENGINEFARM_"


def default_key_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "enginefarm", "key")


@dataclass(frozen=True)
class Settings:
    """Everything a client, engine or scheduler needs to find and trust its cluster.

    Every field can be set by the environment variable ``ENGINEFARM_<FIELD>``
    (e.g. ``ENGINEFARM_CLUSTER``, ``ENGINEFARM_AMQP_URL``).
    """

    cluster: str = "default"
    # One URL, or several separated by commas: nodes of one RabbitMQ cluster, tried in turn
    # when connecting and after a lost connection.
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    # redis://, rediss://, unix://, or redis+sentinel://[[user]:password@]host:port[,host:port...]
    # /service[/db]: the primary of ``service`` as Redis Sentinel names it, followed through a
    # failover.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Replicas every record transition must reach (Redis WAIT) before the message that caused
    # it is acked or a submit returns, so a failover cannot lose what was confirmed. -1: 1 with
    # a redis+sentinel:// URL, else 0 (a single server has no replica to wait for). A write
    # that reaches fewer within ``redis_replica_timeout_s`` fails like an unreachable Redis:
    # not acked, tried again (every transition is a guarded script, safe to repeat).
    redis_min_replicas: int = -1
    redis_replica_timeout_s: float = 5.0
    key_file: str = ""
    # Older keys still accepted for verification during a rotation (comma-separated paths).
    old_key_files: str = ""
    # How long clients and daemons keep trying to reach RabbitMQ before giving up on a call.
    reconnect_window_s: float = 30.0
    # AMQP heartbeat negotiated with the broker; the engine's I/O thread answers it.
    amqp_heartbeat_s: int = 30
    # How often an engine refreshes its heartbeat in Redis, and after how long without
    # one it is considered dead and dropped from the registry.
    heartbeat_interval_s: float = 2.0
    engine_timeout_s: float = 10.0
    max_engines: int = 511
    # Messages an engine takes from each of its queues ahead of the one it runs: enough for two
    # full batches, so the next batch is already here when one closes. An engine busy with a
    # long task gives back what the shared queue delivered ahead, so this costs no fairness.
    prefetch: int = 64
    # Most tasks an engine claims together (one Redis round trip and one ack for all), and how
    # long such a batch may run before what has not started goes back to the queue. The batch
    # grows only while tasks are quick; 1 turns batching off.
    batch_max: int = 32
    batch_window_s: float = 0.05
    # Cap on captured stdout/stderr per task, in bytes.
    output_cap_bytes: int = 65536
    # How an engine runs ``execute``: 'auto' in IPython (magics, !cmd, rich display) when it is
    # installed on the engine, else plain exec; 'ipython' or 'plain' to insist on one.
    engine_shell: str = "auto"
    # Cap on the rich outputs (display(), a cell's value) one execute returns, in bytes of JSON.
    display_cap_bytes: int = 4 * 1024 * 1024
    # Largest signed request a client may send, and largest result an engine records.
    # RabbitMQ refuses messages over 128 MiB by default; stay well below.
    max_message_bytes: int = 32 * 1024 * 1024
    # Large buffers (numpy arrays, bytearrays) of a request or result travel beside it,
    # through Redis: at most this many bytes in one request or result. They leave Redis once
    # used (a request's when all its tasks finished, a result's when its client took it), and
    # after this long at the latest; reading one after that fails with DataExpired.
    max_value_bytes: int = 4 * 1024 ** 3
    blob_ttl_s: int = 3600
    # Default per-task time limit (0 = none).
    task_timeout_s: float = 0.0
    # How long a finished task record is kept, and how many records at most.
    result_ttl_s: int = 7 * 24 * 3600
    max_records: int = 100_000
    # A signed message older than this is refused as stale (0 = no limit).
    max_message_age_s: float = 7 * 24 * 3600
    # A scheduler dispatches a task it reads back from Redis (a retry, a hand-back, a backlog
    # restored after a failover) only with a dispatch ticket sealed within this long; the
    # active scheduler renews the tickets of tasks waiting for it. It bounds how long after
    # the fact a Redis writer could make a finished task run again (SECURITY.md).
    redispatch_window_s: float = 6 * 3600.0
    # Engines delivering a task hand it over to Redis after this long, so RabbitMQ's
    # consumer timeout never cuts a long task.
    custody_after_s: float = 600.0
    # A load-balanced task whose engine (or engine process) dies is run again elsewhere,
    # until it has lost this many engines; then it fails with EngineLost.
    max_engine_losses: int = 3
    # Load-balanced tasks the scheduler keeps outstanding on each engine.
    scheduler_slots: int = 2
    # Scheduling scheme: fifo, lifo or priority.
    scheme: str = "fifo"
    # A retry avoids engines that failed the task for this long, if another engine is alive.
    failure_penalty_s: float = 5.0
    # Budget for finishing the running task after SIGTERM.
    drain_timeout_s: float = 60.0
    # Prometheus /metrics of engines and schedulers (0 = not served). Loopback by default:
    # the page tells anyone who can reach it what the cluster runs.
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, str) or not _CLUSTER_RE.fullmatch(self.cluster):
            raise ConfigError(
                f"invalid cluster name {self.cluster!r}: use 1-64 letters, digits, '-' or '_'"
            )
        timings = (self.heartbeat_interval_s, self.engine_timeout_s)
        if not all(math.isfinite(t) for t in timings) or not 0 < self.heartbeat_interval_s < self.engine_timeout_s:
            raise ConfigError("engine_timeout_s must be larger than heartbeat_interval_s (> 0)")
        if self.prefetch < 1:
            raise ConfigError("prefetch must be at least 1")
        if self.batch_max < 1 or not self.batch_window_s > 0:
            raise ConfigError("batch_max must be at least 1 and batch_window_s above 0")
        if self.engine_shell not in ENGINE_SHELLS:
            raise ConfigError(f"engine_shell is one of {', '.join(ENGINE_SHELLS)}, not {self.engine_shell!r}")
        check_amqp_url(self.amqp_url)
        check_redis_url(self.redis_url)
        if self.redis_min_replicas < -1:
            raise ConfigError("redis_min_replicas is -1 (automatic), 0 or a number of replicas")
        if not (math.isfinite(self.redis_replica_timeout_s) and self.redis_replica_timeout_s > 0):
            raise ConfigError("redis_replica_timeout_s must be above 0")

    @property
    def min_replicas(self) -> int:
        """``redis_min_replicas`` resolved: -1 means 1 behind Sentinel, else 0."""
        if self.redis_min_replicas >= 0:
            return self.redis_min_replicas
        return 1 if url_scheme(self.redis_url) == SENTINEL_SCHEME else 0

    @property
    def resolved_key_file(self) -> str:
        return self.key_file or default_key_file()

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``overrides`` (None values ignored), then ``env``, then defaults.

        Raises:
            ConfigError: a value cannot be converted or the result is inconsistent.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        kinds = typing.get_type_hints(cls)
        for field in fields(cls):
            if overrides.get(field.name) is not None:
                values[field.name] = overrides[field.name]
                continue
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(field.name, raw, kinds[field.name])
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# --- server URLs -----------------------------------------------------------------------------
# One check per setting, built on one check per URL. Messages name the setting and the part that
# is wrong, never the URL itself: it may carry a password.
AMQP_SCHEMES = ("amqp", "amqps")
REDIS_SCHEMES = ("redis", "rediss")
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


def url_scheme(url: str) -> str:
    """The scheme of ``url``, lower case ('' without one)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def split_urls(value: str) -> list[str]:
    """The URLs of a comma-separated setting, in order; blanks around the commas are dropped.

    A URL itself never holds a bare comma (RFC 3986 allows one only percent-encoded, ``%2C``,
    in a password or a path), so the split is unambiguous.
    """
    return [url.strip() for url in value.split(",") if url.strip()]


# Query options of an amqps:// URL that enginefarm reads itself (named as redis-py names its
# own, so both servers' URLs say TLS the same way); pika sees the URL without them.
AMQP_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def amqp_tls_options(url: str) -> tuple[str, dict[str, str]]:
    """The URL without enginefarm's TLS options, and those options.

    Raises:
        ConfigError: a TLS option on a URL that is not amqps://, or one given twice.
    """
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    mine = [(k, v) for k, v in pairs if k in AMQP_TLS_OPTIONS]
    if not mine:
        return url, {}
    if parts.scheme != "amqps":
        raise _url_error("amqp_url", f"has {', '.join(k for k, _ in mine)}, which needs an amqps:// URL")
    options = dict(mine)
    if len(options) != len(mine):
        raise _url_error("amqp_url", "gives a TLS option twice")
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k not in AMQP_TLS_OPTIONS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), options


def check_amqp_url(url: str) -> None:
    """Refuse an AMQP setting that pika could not connect with: one URL, or several separated
    by commas (nodes of one RabbitMQ cluster, tried in turn), each checked.

    Raises:
        ConfigError: one line naming ``ENGINEFARM_AMQP_URL``, which URL (when there are
            several) and what is wrong.
    """
    if not isinstance(url, str):
        raise _url_error("amqp_url", f"is not a URL but {type(url).__name__}")
    urls = split_urls(url)
    if not urls:
        raise _url_error("amqp_url", "names no URL")
    for n, one in enumerate(urls, 1):
        where = "" if len(urls) == 1 else f"URL {n} of {len(urls)} "
        _check_server_url("amqp_url", one, AMQP_SCHEMES, where)
        amqp_tls_options(one)


def check_redis_url(url: str) -> None:
    """Refuse a Redis url that redis-py could not connect with.

    Raises:
        ConfigError: one line naming ``ENGINEFARM_REDIS_URL`` and what is wrong.
    """
    if isinstance(url, str) and url_scheme(url) in REDIS_CLUSTER_SCHEMES:
        parse_redis_cluster_url(url)
        return
    if isinstance(url, str) and url_scheme(url) == SENTINEL_SCHEME:
        parse_sentinel_url(url)
        return
    if isinstance(url, str) and "," in url:
        raise _url_error("redis_url", "takes one URL; the nodes of a Redis Cluster are written "
                         "redis+cluster://host:port,host:port")
    parts = _split_url("redis_url", url)
    if parts.scheme == "unix":
        if not parts.path:
            raise _url_error("redis_url", "names no socket path, as in unix:///run/redis/redis.sock")
        return
    _check_server_url("redis_url", url, REDIS_SCHEMES + ("unix", SENTINEL_SCHEME))  # names them all
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise _url_error("redis_url", "has a path that is not a database number, as in redis://host:6379/0")


# A Redis Cluster (a sharded Redis): nodes to learn its layout from, any one of which is enough.
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class RedisClusterURL:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]``, or
    ``rediss+cluster://`` for TLS. One URL, with commas between its nodes (as a client
    reaches any node of a Redis Cluster to learn the others), so the setting stays one value
    and a password is written once. Port 6379 when none is given; database 0 only, the one a
    Redis Cluster has."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def parse_redis_cluster_url(url: str) -> RedisClusterURL:
    """Raises: ConfigError naming ``ENGINEFARM_REDIS_URL`` and what is wrong."""
    scheme, _, rest = url.partition("://")
    userinfo, _, located = rest.rpartition("@")
    if "?" in located or "#" in located:
        raise _url_error("redis_url", "takes no query options in a redis+cluster:// URL")
    hosts, _, database = located.partition("/")
    if database not in ("", "0"):
        raise _url_error("redis_url", "names a database other than 0; a Redis Cluster has only database 0")
    nodes = []
    raw_nodes = [n.strip() for n in hosts.split(",")]
    for n, node in enumerate(raw_nodes, 1):
        where = f"node {n} of {len(raw_nodes)} "
        try:
            host = urllib.parse.urlsplit("//" + node).hostname
        except ValueError:
            host = None
        if not node or not host:
            raise _url_error("redis_url", f"{where}names no host, as in redis+cluster://host:port,host:port")
        raw_port = _raw_port(node)
        if raw_port and not (raw_port.isascii() and raw_port.isdigit() and 1 <= int(raw_port) <= 65535):
            raise _url_error("redis_url", f"{where}has an invalid port {raw_port!r}: give a number from 1 to 65535")
        nodes.append((host, int(raw_port) if raw_port else 6379))
    # As redis-py reads redis://user:password@host: a bare name is a user without a password.
    user, _, password = userinfo.partition(":")
    return RedisClusterURL(tuple(nodes), urllib.parse.unquote(user) or None,
                           urllib.parse.unquote(password) or None, scheme == "rediss+cluster")


@dataclass(frozen=True)
class SentinelURL:
    """What ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`` says.

    The sentinels are asked where ``service``'s primary is; ``username``/``password``
    authenticate to the Redis servers (primary and replicas), not to the sentinels.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Raises: ConfigError naming what is wrong (never the password)."""
    def bad(what: str) -> ConfigError:
        return _url_error("redis_url", what + f", as in {SENTINEL_SCHEME}://:password@host:26379,host:26380/service/0")

    rest = url[len(SENTINEL_SCHEME) + 3:]
    if "?" in rest or "#" in rest:
        raise bad("takes no query or fragment")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    sentinels = []
    for n, host in enumerate(hosts.split(","), 1):
        host = host.strip()
        where = f"sentinel {n} "
        if host.startswith("["):
            name, close, port = host[1:].partition("]")
            if not close or (port and not port.startswith(":")):
                raise bad(f"has a {where}that is not host:port")
            port = port[1:]
        else:
            name, _, port = host.partition(":")
        if not name:
            raise bad(f"names no host for {where}".rstrip())
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise bad(f"has an invalid port {port!r} for {where}".rstrip())
        sentinels.append((name, int(port) if port else SENTINEL_PORT))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise bad("names no service (the primary's name in the sentinels' configuration)")
    if db and not db.isdigit():
        raise bad("has a database that is not a number")
    return SentinelURL(tuple(sentinels), urllib.parse.unquote(service), int(db or 0), username, password)


def _check_server_url(field: str, url: str, schemes: tuple[str, ...], where: str = "") -> None:
    """One server URL: a known scheme, a host, and a port (if given) from 1 to 65535.
    ``where`` names the URL among several ("URL 2 of 3 "), for the message."""
    parts = _split_url(field, url, where)
    if parts.scheme not in schemes:
        raise _url_error(field, f"{where}has scheme {parts.scheme!r}; use {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise _url_error(field, f"{where}names no host")
    raw_port = _raw_port(parts.netloc)
    if raw_port and not (raw_port.isascii() and raw_port.isdigit() and 1 <= int(raw_port) <= 65535):
        raise _url_error(field, f"{where}has an invalid port {raw_port!r}: give a number from 1 to 65535")


def _split_url(field: str, url: Any, where: str = "") -> urllib.parse.SplitResult:
    if not isinstance(url, str):
        raise _url_error(field, f"{where}is not a URL but {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise _url_error(field, f"{where}is not a URL") from None
    if not parts.scheme or "://" not in url:
        raise _url_error(field, f"{where}has scheme {url.split(':', 1)[0]!r}, or none: write it as "
                         "scheme://host:port/...")
    return parts


def _raw_port(netloc: str) -> str:
    """The port text after the host, as written (urllib refuses to show a bad one)."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # [IPv6]:port
        return host.partition("]")[2].removeprefix(":")
    return host.partition(":")[2]


def _url_error(field: str, what: str) -> ConfigError:
    return ConfigError(f"{ENV_PREFIX}{field.upper()} ({field}) {what}")


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
