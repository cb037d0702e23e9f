"""Fuzzing the real daemons: hostile messages published with pika to one engine's queue, the
shared work queue and the scheduler's queue, on real RabbitMQ and Redis.

The daemons start once per test; each Hypothesis example is one batch of messages (Hypothesis'
data budget bounds a batch, so a test runs a few). After each batch the test checks that both
daemons are alive and still serve real work, that every message ended in the cluster's
dead-letter queue and was counted by reason, that no daemon met an exception it did not expect
(no error incident), what became of the records created for some of the messages, and that
the payload of every message, a pickle whose unpickling creates a marker file, was never
unpickled.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, currently_in_test_context, given, note, settings
from hypothesis import strategies as st

from enginefarm import Client, MapTask
from enginefarm.config import Settings
from enginefarm.deadletter import REASON_HEADER, SOURCE_HEADER
from enginefarm.errors import DecodeError, SignatureError
from enginefarm.keys import KeyRing
from enginefarm.protocol import MAGIC, new_id, peek_task_id, seal
from enginefarm.store.records import NewTask
from enginefarm.task import open_task

from ..harness import Amqp, Cluster, Daemon, wait_for
from .strategies import (
    HEADER_FIELDS,
    MAX_NESTING,
    forge,
    marker_payload,
    mutate,
    mutated_headers,
    mutations,
    nested_text,
    random_headers,
    refused_header,
    valid_headers,
)

pytestmark = pytest.mark.fuzz

BATCHES = 3
BATCH = 50  # messages per batch: BATCHES * BATCH of each kind per test
TIMEOUT_S = 90.0
QUEUES = ("engine", "work", "tasks")
REASONS = ("unsigned", "malformed", "unknown-key", "bad-signature", "stale", "context", "replayed", "invalid")
PLACEHOLDER_ID = "placeholder"
# A few batches per test against the same daemons (the fixture is shared by the examples, on
# purpose: hence the health check is off). A failure is not shrunk (every run publishes to the
# daemons again); the example database still replays it first on the next run.
BATCHES_OF_ONE_FARM = settings(
    max_examples=BATCHES, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

# Fields set to a value the model refuses whatever the rest of the header holds.
POISON: list[tuple[str, Any]] = [
    ("retries", -1), ("retries", True), ("timeout", "x"), ("timeout", float("nan")), ("priority", "high"),
    ("lb", 1), ("kind", "bogus"), ("engine_id", True), ("mid", ""), ("ts", float("inf")), ("attempt", 1),
    ("client_id", None), ("depend", [True]),
]


@st.composite
def poison_headers(draw: st.DrawFn, task_id: str | None = None) -> dict[str, Any]:
    """A random or mutated header the model refuses (poisoned in one more field if need be)."""
    header: dict[str, Any] = draw(st.one_of(random_headers, mutated_headers()))
    if task_id is not None:
        header["task_id"] = task_id
    if not refused_header(header):
        name, value = draw(st.sampled_from(POISON))
        header[name] = value
    assert refused_header(header), header
    return header


@dataclass(frozen=True)
class Signed:
    """Poison from a key holder: a refused header (or a valid one with one field nested deep)."""

    queue: str
    header: dict[str, Any]
    deep: tuple[str, int, bool] | None  # field, nesting depth, objects (else lists)
    record: bool


@st.composite
def signed_poison(draw: st.DrawFn) -> Signed:
    queue, record = draw(st.sampled_from(QUEUES)), draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        deep = (draw(st.sampled_from(HEADER_FIELDS)), draw(st.integers(1, MAX_NESTING)), draw(st.booleans()))
        return Signed(queue, draw(valid_headers()), deep, record)
    return Signed(queue, draw(poison_headers(PLACEHOLDER_ID if record else None)), None, record)


def has_findable_task_id(item: Signed) -> bool:
    """Whether a refused message names its task where the dead-letter code can read it (at any
    depth of nesting, unless the task id itself is what is nested)."""
    return item.deep is None or item.deep[0] != "task_id"


@dataclass(frozen=True)
class Unsigned:
    """Poison from someone without the key: random bytes, another key, or a sealed message changed."""

    queue: str
    how: str
    blob: bytes
    ops: list[tuple[str, float, Any]]
    record: bool


unsigned_poison = st.builds(
    Unsigned, st.sampled_from(QUEUES), st.sampled_from(["random", "behind-key-id", "other-key", "mutated", "mutated"]),
    st.binary(max_size=200), st.lists(mutations, min_size=1, max_size=4), st.booleans(),
)


# --- plumbing ------------------------------------------------------------------------------
class Broker(Amqp):
    """The harness's plain pika connection, with what the fuzz tests read of queues."""

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def drain(self, queue: str) -> list[tuple[dict[str, Any], bytes]]:
        """Take every message now in ``queue``: (headers, body)."""
        taken: list[tuple[dict[str, Any], bytes]] = []
        while True:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            assert props is not None and body is not None
            taken.append((dict(props.headers or {}), body))


