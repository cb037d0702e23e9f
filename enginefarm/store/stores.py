"""Everything a process keeps in Redis for one cluster, opened in one call."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ..config import Settings
from ..keys import KeyRing
from ..names import Names
from .blobs import BlobStore
from .connection import ReplicaWait, connect
from .history import History
from .output import LiveOutput
from .records import Records
from .registry import Registry


@dataclass
class Stores:
    ring: KeyRing
    redis: redis.Redis
    registry: Registry
    records: Records
    history: History
    output: LiveOutput
    blobs: BlobStore

    @classmethod
    def open(cls, settings: Settings) -> Stores:
        """Load the key ring and connect (lazily) to the cluster's Redis.

        Raises:
            KeyFileError: the key is missing or unusable.
        """
        ring = KeyRing.from_files(settings.resolved_key_file, settings.old_key_files)
        client = connect(settings.redis_url, settings.reconnect_window_s)
        names = Names(settings.cluster)
        replicas = ReplicaWait(settings.min_replicas, settings.redis_replica_timeout_s)
        return cls(ring, client, Registry(client, names, settings.engine_timeout_s),
                   Records(client, names, ring, settings.redispatch_window_s, replicas), History(client, names),
                   LiveOutput(client, names, settings.result_ttl_s),
                   BlobStore(client, names, settings.blob_ttl_s, settings.max_value_bytes, replicas))
