"""Redis Cluster (a sharded Redis): connecting, and finding the node that holds a cluster's keys.

Every key of one enginefarm cluster carries the cluster's hash tag (see ``Names``), so all of
them live in one hash slot, on one shard. That is what lets the Lua scripts (which reach keys
named in their arguments), MULTI and the multi-key commands work unchanged: Redis Cluster
refuses any of them across slots. The client is redis-py's ``RedisCluster``, typed as the
``redis.Redis`` the store is written against: enginefarm uses only what both offer, and the
few places where they differ (a held connection, a pipeline of scripts or of multi-key
commands) ask ``is_sharded`` or avoid the difference.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.cluster
import redis.exceptions
from redis.connection import ConnectionPool

from ..config import parse_redis_cluster_url
from ..errors import StoreError
from .outages import retry_for

# Replies of a node that no longer (or not yet) serves a slot, or of a cluster that is
# reconfiguring: a call that meets one is made again through RedisCluster, which follows it.
REDIRECTED = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterError,
              redis.exceptions.RedisClusterException)


def connect_sharded(url: str, retry_window_s: float) -> redis.Redis:
    """A client for the Redis Cluster named by a ``redis+cluster://`` URL.

    Unlike a single server's client it talks to the cluster at once: it learns which node
    serves which slot from the first node that answers.

    Raises:
        ConfigError: the URL is malformed.
        StoreError: no node answered, or the nodes do not cover every slot.
    """
    parsed = parse_redis_cluster_url(url)
    try:
        client = redis.cluster.RedisCluster(
            # redis-py leaves ClusterNode and get_node_from_key unannotated.
            startup_nodes=[redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                           for host, port in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.tls,
            socket_connect_timeout=5,
            socket_keepalive=True,
            # Covers the loss of a node: the client asks the others for the new layout.
            retry=retry_for(retry_window_s),
            require_full_coverage=True,
        )
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise StoreError(f"Redis Cluster unavailable: {type(exc).__name__}: {exc}") from exc
    # Same commands, other class: see the module's docstring.
    return cast(redis.Redis, client)


def is_sharded(client: Any) -> bool:
    return isinstance(client, redis.cluster.RedisCluster)


def pool_for(client: redis.Redis, key: str) -> ConnectionPool:
    """The connection pool of the server that holds ``key``: the client's own, or on a Redis
    Cluster that of the primary serving the key's slot now.

    Raises:
        redis.exceptions.RedisClusterException: the slot is not covered (the layout changes).
    """
    if not is_sharded(client):
        return client.connection_pool
    node = cast(redis.cluster.RedisCluster, client).get_node_from_key(key)  # type: ignore[no-untyped-call]
    if node.redis_connection is None:
        raise redis.exceptions.SlotNotCoveredError(f"no connection to the node of slot of {key!r} yet")
    return cast(ConnectionPool, node.redis_connection.connection_pool)
