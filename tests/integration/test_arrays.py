"""Arrays and other large buffers travel out of band (pickle protocol 5), through Redis in
signed parts: past the message cap, writable on arrival, checked against their digests, and
gone from Redis once used."""

from __future__ import annotations

import numpy as np
import pytest

from enginefarm import Client, Reference
from enginefarm.buffers import PART_BYTES, is_packed, unpack
from enginefarm.errors import PayloadTooLarge, RemoteError

from . import farm_tasks as ft
from ..harness import wait_for

TIMEOUT_S = 120.0
MIB = 1 << 20


def blob_keys(cluster) -> list[bytes]:
    return list(cluster.redis().scan_iter(match=cluster.names.blob_part("*", "*"), count=1000))


def test_arrays_push_and_pull_past_the_message_cap_and_leave_redis_once_used(cluster, client):
    engines = cluster.start_engines(2)
    dv = client[[d.engine_id for d in engines]]
    big = np.random.default_rng(1).random(40 * MIB // 8)  # over max_message_bytes (32 MiB)
    assert big.nbytes > client.settings.max_message_bytes
    fortran = np.asfortranarray(np.arange(600 * 700, dtype=np.int32).reshape(600, 700))
    strided = np.arange(1 << 19, dtype=np.float64)[::2]  # not contiguous: pickled in band
    dv.push({"big": big, "f": fortran, "s": strided}, block=True)
    assert blob_keys(cluster) == [], "a request's buffers stay after every task naming them finished"
    assert dv.apply_sync(lambda: (float(big.sum()), big.flags.writeable, fortran.flags.f_contiguous)) == \
        [(float(big.sum()), True, True)] * 2
    for value in dv.pull("big", block=True):
        assert value.dtype == big.dtype and value.flags.writeable and np.array_equal(value, big)
    for f, s in dv.pull(["f", "s"], block=True):
        assert np.array_equal(f, fortran) and f.flags.f_contiguous and np.array_equal(s, strided)
    assert blob_keys(cluster) == [], "a result's buffers stay after its client took it"
    # The record's value names its buffers; the bytes themselves never went through RabbitMQ
    ar = dv.pull("big", targets=engines[0].engine_id, block=False)
    ar.get(timeout=TIMEOUT_S)
    record = client.records.get(ar.task_ids[0])
    stored = client.records.open_value(record.task_id, "result", record.result)
    refs, stream = unpack(stored)
    assert is_packed(stored) and [r.size for r in refs] == [big.nbytes] and len(stream) < 4096


def test_scatter_gather_and_apply_with_array_arguments(cluster, client):
    engines = cluster.start_engines(2)
    dv = client[[d.engine_id for d in engines]]
    data = np.arange(10**6, dtype=np.float64)
    dv.scatter("part", data, block=True)
    assert sum(dv.apply_sync(lambda part: part.nbytes, Reference("part"))) == data.nbytes
    back = dv.gather("part", block=True)
    assert np.array_equal(back, data)
    view = client.load_balanced_view()
    assert view.apply_sync(np.sum, data) == data.sum()
    assert blob_keys(cluster) == []


def test_a_request_over_the_value_cap_is_refused_before_anything_is_sent(cluster, settings):
    small = Client(settings=settings.replace(max_value_bytes=4 * MIB))
    try:
        cluster.start_engine()
        with pytest.raises(PayloadTooLarge, match="max_value_bytes"):
            small[:].push({"a": np.zeros(8 * MIB // 8)}, block=True)
        assert small.history == [] and blob_keys(cluster) == []
    finally:
        small.close()


def test_a_result_over_the_engine_value_cap_fails_clearly_and_the_namespace_stays(cluster, client):
    engine = cluster.start_engine(env_extra={"ENGINEFARM_MAX_VALUE_BYTES": str(4 * MIB)})
    dv = client[engine.engine_id]
    dv.execute("import numpy as np; a = np.ones(1 << 20); small = np.ones(10)", block=True)  # 8 MiB
    with pytest.raises(RemoteError, match="max_value_bytes"):
        dv.pull("a", block=True)
    assert dv.pull("small", block=True).sum() == 10.0
    assert dv.apply_sync(lambda a: a.nbytes, Reference("a")) == 8 * MIB
    assert blob_keys(cluster) == []


def _parked(cluster, client, gates):
    """An engine held by a gate task, with a push of an array queued behind it."""
    engine = cluster.start_engine()
    dv = client[engine.engine_id]
    gate = gates()
    holder = dv.apply(ft.gate, gate, block=False)
    wait_for(lambda: client.records.get(holder.task_ids[0]).status == "running", TIMEOUT_S, "the gate task to run")
    queued = dv.push({"a": np.ones(3 * MIB // 8)}, block=False)
    keys = wait_for(lambda: blob_keys(cluster), TIMEOUT_S, "the request's buffer to be stored")
    assert len(keys) == 3  # 3 parts of PART_BYTES
    assert PART_BYTES == MIB
    return dv, gate, holder, queued, keys


def test_a_tampered_buffer_fails_its_task_clearly_and_the_engine_goes_on(cluster, client, gates):
    dv, gate, holder, queued, keys = _parked(cluster, client, gates)
    r = cluster.redis()
    part = bytearray(r.get(keys[1]))
    part[100] ^= 0xFF
    r.set(keys[1], bytes(part), keepttl=True)
    ft.Gates.open(gate)
    assert holder.get(timeout=TIMEOUT_S) == "released"
    with pytest.raises(RemoteError) as failed:
        queued.get(timeout=TIMEOUT_S)
    assert failed.value.ename == "SignatureError" and "digest" in str(failed.value)
    assert dv.apply_sync(lambda: "still here") == "still here"
    assert blob_keys(cluster) == []


def test_a_buffer_gone_from_redis_fails_its_task_with_data_expired(cluster, client, gates):
    dv, gate, holder, queued, keys = _parked(cluster, client, gates)
    cluster.redis().delete(keys[2])
    ft.Gates.open(gate)
    holder.get(timeout=TIMEOUT_S)
    with pytest.raises(RemoteError) as failed:
        queued.get(timeout=TIMEOUT_S)
    assert failed.value.ename == "DataExpired"
    assert dv.apply_sync(lambda: 1) == 1


def test_buffer_parts_carry_a_ttl(cluster, client, gates):
    dv, gate, holder, queued, keys = _parked(cluster, client, gates)
    ttls = [cluster.redis().ttl(k) for k in keys]
    assert all(0 < t <= client.settings.blob_ttl_s for t in ttls), ttls
    ft.Gates.open(gate)
    holder.get(timeout=TIMEOUT_S)
    queued.get(timeout=TIMEOUT_S)
    assert dv.apply_sync(lambda a: a.sum(), Reference("a")) == 3 * MIB // 8
    assert blob_keys(cluster) == []