@dataclass
class Farm:
    """A cluster with one scheduler and one engine, and an attacker's view of it."""

    settings: Settings
    cluster: Cluster
    scheduler: Daemon
    engine: Daemon
    client: Client
    broker: Broker
    tmp: Path
    batches: int = 0

    @property
    def engine_id(self) -> int:
        assert self.engine.engine_id is not None
        return self.engine.engine_id

    @property
    def ring(self) -> KeyRing:
        ring: KeyRing = self.client.ring
        return ring

    def route(self, queue: str) -> tuple[str, str]:
        names = self.cluster.names
        if queue == "engine":
            return names.direct_exchange, names.engine_routing_key(self.engine_id)
        return "", names.work_queue if queue == "work" else names.tasks_queue

    def source(self, queue: str) -> str:
        names = self.cluster.names
        return {"engine": names.engine_queue(self.engine_id), "work": names.work_queue,
                "tasks": names.tasks_queue}[queue]

    def counters(self) -> Counter[str]:
        return Counter({r: self.client.records.counter(f"dead_lettered:{r}") for r in REASONS})

    def new_batch(self) -> Batch:
        self.batches += 1
        return Batch(self, self.tmp / f"marker-{self.batches}", self.counters())

    def create_record(self, queue: str, task_id: str, request: bytes) -> None:
        engine_id = self.engine_id if queue == "engine" else None
        kind, extra = ("apply", {}) if queue == "engine" else ("map_task", {"lb": "1"})
        self.client.records.create([NewTask(task_id, kind, self.client.client_id, request, engine_id, extra)])


@dataclass
class Batch:
    """One example's messages: (queue, body), their marker file and the counts before them."""

    farm: Farm
    marker: Path
    counted_before: Counter[str]
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    reasons: dict[bytes, str] = field(default_factory=dict)  # each message's dead-letter reason

    def payload(self) -> bytes:
        """A request whose unpickling creates the marker file (open(path, 'w') on loading)."""
        return marker_payload(open, str(self.marker), "w")


@pytest.fixture
def farm(settings: Settings, cluster: Cluster, client: Client, tmp_path: Path) -> Iterator[Farm]:
    scheduler = cluster.start_scheduler()
    (engine,) = cluster.start_engines(1)
    client.ids  # connect
    broker = Broker(settings.amqp_url)
    try:
        yield Farm(settings, cluster, scheduler, engine, client, broker, tmp_path)
    finally:
        broker.close()


def refused_locally(ring: KeyRing, body: bytes, max_age_s: float) -> bool:
    try:
        open_task(ring, body, max_age_s)
    except (SignatureError, DecodeError):
        return True
    return False


def publish_all(batch: Batch) -> None:
    for queue, body in batch.messages:
        batch.farm.broker.publish(*batch.farm.route(queue), body)


def check_dead_letters(batch: Batch, allowed: set[str]) -> Counter[str]:
    """Every message of ``batch`` is in the dead-letter queue, once, untouched, with a reason
    counted in Redis and the queue it came from. Returns the reasons."""
    farm, messages = batch.farm, batch.messages
    dead = farm.cluster.names.dead_queue
    wait_for(lambda: farm.broker.depth(dead) >= len(messages), TIMEOUT_S, f"{len(messages)} dead letters")
    letters = farm.broker.drain(dead)
    # (Two random messages may be the same bytes, sent to different queues.)
    assert (sorted((str(headers.get(SOURCE_HEADER)), body) for headers, body in letters)
            == sorted((farm.source(queue), body) for queue, body in messages))
    batch.reasons = {body: str(headers.get(REASON_HEADER)) for headers, body in letters}
    reasons = Counter(str(headers.get(REASON_HEADER)) for headers, _ in letters)
    if currently_in_test_context():
        note(f"dead-letter reasons: {dict(reasons)}")
    assert set(reasons) <= allowed, reasons
    counted = farm.counters()
    counted.subtract(batch.counted_before)
    assert +counted == reasons
    return reasons


def check_still_serving(farm: Farm) -> None:
    """Both daemons alive, no error incident noted, and real work done through each queue."""
    for daemon in (farm.scheduler, farm.engine):
        assert daemon.proc.poll() is None, daemon.log()[-4000:]
    incidents = sorted(k.decode() for k in farm.cluster.redis().scan_iter(
        match=farm.cluster.names.counter("errors:*")))
    assert incidents == [], (incidents, farm.engine.log()[-4000:], farm.scheduler.log()[-4000:])
    # A task with a priority goes through the scheduler, a plain one through the shared work
    # queue; and a direct apply on the engine
    via_scheduler, via_work_queue = farm.client.submit_many([MapTask(pow, (3, 4), priority=1), MapTask(pow, (2, 3))])
    assert farm.client.get_task_result(via_scheduler, block=True, timeout=TIMEOUT_S).result == 81
    assert farm.client.get_task_result(via_work_queue, block=True, timeout=TIMEOUT_S).result == 8
    assert farm.client[farm.engine_id].apply(pow, 2, 5) == 32
    assert farm.broker.depth(farm.cluster.names.dead_queue) == 0


