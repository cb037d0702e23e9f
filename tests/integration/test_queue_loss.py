"""A daemon whose queue disappears under it (a reaper that misjudged it during a Redis
failover, an operator) declares it again and goes on, instead of idling beside a live record."""

from __future__ import annotations

from ..harness import amqp_connection, queue_consumers, wait_for

TIMEOUT_S = 60.0


def _delete(settings, queue: str) -> None:
    conn = amqp_connection(settings)
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


def test_an_engine_whose_queue_was_deleted_declares_it_again_and_serves(cluster, client, settings):
    engine = cluster.start_engine()
    dv = client[engine.engine_id]
    assert dv.apply_sync(lambda: 1) == 1
    queue = cluster.names.engine_queue(engine.engine_id)
    _delete(settings, queue)
    # The queue exists before it is bound; a task sent in between is returned to the client
    # and fails EngineLost, rightly. Consuming starts after the bind.
    wait_for(lambda: (queue_consumers(settings, queue) or 0) > 0, TIMEOUT_S,
             "the engine to declare its queue again and consume from it")
    assert dv.apply_sync(lambda: 2) == 2
    assert "declaring and consuming again" in engine.log()


def test_a_scheduler_whose_queue_was_deleted_declares_it_again(cluster, client, settings):
    scheduler = cluster.start_scheduler("lifo")  # LIFO work goes through the scheduler's queue
    cluster.start_engine()
    view = client.load_balanced_view()
    assert view.apply_sync(abs, -1) == 1
    _delete(settings, cluster.names.tasks_queue)
    wait_for(lambda: (queue_consumers(settings, cluster.names.tasks_queue) or 0) > 0, TIMEOUT_S,
             "the scheduler to declare its queue again and consume from it")
    assert view.map_sync(abs, [-2, -3]) == [2, 3]
    assert "declaring and consuming again" in scheduler.log()
