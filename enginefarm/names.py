"""Every RabbitMQ and Redis name of a cluster, built in one place from the cluster name.

AMQP names use ``<cluster>.<what>``; Redis keys use ``{<cluster>}:<what>``. Cluster names
are letters, digits, '-' and '_' only (see config), so no two clusters can collide.

The braces are a Redis Cluster hash tag: only what is inside them is hashed, so every key of
one cluster lives in one hash slot, and the Lua scripts (which touch many keys of a cluster,
some named in their arguments) and the multi-key commands work on a sharded Redis too. On a
single server the braces are just part of the name. The cost: one enginefarm cluster lives on
one shard; a sharded Redis spreads several enginefarm clusters, never one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Names:
    cluster: str

    # --- RabbitMQ -------------------------------------------------------------------
    @property
    def direct_exchange(self) -> str:
        """Direct exchange: routing key = engine id, one bound queue per engine."""
        return f"{self.cluster}.direct"

    @property
    def tasks_queue(self) -> str:
        """Load-balanced submissions, consumed by the scheduler."""
        return f"{self.cluster}.tasks"

    @property
    def work_queue(self) -> str:
        """Plain FIFO load-balanced tasks, consumed by every engine directly (the fast path)."""
        return f"{self.cluster}.work"

    @property
    def dead_exchange(self) -> str:
        return f"{self.cluster}.dlx"

    @property
    def dead_queue(self) -> str:
        """Where rejected (unsigned, tampered, undeliverable) messages end up."""
        return f"{self.cluster}.dead"

    def engine_queue(self, engine_id: int) -> str:
        return f"{self.cluster}.engine.{engine_id}"

    @staticmethod
    def engine_routing_key(engine_id: int) -> str:
        return str(engine_id)

    def control_queue(self, engine_id: int) -> str:
        """Out-of-band control of one engine (signals): consumed beside its task queue, so a
        control message never waits behind the task the engine is running."""
        return f"{self.cluster}.control.{engine_id}"

    @staticmethod
    def control_routing_key(engine_id: int) -> str:
        """On the direct exchange, beside the engine's own key (which is its bare id)."""
        return f"control.{engine_id}"

    def fixed_queues(self) -> list[str]:
        return [self.tasks_queue, self.work_queue, self.dead_queue]

    def exchanges(self) -> list[str]:
        return [self.direct_exchange, self.dead_exchange]

    # --- Redis: engines -------------------------------------------------------------
    @property
    def hash_tag(self) -> str:
        """The part of every key that Redis Cluster hashes: the cluster name in braces."""
        return "{" + self.cluster + "}"

    def key(self, *parts: object) -> str:
        return ":".join([self.hash_tag, *map(str, parts)])

    @property
    def engines(self) -> str:
        """Hash engine_id -> JSON info (host, pid, started)."""
        return self.key("engines")

    @property
    def heartbeats(self) -> str:
        """Sorted set engine_id -> last heartbeat (Redis server time, seconds)."""
        return self.key("heartbeats")

    def engine_properties(self, engine_id: int) -> str:
        return self.key("engine", engine_id, "props")

    def engine_claimed(self, engine_id: int) -> str:
        """Set of task ids an engine has claimed (running, or next in its batch) and not finished."""
        return self.key("engine", engine_id, "claimed")

    def engine_pending(self, engine_id: int) -> str:
        """Set of task ids routed to an engine and not finished yet."""
        return self.key("engine", engine_id, "pending")

    def reap_lock(self, engine_id: int) -> str:
        return self.key("engine", engine_id, "reaping")

    # --- Redis: tasks ---------------------------------------------------------------
    def task(self, task_id: str) -> str:
        """Hash: the task record (see store.records)."""
        return self.key("task", task_id)

    def task_output(self, task_id: str, stream: str) -> str:
        """String: what a running task has written to ``stream`` ('stdout' or 'stderr') so far,
        appended while it runs and removed once its record is finished (see store.output).
        ``task_output("", stream)`` is the prefix of every task's key of that stream."""
        return self.key("output", stream, task_id)

    @property
    def history(self) -> str:
        """Sorted set task_id -> submitted time: the hub history, oldest first."""
        return self.key("history")

    def status_index(self, status: str) -> str:
        return self.key("idx", "status", status)

    def engine_index(self, engine_id: int | str) -> str:
        return self.key("idx", "engine", engine_id)

    # --- Redis: scheduler ------------------------------------------------------------
    @property
    def scheduler_pending(self) -> str:
        """Sorted set task_id -> arrival order: load-balanced tasks not yet routed."""
        return self.key("sched", "pending")

    @property
    def scheduler_events(self) -> str:
        """List of task ids whose state changed in a way the scheduler must see."""
        return self.key("sched", "events")

    @property
    def scheduler_scheme(self) -> str:
        """The active scheduler's scheme; clients send only FIFO work past the scheduler."""
        return self.key("sched", "scheme")

    @property
    def scheduler_leader(self) -> str:
        """Lease held by the active scheduler."""
        return self.key("sched", "leader")

    @property
    def properties_version(self) -> str:
        """Bumped whenever an engine goes live or engine properties change (routing and
        depend must be looked at again)."""
        return self.key("engine", "props-version")

    @property
    def cull_lock(self) -> str:
        """Held briefly by whoever trims the history, so one process does it at a time."""
        return self.key("history", "cull-lock")

    @property
    def shutdown_flag(self) -> str:
        """Set to ask every scheduler of the cluster to exit."""
        return self.key("sched", "shutdown")

    def blob_part(self, blob_id: str, part: int) -> str:
        """String: one part of an out-of-band buffer of a request or result (see store.blobs)."""
        return self.key("blob", blob_id, part)

    def client_inbox(self, client_id: str) -> str:
        """List of task ids whose outcome was recorded, for the client that sent them."""
        return self.key("client", client_id, "inbox")

    def counter(self, name: str) -> str:
        return self.key("stats", name)

    @property
    def pattern(self) -> str:
        """Glob matching every Redis key of the cluster (SCAN MATCH). Braces are literal in
        Redis globs, and a cluster name holds none of '*', '?', '[', '\\'."""
        return self.hash_tag + ":*"
