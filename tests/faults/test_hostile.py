"""Scenarios 8, 9, 10: hostile messages, oversized data, hostile code."""

from __future__ import annotations

import os
import time

import pika
import pytest

from enginefarm import Client, MapTask
from enginefarm.errors import PayloadTooLarge
from enginefarm.keys import KeyRing
from enginefarm.protocol import new_id, seal
from enginefarm.serialization import dumps
from enginefarm.store.records import NewTask

from ..harness import Cluster, wait_for
from . import work
from .conftest import Tally, children_of, executions, report


def make_canary(path: str) -> None:
    with open(path, "w") as handle:
        handle.write("this code ran")


def read_dead_letters(settings, expected: int, timeout_s: float = 60.0) -> list[tuple[str, bytes]]:
    """(reason, body) of every message in the cluster's dead-letter queue."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    found: list[tuple[str, bytes]] = []
    try:
        channel = conn.channel()
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            method, props, body = channel.basic_get(f"{settings.cluster}.dead", auto_ack=True)
            if method is None:
                time.sleep(0.1)
                continue
            found.append(((props.headers or {}).get("x-enginefarm-reason", ""), body))
    finally:
        conn.close()
    return found


def test_8_hostile_messages_are_dead_lettered_never_run(settings, tmp_path):
    local = settings.replace(max_message_age_s=600.0)
    cluster = Cluster(local, str(tmp_path))
    canary = str(tmp_path / "canary")
    try:
        cluster.start_engines(2)
        with Client(settings=local) as client:
            client.ids  # connect
            ring = client.ring

            def valid(ts: float | None = None) -> tuple[str, bytes]:
                """A signed request that would make the canary, with a pending record so that
                only the envelope check can stop it."""
                task_id = new_id()
                header = {"task_id": task_id, "kind": "map_task", "client_id": client.client_id, "lb": True}
                if ts is not None:
                    header["ts"] = ts
                body = seal(ring, header, dumps({"call": (make_canary, (canary,), {}), "depend": None,
                                                 "recovery": None}))
                client.records.create([NewTask(task_id, "map_task", client.client_id, body, None, {"lb": "1"})])
                return task_id, body

            other = KeyRing.from_key(os.urandom(32))
            spoofed_kid = bytearray(seal(other, {"task_id": "x"}, b"payload"))
            spoofed_kid[4:12] = ring.signing_id.encode()
            _, header_flip = valid()
            header_flip = bytearray(header_flip)
            header_flip[50] ^= 0x01
            _, payload_flip = valid()
            payload_flip = bytearray(payload_flip)
            payload_flip[-5] ^= 0x01
            _, truncated = valid()
            _, long_ago = valid(ts=time.time() - 3600)
            hostile = {
                "unsigned": [dumps((make_canary, (canary,), {}))],
                "unknown-key": [seal(other, {"task_id": "x", "kind": "apply"}, dumps((make_canary, (canary,), {})))],
                "bad-signature": [bytes(spoofed_kid), bytes(header_flip), bytes(payload_flip), truncated[:-10]],
                "malformed": [truncated[:40]],
                "stale": [long_ago],
            }
            publisher = client.publisher
            started = time.monotonic()
            sent = 0
            for bodies in hostile.values():
                for body in bodies:
                    publisher.publish("", client.names.work_queue, body)
                    sent += 1
            # A replay: a real task runs once; the captured message is published again later.
            replayed_id = client.submit(MapTask(work.run, (str(tmp_path / "exec.log"), "real")))
            client.barrier([replayed_id], timeout=60)
            record = client.records.get(replayed_id)
            publisher.publish("", client.names.work_queue, record.request)
            sent += 1

            letters = read_dead_letters(local, sent)
            reasons = sorted(reason for reason, _ in letters)
            expected = sorted([r for r, bodies in hostile.items() for _ in bodies] + ["replayed"])
            t = Tally(sent)
            report("8 hostile messages (unsigned, wrong key, flipped bits, truncated, stale, replayed)",
                   t, time.monotonic() - started, notes="rejected %d/%d, canary absent" % (len(letters), sent))
            assert reasons == expected
            assert not os.path.exists(canary)
            assert executions(str(tmp_path / "exec.log")) == {"real": 1}
            for reason in set(expected):
                assert client.records.counter(f"dead_lettered:{reason}") == expected.count(reason)
            assert client.direct_view().apply(pow, 2, 5) == [32, 32]
    finally:
        cluster.teardown()


def test_9_oversized_payload_and_result(settings, tmp_path):
    local = settings.replace(max_message_bytes=1_000_000)
    cluster = Cluster(local, str(tmp_path))
    try:
        cluster.start_scheduler()
        cluster.start_engines(2)
        started = time.monotonic()
        with Client(settings=local) as client:
            with pytest.raises(PayloadTooLarge) as info:
                client[0].push({"blob": b"x" * 2_000_000})
            assert "1,000,000" in str(info.value) and "push" in str(info.value)
            with pytest.raises(PayloadTooLarge):
                client.submit(MapTask(len, (b"x" * 2_000_000,)))
            assert client.history == []
            tid = client.submit(MapTask(work.big_result, (2_000_000,)))
            others = client.submit_many([MapTask(pow, (2, i)) for i in range(50)])
            result = client.get_task_result(tid, block=True, timeout=60)
            assert result.failure.ename == "ResultTooLarge" and "1,000,000" in result.failure.evalue
            client.barrier(others, timeout=60)
            assert [client.get_task_result(t).result for t in others] == [2 ** i for i in range(50)]
            assert client.direct_view().apply(len, b"x" * 900_000) == [900_000, 900_000]
        report("9 oversized payload and result", Tally(52), time.monotonic() - started,
               notes="3/3 clear errors, other work unaffected")
    finally:
        cluster.teardown()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def child_pid(pid: int) -> int:
    """The engine's child process (started by whichever of its threads restarted it last)."""
    kids = children_of(pid)
    assert len(kids) == 1, kids
    return kids[0]


