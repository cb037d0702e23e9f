"""Signed messages and sealed values against a real engine, RabbitMQ and Redis.

Forged or tampered messages are published straight to an engine's queue with pika. Each one
carries a real ``apply`` request whose function would create a canary file if it ever ran, and
has a pending task record, so that the signature is the only thing that stops it.
"""

from __future__ import annotations

import os
import time

import pytest

from enginefarm import AsyncResult, Client, SignatureError, serialization
from enginefarm.broker import Publisher
from enginefarm.broker.topology import declare_cluster
from enginefarm.deadletter import REASON_HEADER, SOURCE_HEADER, dead_letter
from enginefarm.errors import BrokerError
from enginefarm.keys import KeyRing
from enginefarm.protocol import _PREFIX, new_id, seal
from enginefarm.store import Records
from enginefarm.store.records import NewTask

from ..harness import wait_for

TIMEOUT_S = 60
WEEK_S = 7 * 24 * 3600


def canary_function(path: str):
    """A function that leaves a line in ``path`` when it runs (defined here, pickled by value)."""

    def leave_canary() -> str:
        with open(path, "a") as handle:
            handle.write("ran\n")
        return "canary ran"

    return leave_canary





@pytest.fixture
def ring(settings) -> KeyRing:
    return KeyRing.from_files(settings.key_file)


@pytest.fixture
def records(cluster, ring) -> Records:
    return Records(cluster.redis(), cluster.names, ring)


@pytest.fixture
def engine(cluster):
    return cluster.start_engine()


class Request:
    """A direct ``apply`` request built the way ``Client.send_direct`` builds one."""

    def __init__(self, ring: KeyRing, engine_id: int, canary: str) -> None:
        self.task_id = new_id()
        self.client_id = new_id()
        self.engine_id = engine_id
        self.header = {"task_id": self.task_id, "kind": "apply", "client_id": self.client_id,
                       "engine_id": engine_id}
        self.payload = serialization.dumps((canary_function(canary), (), {}))
        self.sealed = seal(ring, self.header, self.payload)

    def create_record(self, records: Records) -> None:
        records.create([NewTask(self.task_id, "apply", self.client_id, self.sealed, self.engine_id)])


