"""Quorum queues on the shared node: a message an engine queue gave back as often as it allows
ends as a failed record with the reason (never lost in the dead queue, never looping), and a
classic queue left by an earlier version is refused with what the operator should do."""

from __future__ import annotations

import pytest

from enginefarm import Client
from enginefarm.broker.topology import (DELIVERY_COUNT_HEADER, ENGINE_DELIVERY_LIMIT, declare_cluster,
                                        declare_engine_queue)
from enginefarm.deadletter import REASON_HEADER
from enginefarm.errors import BrokerError

from ..harness import wait_for
from .test_hardening import signed_request

TIMEOUT_S = 60


def test_a_message_given_back_as_often_as_allowed_fails_its_record(cluster, client, amqp, tmp_path):
    names = cluster.names
    queue = names.engine_queue(0)
    # Given the queue of the engine to come (the first gets id 0) holding a signed request
    declare_cluster(amqp.channel, names)
    declare_engine_queue(amqp.channel, names, 0)
    canary = str(tmp_path / "canary")
    task_id, body = signed_request(client, canary)
    amqp.publish(names.direct_exchange, names.engine_routing_key(0), body)
    # And a consumer that gave it back to the queue as often as the queue allows
    for count in range(ENGINE_DELIVERY_LIMIT):
        method, props, _ = wait_for(lambda: (lambda got: got if got[0] else None)(amqp.channel.basic_get(queue)),
                                    TIMEOUT_S, "the message to come back")
        assert (props.headers or {}).get(DELIVERY_COUNT_HEADER, 0) == count
        amqp.channel.basic_reject(method.delivery_tag, requeue=True)
    # When the engine gets its last allowed delivery
    engine = cluster.start_engine()
    assert engine.engine_id == 0
    # Then it refuses it: the record fails with the reason, the task never ran
    result = client.get_task_result(task_id, block=True, timeout=TIMEOUT_S)
    assert result.failure is not None and result.failure.ename == "MessageRefused"
    assert "(delivery_limit)" in result.failure.evalue and queue in result.failure.evalue, result.failure.evalue
    assert not (tmp_path / "canary").exists()
    # And the message is in the dead queue with that reason, counted once
    props, dead = wait_for(lambda: amqp.get(names.dead_queue), TIMEOUT_S, "the dead letter")
    assert dead == body and props.headers[REASON_HEADER] == "delivery_limit"
    assert client.records.counter("dead_lettered:delivery_limit") == 1
    assert engine.proc.poll() is None
    assert client.load_balanced_view().apply(pow, 2, 5, block=True) == 32


def test_a_classic_queue_of_an_earlier_version_is_refused_with_what_to_do(cluster, settings, amqp):
    # Given the work queue as an earlier version declared it: a classic queue
    names = cluster.names
    amqp.channel.queue_declare(names.work_queue, durable=True,
                               arguments={"x-dead-letter-exchange": names.dead_exchange})
    # When a client of this version connects, it is refused with what the operator should do
    with pytest.raises(BrokerError) as info, Client(settings=settings) as client:
        client.load_balanced_view().apply(abs, -1, block=False)
    message = str(info.value)
    assert names.work_queue in message and "classic queue from an earlier enginefarm" in message, message
    assert f"rabbitmqctl delete_queue {names.work_queue}" in message and "drain" in message, message
    # And once the drained queue is deleted, the same client settings work
    amqp.channel.queue_delete(names.work_queue)
    cluster.start_engine()
    with Client(settings=settings) as client:
        assert client.load_balanced_view().apply(abs, -1, block=True) == 1
