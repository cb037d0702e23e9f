"""A cluster on a real 3-shard Redis Cluster: every key of an enginefarm cluster carries its
hash tag, so the scripts, transactions and multi-key commands all run on the one shard that
holds the tag, and the other shards hold nothing of it."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest
from redis.crc import key_slot

from enginefarm import Client, MapTask
from enginefarm.admin import cluster_status
from enginefarm.config import Settings
from enginefarm.names import Names
from enginefarm.protocol import new_id
from enginefarm.store import connect
from enginefarm.store.records import COMPLETED, FAILED, PENDING, NewTask

from ..harness import Cluster, wait_for
from ..rediscluster import PrivateRedisCluster

LONG = 120.0  # generous: the box is small and loaded


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    servers = PrivateRedisCluster(shards_count=3)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def settings(key_file: str, redis_cluster: PrivateRedisCluster) -> Settings:
    """The usual test settings (see tests/conftest.py), on the private Redis Cluster."""
    return Settings.load(
        env={}, cluster=f"t{uuid.uuid4().hex[:10]}", key_file=key_file, redis_url=redis_cluster.url,
        heartbeat_interval_s=0.5, engine_timeout_s=3.0, drain_timeout_s=20.0,
    )


def keys_by_shard(redis_cluster: PrivateRedisCluster, names: Names) -> dict[int, set[bytes]]:
    """Every key of the cluster, as each node holds it (SCAN of each node alone)."""
    found = {}
    for shard in redis_cluster.shards:
        node = shard.client()
        try:
            found[shard.port] = set(node.scan_iter(match=names.pattern, count=1000))
        finally:
            node.close()
    return found


def test_a_cluster_farms_on_a_sharded_redis(cluster: Cluster, client: Client, gates: Callable[[], str],
                                            redis_cluster: PrivateRedisCluster) -> None:
    # Given a scheduler and two engines whose Redis is a 3-shard Redis Cluster
    assert cluster.redis().__class__.__name__ == "RedisCluster"
    cluster.start_scheduler()
    engines = cluster.start_engines(2, properties={"site": "lab"})

    # When load-balanced work is farmed out, it all comes back, from both engines
    lb = client.load_balanced_view()
    assert lb.map(pow, range(40), [2] * 40, chunksize=1) == [i * i for i in range(40)]
    assert {row["engine_id"] for row in client.db_query({"kind": "map_task"}, keys=["engine_id"])} == {0, 1}
    # Direct tasks reach the engine asked for; push and pull keep a namespace there
    assert [client[e].apply(os.getppid) for e in (0, 1)] == [d.pid for d in engines]
    client[0].push({"kept": 5})
    assert client[0].pull("kept") == 5
    client.direct_view().push({"both": "x"})
    assert client.direct_view().pull("both") == ["x", "x"]
    failed = client[1].apply(int, "not a number", block=False)
    with pytest.raises(Exception, match="ValueError"):
        failed.get(timeout=LONG)
    bad_id = failed.task_ids[0]
    # What a running task prints is in Redis while it runs (live output), then in its record
    gate = gates()
    talking = client[0].execute(f"import os, time\nprint('live line', flush=True)\n"
                                f"while not os.path.exists({gate!r}): time.sleep(0.05)", block=False)
    wait_for(lambda: talking.stdout == "live line\n", LONG, "the printed line to arrive live")
    assert not talking.ready()
    open(gate, "w").close()
    talking.get(timeout=LONG)
    assert client.db_query({"task_id": talking.task_ids[0]}, keys=["stdout"])[0]["stdout"] == "live line\n"

    # Then the records and their indexes answer queries (index sets, a time range, a scan)
    assert client.db_query({"task_id": bad_id}, keys=["status", "engine_id"]) == [
        {"task_id": bad_id, "status": FAILED, "engine_id": 1}]
    completed = client.db_query({"status": COMPLETED}, keys=["engine_id"])
    by_engine = {e: client.db_query({"engine_id": e, "status": COMPLETED}, keys=[]) for e in (0, 1)}
    assert len(completed) == sum(len(rows) for rows in by_engine.values()) == len(client.history) - 1
    assert len(client.db_query({"attempts": {"$gte": 1}}, keys=[])) == len(client.history)
    status = cluster_status(client)
    assert status["tasks"][COMPLETED] == len(completed) and [e["alive"] for e in status["engines"]] == [True, True]
    assert [e["properties"] for e in status["engines"]] == [{"site": "lab"}] * 2
    verbose = client.queue_status(targets=[1], verbose=True)
    assert bad_id in verbose[1][FAILED]

    # And resubmission runs a task again as a new one, load-balanced and direct
    map_id = client.db_query({"kind": "map_task"}, keys=[])[0]["task_id"]
    assert client.resubmit(map_id) == [0]
    direct_id = client.db_query({"kind": "apply", "engine_id": 0, "status": COMPLETED}, keys=[])[0]["task_id"]
    assert client.resubmit(direct_id) == engines[0].pid  # getppid: the engine, parent of its child

    # Every key is on the shard that holds the cluster's hash tag, none elsewhere
    owner = redis_cluster.shard_of(client.names.hash_tag)
    placed = keys_by_shard(redis_cluster, client.names)
    assert {port for port, keys in placed.items() if keys} == {owner.port}
    assert {client.names.task(t).encode() for t in client.history} <= placed[owner.port]
    assert {client.names.engines.encode(), client.names.history.encode()} <= placed[owner.port]

    # Purging removes records by id, by engine and all of them, on the sharded Redis too
    assert client.purge_results(bad_id) == 1
    assert client.db_query({"task_id": bad_id}) == []
    on_one = client.db_query({"engine_id": 1}, keys=[])
    assert len(on_one) > 1 and client.purge_results(targets=[1]) == len(on_one)
    assert client.db_query({"engine_id": 1}, keys=[]) == []
    assert client.purge_results("all") > 0
    assert client.db_query({}) == [] and client.history_store.size() == 0
    assert not any(k.startswith(client.names.task("").encode()) for k in keys_by_shard(
        redis_cluster, client.names)[owner.port])

    # An engine that dies is reaped (its registration and sets removed in one transaction)
    engines[1].signal(signal.SIGKILL)
    wait_for(lambda: 1 not in client.registry.info(), LONG, "the dead engine to be reaped")
    assert client[0].apply(pow, 2, 5) == 32


def test_store_calls_without_daemons_run_on_the_tag_shard(cluster: Cluster, client: Client,
                                                          redis_cluster: PrivateRedisCluster) -> None:
    """The calls daemons make rarely: server time, ticket renewal, writes sent ahead."""
    records, registry = client.records, client.registry
    # Redis's clock is read on the shard of the cluster's keys
    owner = redis_cluster.shard_of(client.names.hash_tag).client()
    seconds, micros = owner.time()
    assert abs(registry.server_time() - (seconds + micros / 1e6)) < 5.0
    # A write sent without waiting (the client's path) lands, and is read back
    ids = [new_id() for _ in range(3)]
    records.create([NewTask(t, "map", client.client_id, b"sealed") for t in ids], wait=False)
    records.created()
    assert records.statuses(ids) == [PENDING] * 3
    assert owner.exists(*(client.names.task(t) for t in ids)) == 3
    # The scheduler's memory gauge samples records in a pipeline of MEMORY USAGE
    count, size = client.history_store.memory_estimate()
    assert count == 3 and size > 0
    # Tickets of pending tasks are renewed in one call
    records.renew_tickets(ids)
    for record in records.get_many(ids):
        assert record is not None and record.ticket and records.ticket_problem(record) == ""
    owner.close()


def test_a_held_script_follows_its_slot_to_another_node(client: Client,
                                                        redis_cluster: PrivateRedisCluster) -> None:
    """An engine's hot path keeps a connection to the node of its cluster's slot; when the
    slot moves (a resharding), its calls follow to the new node."""
    records, names = client.records, client.names
    # Given a held connection to the slot's node (a claim of an unknown task writes nothing)
    assert records.claim("unknown", 0) == (False, "", 0)
    before = redis_cluster.shard_of(names.hash_tag)
    after = next(s for s in redis_cluster.shards if s is not before)
    # When the empty slot is handed to another node, as a resharding does
    slot = key_slot(names.hash_tag.encode())
    new_owner = after.client()
    node_id = new_owner.execute_command("CLUSTER MYID").decode()
    for shard in redis_cluster.shards:
        node = shard.client()
        try:
            assert node.execute_command("CLUSTER SETSLOT", slot, "NODE", node_id)
        finally:
            node.close()
    assert redis_cluster.shard_of(names.hash_tag) is after
    # Then the scripts' calls (waited for, and sent ahead) land on the new node
    assert records.claim("unknown", 0) == (False, "", 0)
    task_id = new_id()
    records.create([NewTask(task_id, "map_task", client.client_id, b"sealed")], wait=False)
    records.created()
    assert records.claim(task_id, 0)[0] is True
    assert new_owner.hget(names.task(task_id), "status") == b"running"
    new_owner.close()


def test_a_redis_cluster_url_names_its_nodes(redis_cluster: PrivateRedisCluster) -> None:
    # Any one node is enough to learn the whole cluster
    one = connect("redis+cluster://" + redis_cluster.shards[1].address)
    try:
        assert len(one.get_nodes()) == 3  # type: ignore[attr-defined]
    finally:
        one.close()
    # A node that does not answer is reported as a store error at connect time
    from enginefarm.errors import StoreError
    from ..servers import free_port

    with pytest.raises(StoreError, match="Redis Cluster unavailable"):
        connect(f"redis+cluster://127.0.0.1:{free_port()}", retry_window_s=1)
