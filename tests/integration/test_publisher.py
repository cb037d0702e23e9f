"""Publishing runs of messages: their frames leave joined, and arrive whole and in order."""

from __future__ import annotations

import pika
import pytest

from enginefarm.broker import Publisher
from enginefarm.broker.publisher import Outgoing, coalesce_output, output_buffers
from enginefarm.broker.topology import declare_cluster


@pytest.fixture
def publisher(settings, cluster):
    """A publisher, with the cluster's queues declared."""
    handle = Publisher(settings.amqp_url)
    try:
        declare_cluster(handle.channel, cluster.names)
        yield handle
    finally:
        handle.close()


def read_all(settings, queue: str, count: int) -> list[bytes]:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = conn.channel()
        bodies = []
        for _ in range(count + 1):
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        return bodies
    finally:
        conn.close()


def test_waiting_frames_are_joined_into_one_buffer(settings, cluster, publisher):
    """pika writes a message as three frames, each its own send(); the publisher joins them.
    (Fails if a pika release moves the buffer this reaches for: the join is then lost.)"""
    names = cluster.names
    channel = publisher.link.connection.channel()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(3):
        channel._impl.basic_publish("", names.work_queue, b"m%d" % i, props)
    buffers = output_buffers(publisher.link.connection)
    assert buffers is not None and len(buffers) >= 9  # method, header and body frame of each
    coalesce_output(publisher.link.connection)
    assert len(buffers) == 1
    publisher.link.connection.process_data_events(0)
    channel.close()
    assert read_all(settings, names.work_queue, 3) == [b"m0", b"m1", b"m2"]


def test_a_run_of_messages_arrives_whole_and_in_order(settings, cluster, publisher):
    names = cluster.names
    # Bodies of many sizes, some past a frame (128 KiB) so a message spans several body frames.
    bodies = [bytes([i % 251]) * (1 + (i * 7919) % 300_000) for i in range(60)]
    publisher.send([Outgoing("", names.work_queue, body) for body in bodies], confirm=True)
    assert read_all(settings, names.work_queue, len(bodies)) == bodies