def draw_varied(items: list[Any]) -> None:
    """The simplest example (one item repeated) is no fuzz: ask for a varied batch."""
    assume(len({repr(item) for item in items}) > len(items) // 2)


# --- the tests -------------------------------------------------------------------------------
@BATCHES_OF_ONE_FARM
@given(poison=st.lists(signed_poison(), min_size=BATCH, max_size=BATCH))
def test_signed_poison_is_dead_lettered_and_fails_its_record(farm: Farm, poison: list[Signed]) -> None:
    draw_varied(poison)
    # Given a key holder's messages whose headers the model refuses (or that nest a field deeper
    # than the JSON parser goes), each carrying the marker pickle; about half have a pending
    # record whose request is that very message
    batch = farm.new_batch()
    now = time.time()
    recorded: list[str] = []
    for item in poison:
        task_id = new_id() if item.record and has_findable_task_id(item) else None
        if item.deep is None:
            header = {**item.header, "task_id": task_id} if task_id else item.header
            body = seal(farm.ring, header, batch.payload())
        else:
            name, depth, as_object = item.deep
            given_fields = {k: v for k, v in item.header.items() if k != name}
            given_fields.update({"ts": now, **({"task_id": task_id} if task_id else {})})
            text = json.dumps(given_fields)[:-1] + f', "{name}": {nested_text(depth, as_object)}}}'
            body = forge(farm.ring, text.encode(), batch.payload())
        assert refused_locally(farm.ring, body, farm.settings.max_message_age_s), body[:300]
        if task_id:
            farm.create_record(item.queue, task_id, body)
            recorded.append(task_id)
        batch.messages.append((item.queue, body))
    note(f"batch {farm.batches}: {len(recorded)} with records, {sum(p.deep is not None for p in poison)} "
         f"nested deep, per queue {dict(Counter(p.queue for p in poison))}")

    # When they are published to the engine's queue, the shared work queue and the scheduler's queue
    publish_all(batch)

    # Then each one is dead-lettered with a reason and counted
    check_dead_letters(batch, {"invalid", "malformed", "stale"})
    # And every record whose request was refused is failed, saying why (none stays pending)
    records = farm.client.records
    try:
        wait_for(lambda: all(s == "failed" for s in records.statuses(recorded)), TIMEOUT_S, "the records to fail")
    except AssertionError:
        stuck = [(r.task_id, r.status, r.invalid, peek_task_id(r.request or b""), (r.request or b"")[56:400])
                 for r in records.get_many(recorded) if r is not None and r.status != "failed"]
        raise AssertionError(f"records not failed: {stuck}") from None
    for record in records.get_many(recorded):
        assert record is not None and record.error is not None, record
        assert record.error["ename"] == "MessageRefused" and record.attempts == 0 and record.started is None
    # And no payload was unpickled, and both daemons still serve
    assert not batch.marker.exists(), "a refused payload was unpickled"
    check_still_serving(farm)

    # Control: the same payload in a valid request does create the marker on the engine
    control = new_id()
    body = seal(farm.ring, {"task_id": control, "kind": "apply", "client_id": farm.client.client_id,
                            "engine_id": farm.engine_id}, batch.payload())
    farm.create_record("engine", control, body)
    farm.broker.publish(*farm.route("engine"), body)
    wait_for(lambda: records.statuses([control]) == ["failed"], TIMEOUT_S, "the control request to run")
    assert batch.marker.exists()


@BATCHES_OF_ONE_FARM
@given(poison=st.lists(unsigned_poison, min_size=BATCH, max_size=BATCH))
def test_unsigned_and_tampered_messages_are_dead_lettered_and_never_run(farm: Farm, poison: list[Unsigned]) -> None:
    draw_varied(poison)
    # Given messages not (or no longer) signed with the cluster key, each carrying the marker
    # pickle; for about half, a pending record holds the genuine request they were made from
    batch = farm.new_batch()
    other = KeyRing.from_key(os.urandom(32))
    kid = farm.ring.signing_id.encode()
    pending: list[str] = []
    unchanged = 0
    for item in poison:
        task_id = new_id()
        header: dict[str, Any] = {"task_id": task_id, "client_id": farm.client.client_id}
        if item.queue == "engine":
            header.update(kind="apply", engine_id=farm.engine_id)
        else:
            header.update(kind="map_task", lb=True)
        genuine = seal(farm.ring, header, batch.payload())
        if item.how == "random":
            body = item.blob + batch.payload()
        elif item.how == "behind-key-id":
            body = MAGIC + kid + item.blob + batch.payload()
        elif item.how == "other-key":
            body = seal(other, header, batch.payload())
        else:
            body = mutate(genuine, item.ops)
        if body == genuine:
            unchanged += 1  # a mutation that changed nothing (e.g. two equal bytes swapped)
            continue
        assert refused_locally(farm.ring, body, farm.settings.max_message_age_s)
        if item.record:
            farm.create_record(item.queue, task_id, genuine)
            pending.append(task_id)
        batch.messages.append((item.queue, body))
    note(f"batch {farm.batches}: {len(batch.messages)} messages ({unchanged} unchanged left out), "
         f"{len(pending)} with records, {dict(Counter(p.how for p in poison))}, "
         f"per queue {dict(Counter(p.queue for p in poison))}")

    # When they are published to the three queues
    publish_all(batch)

    # Then each is dead-lettered with a reason and counted, and both daemons still serve
    check_dead_letters(batch, {"unsigned", "malformed", "unknown-key", "bad-signature"})
    check_still_serving(farm)
    # And the genuine requests were neither failed by a forgery naming them nor run
    for record in farm.client.records.get_many(pending):
        assert record is not None and record.status == "pending", record
        assert record.attempts == 0 and record.started is None
    assert not batch.marker.exists(), "an unverified payload was unpickled"


def test_a_header_nested_near_the_parser_limit_fails_its_record(farm: Farm) -> None:
    # Given signed load-balanced requests whose timeout is nested 900 to 1000 levels deep (the
    # parser's limit in the daemons lies in between), each with its pending record
    batch = farm.new_batch()
    depths: dict[bytes, tuple[str, int, str]] = {}
    for depth in range(900, 1001):
        for queue in ("work", "tasks"):
            task_id = new_id()
            header = {"task_id": task_id, "kind": "map_task", "client_id": farm.client.client_id, "lb": True,
                      "ts": time.time()}
            body = forge(farm.ring, (json.dumps(header)[:-1] + f', "timeout": {nested_text(depth)}}}').encode(),
                         batch.payload())
            farm.create_record(queue, task_id, body)
            batch.messages.append((queue, body))
            depths[body] = (task_id, depth, queue)
    # When they are published to the shared work queue (an engine) and the scheduler's queue
    publish_all(batch)
    # Then every one is dead-lettered: 'malformed' where the daemon could not parse the header,
    # 'invalid' where it parsed it and the model refused the timeout
    reasons = check_dead_letters(batch, {"invalid", "malformed"})
    assert reasons["invalid"] and reasons["malformed"]
    assert not batch.marker.exists()
    check_still_serving(farm)
    # And each record whose message was refused as 'invalid' (its header parsed) is failed
    letters = farm.client.records
    refused_invalid = [depths[body] for body, reason in batch.reasons.items() if reason == "invalid"]
    statuses = letters.statuses([task_id for task_id, _, _ in refused_invalid])
    pending = sorted((queue, depth) for (_, depth, queue), status in zip(refused_invalid, statuses)
                     if status != "failed")
    assert pending == [], f"records left pending (queue, nesting depth): {pending}"


def test_a_signed_integer_beyond_float_range_is_refused_without_an_incident(farm: Farm) -> None:
    # Given a key holder's requests whose timeout or send time no float can hold, with records
    batch = farm.new_batch()
    recorded = []
    for queue in QUEUES:
        for name in ("timeout", "ts"):
            task_id = new_id()
            header: dict[str, Any] = {"task_id": task_id, "client_id": farm.client.client_id, name: 10**400}
            header.update({"kind": "apply", "engine_id": farm.engine_id} if queue == "engine" else
                          {"kind": "map_task", "lb": True})
            body = seal(farm.ring, header, batch.payload())
            farm.create_record(queue, task_id, body)
            recorded.append(task_id)
            batch.messages.append((queue, body))
    # When they are published to the three queues
    publish_all(batch)
    # Then they are refused (a timeout the model refuses is 'invalid'; a send time that is no
    # time is a 'malformed' envelope), their records failed, nothing unpickled...
    assert check_dead_letters(batch, {"invalid", "malformed"}) == Counter(
        invalid=len(recorded) // 2, malformed=len(recorded) // 2)
    wait_for(lambda: all(s == "failed" for s in farm.client.records.statuses(recorded)), TIMEOUT_S,
             "the records to fail")
    assert not batch.marker.exists()
    # ...and no daemon met an exception the decoder should not raise
    check_still_serving(farm)
