"""A cluster whose Redis is found through Sentinel (redis+sentinel://), on a private primary,
two replicas and three sentinels (tests/sentinel.py). The failover itself is fault scenario 14
(tests/faults/test_failover.py)."""

from __future__ import annotations

import pytest
import redis

from enginefarm import Client, MapTask
from enginefarm.errors import ReplicationError
from enginefarm.names import Names
from enginefarm.store import connect
from enginefarm.store.connection import HeldScript, ReplicaWait
from enginefarm.store.records import NewTask, Records

from ..harness import Cluster
from ..sentinel import SentinelRedis

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    deployment = SentinelRedis(str(tmp_path_factory.mktemp("sentinel")))
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def square(x):
    return x * x


def test_a_cluster_farms_tasks_through_sentinel_and_every_record_is_on_the_replicas(settings, tmp_path, sentinel):
    # Given a scheduler and two engines that find Redis through the sentinels
    local = settings.replace(redis_url=sentinel.url)
    assert local.min_replicas == 1  # the default behind Sentinel
    cluster = Cluster(local, str(tmp_path))
    try:
        cluster.start_scheduler()
        cluster.start_engines(2)
        with Client(settings=local) as client:
            # When a client farms load-balanced tasks and runs a command on every engine
            ids = client.submit_many([MapTask(square, (n,)) for n in range(300)])
            client.barrier(ids, timeout=TIMEOUT_S)
            everywhere = client.direct_view("all").apply_sync(square, 7)
            # Then every task completed with its result, on both engines
            assert [client.get_task_result(t, block=True).result for t in ids] == [n * n for n in range(300)]
            assert everywhere == [49, 49]
            engines = {client.records.get(t).engine_id for t in ids}
            # And each finished record was on a replica before its message was acked: both
            # replicas hold them all, finished.
            names = Names(local.cluster)
            for replica in (s for s in sentinel.servers if s.port != sentinel.primary_port()):
                direct = redis.Redis(replica.host, replica.port)
                pipe = direct.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hget(names.task(task_id), "status")
                assert set(pipe.execute()) == {b"completed"}
        assert engines == {0, 1}
    finally:
        cluster.teardown()


def test_a_write_that_too_few_replicas_confirm_is_a_store_failure(settings, sentinel):
    # Given the sentinel's primary and its two replicas
    client = connect(sentinel.url)
    names = Names(settings.cluster)
    try:
        # When a record waits for three replicas, it fails after the timeout, as Redis unavailable
        strict = Records(client, names, _ring(settings), replicas=ReplicaWait(3, 0.2))
        with pytest.raises(ReplicationError, match="2 of the 3 replicas"):
            strict.create([NewTask("t-strict", "map", "c1", b"request")])
        # Then the same write made again is still refused (it waits for what this connection wrote)
        with pytest.raises(ReplicationError):
            strict.transition("t-strict", ["pending"], "aborted")
        # And two replicas are enough for a record that asks for two
        both = Records(client, names, _ring(settings), replicas=ReplicaWait(2, 5.0))
        both.create([NewTask("t-two", "map", "c1", b"request")])
        assert both.transition("t-two", ["pending"], "aborted")[0]
        held = HeldScript(client, "return redis.call('INCR', KEYS[1])", ReplicaWait(2, 5.0))
        assert held([names.counter("sentinel-test")], []) == 1
    finally:
        keys = list(client.scan_iter(match=names.pattern, count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _ring(settings):
    from enginefarm.keys import KeyRing

    return KeyRing.from_files(settings.resolved_key_file)


def test_array_parts_wait_for_replicas_and_a_short_wait_leaves_none(settings, sentinel):
    import numpy as np

    from enginefarm.store.blobs import BlobStore

    client = connect(sentinel.url)
    names = Names(settings.cluster)
    data = memoryview(np.arange(3 * 2**20 // 8, dtype=np.float64)).cast("B")
    try:
        # Three replicas asked, two exist: refused, and the parts it wrote are removed
        strict = BlobStore(client, names, 600, 1 << 30, ReplicaWait(3, 0.2))
        with pytest.raises(ReplicationError):
            strict.put([data])
        assert not list(client.scan_iter(match=names.blob_part("*", "*")))
        # Two asked: stored, and on both replicas before put returns
        refs = BlobStore(client, names, 600, 1 << 30, ReplicaWait(2, 5.0)).put([data])
        primary = sentinel.primary()
        for replica in (SentinelRedis.ask(s) for s in sentinel.servers if s is not primary):
            assert replica.exists(*(names.blob_part(refs[0].blob_id, p) for p in range(refs[0].parts))) == 3
    finally:
        keys = list(client.scan_iter(match=names.pattern, count=1000))
        if keys:
            client.delete(*keys)
        client.close()
