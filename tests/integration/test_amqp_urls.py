"""Several AMQP URLs: a client, an engine and a scheduler whose first URL is a closed port work
through the second (the shared broker), and so does an engine whose first URL accepts but never
answers; ``--amqp-url`` and ``--redis-url`` win over the environment."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from enginefarm import Client
from enginefarm.config import Settings, split_urls
from enginefarm.errors import BrokerError

from ..servers import free_port

TIMEOUT_S = 60


def closed_port_url() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # the port was free: nothing listens


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings with a dead first AMQP URL before the shared broker's."""
    return settings.replace(amqp_url=f"{closed_port_url()},{settings.amqp_url}")


def test_a_dead_first_url_is_passed_over_by_client_engine_and_scheduler(cluster, client, settings):
    dead, live = split_urls(settings.amqp_url)
    # Given a scheduler that has both URLs from its environment
    scheduler = cluster.start_scheduler()
    # And an engine whose environment names only dead servers, given both URLs as options
    by_option = cluster.spawn(
        ["engine", "--cluster", settings.cluster, "--amqp-url", settings.amqp_url, "--redis-url", settings.redis_url],
        {"ENGINEFARM_AMQP_URL": dead, "ENGINEFARM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )
    by_option.engine_id = cluster.wait_engine(by_option)
    # And one more engine with both URLs from its environment
    by_env = cluster.start_engine()

    # When the client (both URLs) farms tasks and drives each engine directly
    lview = client.load_balanced_view()
    squares = lview.map(lambda x: x * x, range(20), block=True)
    pids = client.direct_view([by_option.engine_id, by_env.engine_id]).apply(
        lambda: __import__("os").getpid(), block=True)

    # Then everything ran, through the live URL
    assert squares == [x * x for x in range(20)]
    assert len(set(pids)) == 2
    for daemon in (scheduler, by_option, by_env):
        log = daemon.log()
        assert "not reachable" in log and "trying the next URL" in log, log
        assert f"connected to RabbitMQ at amqp://guest:***@{live.split('@', 1)[1]}" in log, log


def test_a_client_given_only_dead_urls_fails_with_every_one_named(settings):
    urls = f"{closed_port_url()},{closed_port_url()}"
    dead = settings.replace(amqp_url=urls, reconnect_window_s=1.0)
    with pytest.raises(BrokerError) as info, Client(settings=dead) as client:
        client.load_balanced_view().apply(abs, -1, block=False)
    message = str(info.value)
    for url in split_urls(urls):
        assert url.replace("guest:guest", "guest:***") in message, message
    assert "guest:guest" not in message


@contextlib.contextmanager
def silent_url(stack_timeout_s: int) -> Iterator[str]:
    """An AMQP URL whose port takes the TCP connection and then says nothing: the handshake
    times out after ``stack_timeout_s`` (as with a broker too busy to answer many engines
    starting at once), which pika raises as a connector error, not a connection error."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        yield f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/%2F?stack_timeout={stack_timeout_s}"


def test_a_first_url_that_accepts_but_never_answers_is_passed_over(cluster, settings):
    # The engine must try the next URL, not exit.
    with silent_url(2) as silent:
        urls = f"{silent},{split_urls(settings.amqp_url)[1]}"
        engine = cluster.spawn(["engine", "--cluster", settings.cluster, "--amqp-url", urls])
        engine.engine_id = cluster.wait_engine(engine)
        log = engine.log()
        assert "AMQPConnectorStackTimeout" in log and "trying the next URL" in log, log
        assert engine.proc.poll() is None


def test_an_engine_slow_to_reach_the_broker_is_not_reaped_as_one_that_died_starting(cluster, settings):
    # Given a live engine, which looks for engines that registered and never became live
    # (for more than twice the engine timeout: 6 s here)
    peer = cluster.start_engine()
    # When another engine takes longer than that to reach the broker (10 s on a silent port)
    with silent_url(10) as silent:
        urls = f"{silent},{split_urls(settings.amqp_url)[1]}"
        slow = cluster.spawn(["engine", "--cluster", settings.cluster, "--amqp-url", urls])
        # Then it still becomes live, and stays so: its registration was kept fresh meanwhile
        slow.engine_id = cluster.wait_engine(slow, timeout_s=TIMEOUT_S)
    assert "AMQPConnectorStackTimeout" in slow.log()
    assert slow.proc.poll() is None, slow.log()[-2000:]
    assert f"engine {slow.engine_id} stopped heartbeating" not in peer.log()


def test_wrong_credentials_fail_at_once_and_say_so(settings):
    # A login the broker refuses is final (a lost connection while logging in is retried).
    wrong = settings.replace(amqp_url=split_urls(settings.amqp_url)[1].replace("guest:guest@", "guest:wrong@"))
    with pytest.raises(BrokerError, match="refused the credentials"), Client(settings=wrong) as client:
        client.load_balanced_view().apply(abs, -1, block=False)