def test_10_hostile_code(settings, tmp_path):
    local = settings.replace(output_cap_bytes=10_000)
    cluster = Cluster(local, str(tmp_path))
    try:
        cluster.start_scheduler()
        (engine,) = cluster.start_engines(1)
        started = time.monotonic()
        with Client(settings=local) as client:
            view = client[0]
            view.apply(int, 1)
            before = rss_kb(engine.pid)
            outcomes = {}
            cases = {
                "infinite loop": (MapTask(work.spin, timeout=2.0), "TaskTimeout"),
                "os._exit": (MapTask(os._exit, (3,)), "EngineProcessDied"),
                "segfault": (MapTask(work.segfault), "EngineProcessDied"),
                "unpicklable result": (MapTask(work.unpicklable_result), "SerializationError"),
            }
            for name, (task, ename) in cases.items():
                result = client.get_task_result(client.submit(task), block=True, timeout=120)
                outcomes[name] = result.failure.ename if result.failure else "ok"
                assert outcomes[name] == ename, (name, result.failure)
            segv = client.db_query({"kind": "map_task", "status": "failed"}, keys=["error"])
            assert any("SIGSEGV" in row["error"]["evalue"] for row in segv)
            # 1 GiB of output: captured up to the cap, the rest counted and dropped.
            printed = client.get_task_result(client.submit(MapTask(work.print_a_gigabyte)), block=True, timeout=300)
            assert printed.result == "printed"
            assert len(printed.stdout) < 10_200 and "output truncated" in printed.stdout
            wait_for(lambda: client.ids == [0], 30, "the engine to stay registered")
            after = rss_kb(engine.pid)
            child_after = rss_kb(child_pid(engine.pid))
            assert view.apply(pow, 2, 8) == 256
        report("10 hostile code (loop, os._exit, segfault, unpicklable, 1 GiB print)", Tally(5),
               time.monotonic() - started, notes=f"engine RSS {before // 1024}->{after // 1024} MB")
        assert after - before < 20_000, (before, after)
        assert child_after < 200_000
    finally:
        cluster.teardown()
