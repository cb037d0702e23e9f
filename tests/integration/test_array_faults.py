"""Large buffers under failure: a store that fails part-way leaves nothing written, a 1 GiB
array works, and an engine that dies while its task holds an array leaves the re-run its data."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from enginefarm import Client, MapTask
from enginefarm.errors import StoreError
from enginefarm.names import Names
from enginefarm.store.blobs import BlobStore

from ..harness import wait_for
from ..servers import PrivateRedis

TIMEOUT_S = 300.0
MIB = 1 << 20


@pytest.fixture
def tight_redis(tmp_path):
    """A private Redis that refuses writes past 24 MB (no eviction)."""
    server = PrivateRedis(str(tmp_path / "redis"), durable=False)
    server.start()
    try:
        handle = redis.Redis.from_url(server.url)
        handle.config_set("maxmemory", str(24 * MIB))
        handle.config_set("maxmemory-policy", "noeviction")
        yield server, handle
    finally:
        server.stop()


def test_a_store_that_fails_part_way_leaves_no_part_behind(tight_redis):
    server, handle = tight_redis
    store = BlobStore(handle, Names("tparts"), 600, 1 << 30)
    small = store.put([memoryview(np.ones(2 * MIB // 8)).cast("B")])
    assert handle.dbsize() == 2
    with pytest.raises(StoreError, match="OOM|memory"):
        store.put([memoryview(np.ones(8 * MIB // 8)).cast("B"), memoryview(np.ones(40 * MIB // 8)).cast("B")])
    # Only the earlier, complete buffer is left; the failed one's parts (both buffers) are gone
    assert sorted(handle.keys()) == sorted(Names("tparts").blob_part(small[0].blob_id, p).encode() for p in range(2))
    assert np.array_equal(np.frombuffer(store.fetch(small)[0]), np.ones(2 * MIB // 8))


def test_a_push_the_store_refuses_part_way_records_and_publishes_nothing(tight_redis, cluster, settings):
    server, handle = tight_redis
    cluster.settings = settings.replace(redis_url=server.url)
    engine = cluster.start_engine()
    c = Client(settings=cluster.settings)
    try:
        dv = c[engine.engine_id]
        before = set(handle.keys())
        with pytest.raises(StoreError):
            dv.push({"a": np.ones(40 * MIB // 8)}, block=False)
        assert c.history == [] and c.outstanding == set()
        # No part, record, history entry or inbox entry was left (the engine's own heartbeat
        # and upkeep keys may come and go meanwhile)
        written = [k.decode() for k in set(handle.keys()) - before]
        assert [k for k in written if any(w in k for w in (":blob:", ":task:", ":client:")) or k == c.names.history] == []
        assert handle.zcard(c.names.history) == 0
        # Nothing reached the engine: its namespace has no 'a', and this is the first task it runs
        dv.execute("has_a = 'a' in globals()", block=True)
        assert dv.pull("has_a", block=True) is False
        assert len(c.history) == 2
    finally:
        c.close()


@pytest.mark.slow
def test_a_one_gib_array_goes_to_an_engine_and_back(cluster, client):
    engine = cluster.start_engine()
    dv = client[engine.engine_id]
    big = np.ones(1 << 27)  # 1 GiB of float64
    big[-1] = 7.0
    dv.push({"big": big}, block=False).get(timeout=TIMEOUT_S)
    assert dv.apply(lambda a: (a.nbytes, float(a[-1])), __import__("enginefarm").Reference("big"),
                    block=False).get(timeout=TIMEOUT_S) == (1 << 30, 7.0)
    del big
    back = dv.pull("big", block=False).get(timeout=TIMEOUT_S)
    assert back.nbytes == 1 << 30 and back[-1] == 7.0 and back[0] == 1.0 and back.flags.writeable
    assert not list(cluster.redis().scan_iter(match=cluster.names.blob_part("*", "*")))


def _die_once(marker: str, data: np.ndarray) -> float:
    """Kill the engine's process the first time (the marker file records it), then sum."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return float(data.sum())


def test_a_task_whose_engine_process_dies_is_rerun_with_its_array(cluster, client, tmp_path):
    cluster.start_scheduler()
    cluster.start_engines(2)
    data = np.arange(2 * MIB // 8, dtype=np.float64)
    [task_id] = client.submit_many([MapTask(_die_once, (str(tmp_path / "died"), data))])
    result = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert result.failure is None and result.result == float(data.sum())
    assert result.attempts >= 1, "the first run died: this is its re-run"
    wait_for(lambda: not list(cluster.redis().scan_iter(match=cluster.names.blob_part("*", "*"))),
             60, "the request's buffer to leave once its task finished")