def flip_bit(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


def header_middle(sealed: bytes) -> int:
    length = int.from_bytes(sealed[_PREFIX - 4 : _PREFIX], "big")
    return _PREFIX + length // 2


def forge_with_our_key_id(ring: KeyRing, req: Request) -> bytes:
    """Signed with a key the cluster does not have, but claiming the cluster key's id."""
    other = seal(KeyRing.from_key(os.urandom(32)), req.header, req.payload)
    kid = ring.signing_id.encode()
    return other[:4] + kid + other[4 + len(kid) :]


# name -> (how to damage the request, the reason the engine must give)
CASES = {
    "unsigned": (lambda ring, req: req.payload, "unsigned"),
    "other-key": (lambda ring, req: seal(KeyRing.from_key(os.urandom(32)), req.header, req.payload),
                  "unknown-key"),
    "other-key-claiming-our-id": (forge_with_our_key_id, "bad-signature"),
    "bit-flipped-in-header": (lambda ring, req: flip_bit(req.sealed, header_middle(req.sealed)),
                              "bad-signature"),
    "bit-flipped-in-payload": (lambda ring, req: flip_bit(req.sealed, len(req.sealed) - 2), "bad-signature"),
    "truncated": (lambda ring, req: req.sealed[: _PREFIX - 1], "malformed"),
    "truncated-tail": (lambda ring, req: req.sealed[: len(req.sealed) // 2], "bad-signature"),
    "stale": (lambda ring, req: seal(ring, {**req.header, "ts": time.time() - WEEK_S - 3600}, req.payload),
              "stale"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_message_is_dead_lettered_never_run(case, settings, cluster, client, engine, amqp, ring, records,
                                                tmp_path):
    damage, reason = CASES[case]
    names = cluster.names
    canary = tmp_path / "canary"
    # Given a pending record for a real request, so only the signature can stop it
    req = Request(ring, engine.engine_id, str(canary))
    req.create_record(records)
    body = damage(ring, req)
    assert body != req.sealed

    # When the damaged message is published straight to the engine's queue
    amqp.publish(names.direct_exchange, names.engine_routing_key(engine.engine_id), body)

    # Then it lands in the dead queue, untouched, with the reason and where it came from
    props, dead_body = wait_for(lambda: amqp.get(names.dead_queue), TIMEOUT_S, "a dead-lettered message")
    assert props.headers[REASON_HEADER] == reason
    assert props.headers[SOURCE_HEADER] == names.engine_queue(engine.engine_id)
    assert dead_body == body
    # The engine still answers (and, its queue being FIFO, has finished with the bad message first).
    assert client[engine.engine_id].apply(pow, 2, 5) == 32
    # The message was counted by reason, and never ran.
    assert records.counter(f"dead_lettered:{reason}") == 1
    assert not canary.exists()
    record = records.get(req.task_id)
    assert record.status == "pending" and record.started is None and record.attempts == 0
    # Nothing else went to the dead queue.
    assert amqp.get(names.dead_queue) is None
    assert f"dead-lettering a message from {names.engine_queue(engine.engine_id)}: {reason}" in engine.log()


def test_the_valid_message_runs_once_and_its_replay_is_dead_lettered(cluster, client, engine, amqp, ring,
                                                                      records, tmp_path):
    """Control for the test above: the same request, correctly signed, does leave the canary.
    Published again once it has run (a captured message replayed), it is refused."""
    names = cluster.names
    route = names.engine_routing_key(engine.engine_id)
    canary = tmp_path / "canary"
    req = Request(ring, engine.engine_id, str(canary))
    req.create_record(records)
    amqp.publish(names.direct_exchange, route, req.sealed)
    wait_for(lambda: records.get(req.task_id).status == "completed", TIMEOUT_S, "the request to run")
    assert canary.read_text() == "ran\n"
    # When the same message is published again
    amqp.publish(names.direct_exchange, route, req.sealed)
    # Then it is dead-lettered as a replay and does not run a second time
    props, dead_body = wait_for(lambda: amqp.get(names.dead_queue), TIMEOUT_S, "a dead-lettered message")
    assert props.headers[REASON_HEADER] == "replayed"
    assert dead_body == req.sealed
    assert client[engine.engine_id].apply(pow, 2, 5) == 32
    assert records.counter("dead_lettered:replayed") == 1
    assert canary.read_text() == "ran\n"
    record = records.get(req.task_id)
    assert record.status == "completed" and record.attempts == 1


def test_signed_message_without_a_record_is_dead_lettered_not_run(cluster, client, engine, amqp, ring, records,
                                                                  tmp_path):
    """A validly signed message whose task was never recorded (or was purged) is a replay."""
    names = cluster.names
    canary = tmp_path / "canary"
    req = Request(ring, engine.engine_id, str(canary))
    amqp.publish(names.direct_exchange, names.engine_routing_key(engine.engine_id), req.sealed)
    props, _ = wait_for(lambda: amqp.get(names.dead_queue), TIMEOUT_S, "a dead-lettered message")
    assert props.headers[REASON_HEADER] == "replayed"
    assert client[engine.engine_id].apply(pow, 2, 5) == 32
    assert records.counter("dead_lettered:replayed") == 1
    assert not canary.exists()
    assert records.get(req.task_id) is None


class WatchedPublisher(Publisher):
    """A real publisher that notes what the dead-letter count was as each message went out."""

    def __init__(self, url: str, records: Records, fail: bool = False) -> None:
        super().__init__(url, attempts=1)
        self.records, self.fail, self.counts_seen = records, fail, []

    def publish(self, exchange, routing_key, body, headers=None, mandatory=True, priority=None) -> None:
        self.counts_seen.append(self.records.counter("dead_lettered:bad-signature"))
        if self.fail:
            raise BrokerError("broker unreachable")
        super().publish(exchange, routing_key, body, headers, mandatory, priority)


@pytest.mark.parametrize("publish_fails", [False, True])
def test_a_dead_letter_is_counted_before_anyone_can_see_it(publish_fails, settings, cluster, amqp, records):
    """Whoever reads a letter off the dead queue finds it counted already; a letter whose
    publish fails (the caller then rejects it into the queue's own DLX) is counted too."""
    names = cluster.names
    declare_cluster(amqp.channel, names)
    publisher = WatchedPublisher(settings.amqp_url, records, fail=publish_fails)
    try:
        sent = dead_letter(publisher, names, records, b"body", SignatureError("bad-signature", "test"),
                           names.work_queue)
    finally:
        publisher.close()
    assert sent is not publish_fails
    assert publisher.counts_seen == [1]
    assert records.counter("dead_lettered:bad-signature") == 1
    letter = amqp.get(names.dead_queue)
    if publish_fails:
        assert letter is None
    else:
        assert letter[0].headers[REASON_HEADER] == "bad-signature" and letter[1] == b"body"


def test_direct_request_rerouted_to_another_engine_does_not_run_there(cluster, client, amqp, ring, records,
                                                                      tmp_path):
    # Given a signed request for engine 0, with its pending record
    intended, other = cluster.start_engines(2)
    names = cluster.names
    canary = tmp_path / "canary"
    req = Request(ring, intended.engine_id, str(canary))
    req.create_record(records)
    # When someone with broker access publishes it to engine 1's queue instead
    amqp.publish(names.direct_exchange, names.engine_routing_key(other.engine_id), req.sealed)
    assert client[other.engine_id].apply(pow, 2, 5) == 32
    # Then engine 1 does not run it (it was addressed, and signed, for engine 0)
    assert not canary.exists()
    assert records.get(req.task_id).status == "pending"


# --- sealed values in Redis ---------------------------------------------------------------
def result_bomb(path: str, gate: str):
    """A function whose *result*, when unpickled, creates ``path``. The engine only pickles it.
    It returns once ``gate`` exists."""

    class Bomb:
        def __reduce__(self):
            return (open, (path, "w"))

    def make_bomb():
        import os
        import time

        while not os.path.exists(gate):
            time.sleep(0.02)
        return Bomb()

    return make_bomb


def run_to_completion(client, cluster, f) -> str:
    """Run ``f`` on engine 0 and wait for its record to complete."""
    task_id = client[0].apply(f, block=False).task_ids[0]
    r, key = cluster.redis(), cluster.names.task(task_id)
    wait_for(lambda: r.hget(key, "status") == b"completed", TIMEOUT_S, f"task {task_id} to complete")
    return task_id


def run_bomb_unread(client, cluster, path, tmp_path) -> str:
    """Run a result bomb on engine 0 and wait for its record to complete, without unpickling
    the result: the client that sends it is closed before it ends (a live client takes in its
    results as they arrive)."""
    gate = tmp_path / "gate"
    with Client(settings=client.settings) as sender:
        task_id = sender[0].apply(result_bomb(path, str(gate)), block=False).task_ids[0]
    gate.touch()
    r, key = cluster.redis(), cluster.names.task(task_id)
    wait_for(lambda: r.hget(key, "status") == b"completed", TIMEOUT_S, f"task {task_id} to complete")
    return task_id


def test_result_bomb_goes_off_when_read(settings, cluster, client, engine, tmp_path):
    """Control: an untampered result is unpickled by the reading client (and only by it)."""
    canary = tmp_path / "bomb"
    task_id = run_bomb_unread(client, cluster, str(canary), tmp_path)
    assert not canary.exists()  # the engine pickled the result but never unpickled it
    with Client(settings=settings) as reader:
        handle = AsyncResult(reader, [task_id]).get(timeout=TIMEOUT_S)[0]
    handle.close()
    assert canary.exists()


def test_tampered_result_is_refused_and_never_unpickled(settings, cluster, client, engine, tmp_path):
    canary = tmp_path / "bomb"
    task_id = run_bomb_unread(client, cluster, str(canary), tmp_path)
    # Given someone with write access to Redis flips one byte of the stored result
    r = cluster.redis()
    key = cluster.names.task(task_id)
    blob = r.hget(key, "result")
    assert blob
    tampered = bytearray(blob)
    tampered[-3] ^= 0xFF
    r.hset(key, "result", bytes(tampered))
    # When a fresh client reads it
    with Client(settings=settings) as reader:
        with pytest.raises(SignatureError) as info:
            AsyncResult(reader, [task_id]).get(timeout=TIMEOUT_S)
    # Then it is refused, and the payload was never unpickled
    assert info.value.reason == "bad-signature"
    assert task_id in str(info.value)
    assert not canary.exists()


def test_result_copied_from_another_task_is_refused(settings, cluster, client, engine):
    def value_a():
        return "value of A"

    def value_b():
        return "value of B"

    task_a = run_to_completion(client, cluster, value_a)
    task_b = run_to_completion(client, cluster, value_b)
    r = cluster.redis()
    # Given task A's valid sealed result copied into task B's record
    r.hset(cluster.names.task(task_b), "result", r.hget(cluster.names.task(task_a), "result"))
    with Client(settings=settings) as reader:
        # Then B's result is refused as out of context...
        with pytest.raises(SignatureError) as info:
            AsyncResult(reader, [task_b]).get(timeout=TIMEOUT_S)
        assert info.value.reason == "context"
        # ...while A's still reads fine where it belongs.
        assert AsyncResult(reader, [task_a]).get(timeout=TIMEOUT_S) == ["value of A"]


def test_unsigned_result_is_refused(settings, cluster, client, engine, tmp_path):
    canary = tmp_path / "bomb"
    task_id = run_to_completion(client, cluster, lambda: 1)
    # A raw pickle (of the bomb) written over the result: never unpickled.
    raw = serialization.dumps(result_bomb(str(canary), str(tmp_path))())  # its gate is open
    cluster.redis().hset(cluster.names.task(task_id), "result", raw)
    with Client(settings=settings) as reader:
        with pytest.raises(SignatureError) as info:
            AsyncResult(reader, [task_id]).get(timeout=TIMEOUT_S)
    assert info.value.reason == "unsigned"
    assert not canary.exists()
